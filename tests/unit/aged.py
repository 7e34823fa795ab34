"""Directories and usage records of a chosen age, as the gc tests lay them out on disk, and
gc's survey and last judgement of them with a window ending at CUTOFF."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from volagent.ops.gc import survey as gcsurvey
from volagent.ops.gc import tree

DAY = 86400.0
NOW = time.time()  # for ages in days; anything that must be fresh takes time.time()
OLD = NOW - 90 * DAY
CUTOFF = NOW - 30 * DAY
FORGET = 900.0  # [health] forget_after_s's default: how long a silent host's entries count


def record(mp: Path, rel: str, host: str, when: float) -> None:
    """A usage record of `host` for `<mp>/rel`, last used at `when`."""
    base = mp / ".volagent" / "usage" / rel
    base.mkdir(parents=True, exist_ok=True)
    (base / f"{host}.json").write_text(json.dumps({"host": host, "time": when}))


def make_dir(mp: Path, rel: str, when: float = OLD, data: bytes = b"") -> Path:
    """`<mp>/rel` (with a file of `data`), it and its parents below mp last changed at
    `when`."""
    path = mp / rel
    path.mkdir(parents=True, exist_ok=True)
    if data:
        (path / "file").write_bytes(data)
    for p in [path, *path.parents]:
        if p == mp:
            break
        os.utime(p, (when, when))
    return path


def survey(mp: Path, root: int, local: set[tuple[str, str]] | None = None) -> gcsurvey.Survey:
    """`volagent gc`'s listing of the mount point `mp` (its descriptor `root`)."""
    return gcsurvey.survey(
        root,
        str(mp),
        cutoff=CUTOFF,
        local=local or set(),
        stale_after_s=90,
        expire_after_s=FORGET,
        progress=tree.Progress(),
    )


def still_unused(mp: Path, root: int, c: gcsurvey.Candidate, cutoff: float = CUTOFF) -> bool:
    """gc's last judgement of `c`, no container of this host using anything."""
    return gcsurvey.still_unused(root, c, cutoff, set(), mount_point=str(mp), expire_after_s=FORGET)
