"""Directories and usage records of a chosen age, as the gc tests lay them out on disk."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

DAY = 86400.0
NOW = time.time()  # for ages in days; anything that must be fresh takes time.time()
OLD = NOW - 90 * DAY
CUTOFF = NOW - 30 * DAY


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
