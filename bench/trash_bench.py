"""What the trash check costs the preparer: `trashcheck.prepare_path` (mark the namespace used,
look in the trash, then the directory walk) against the bare walk from the mount point
(`directories.prepare_below`), for a bind whose directories already exist (the common
create), on a tmpfs and through a bindfs FUSE mount (a user-space server answers every
lookup, like a network filesystem), with a trash holding TRASH_ENTRIES entries.

The two take turns in each round, so both see the same machine noise; the figures are
p50/p99 of each and their ratio. Nothing here asserts a threshold. Needs root (mounts).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

from bench.stats import percentile
from volagent import safedir
from volagent.values import Owner
from volagent.volumes import directories as fs
from volagent.volumes import trashcheck

RUNS = 2000
TRASH_ENTRIES = 50
PARTS = ("r-app", "web", "var", "data")
OWNER = Owner(0, 0)


def _bare_walk(mp: str, dev: int) -> None:
    with safedir.closing(safedir.open_mount_point(mp, dev)) as root:
        fs.prepare_below(root, mp, PARTS, OWNER, 0o755)


@contextlib.contextmanager
def _mounted(kind: str, base: str) -> Iterator[str]:
    backing = os.path.join(base, f"{kind}-backing")
    target = os.path.join(base, kind)
    os.makedirs(backing)
    os.makedirs(target)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", backing], check=True)
    try:
        if kind == "tmpfs":
            yield backing
            return
        subprocess.run(["bindfs", backing, target], check=True)
        try:
            yield target
        finally:
            subprocess.run(["umount", target], check=False)
    finally:
        subprocess.run(["umount", backing], check=False)


def _fill_trash(mp: str) -> None:
    trash = os.path.join(mp, ".volagent", "trash")
    os.makedirs(trash)
    for i in range(TRASH_ENTRIES):
        os.makedirs(os.path.join(trash, f"r-old{i}@20260101T000000Z", "web"))


def _time(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(mp: str) -> tuple[list[float], list[float]]:
    dev = os.stat(mp).st_dev
    _bare_walk(mp, dev)  # the directories exist from now on
    _fill_trash(mp)
    bare, checked = [], []
    for _ in range(RUNS):
        bare.append(_time(lambda: _bare_walk(mp, dev)))
        checked.append(_time(lambda: trashcheck.prepare_path(mp, PARTS, OWNER, 0o755, dev)))
    return bare, checked


def main() -> None:
    if shutil.which("bindfs") is None:
        print("bindfs missing: `make testbed-deps`")
        return
    base = tempfile.mkdtemp(prefix="vb-trash-")
    try:
        for kind in ("tmpfs", "bindfs"):
            with _mounted(kind, base) as mp:
                bare, checked = measure(mp)
            b50, b99 = percentile(bare, 50) * 1e6, percentile(bare, 99) * 1e6
            c50, c99 = percentile(checked, 50) * 1e6, percentile(checked, 99) * 1e6
            print(
                f"{kind:>6}: walk p50 {b50:.0f} us p99 {b99:.0f} us; with the trash check "
                f"p50 {c50:.0f} us p99 {c99:.0f} us; ratio p50 {c50 / b50:.2f}x "
                f"p99 {c99 / b99:.2f}x (+{c50 - b50:.0f} us)"
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
