"""Sizing and removing whole directory trees under the mount point, through descriptors.

Used by `volagent gc`. Like the directory walk that creates, these never follow a symlink
(every directory is opened relative to its parent with O_NOFOLLOW, so a link swapped in
mid-walk stops the walk there and the link itself is what gets removed) and never leave the
shared filesystem's device (a filesystem mounted inside a namespace is left alone). A
`Progress` is ticked at every entry, so a caller can tell a slow walk from a hung mount.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from dataclasses import dataclass, field

from volagent import safedir

# a tree deeper than this is not walked further (each level holds a descriptor)
MAX_DEPTH = 256


@dataclass
class Progress:
    """The time of the last entry a walk reached, read by a watchdog in another thread."""

    last: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def tick(self) -> None:
        with self._lock:
            self.last = time.monotonic()

    def idle_for(self) -> float:
        with self._lock:
            return time.monotonic() - self.last


@dataclass
class Removal:
    """What removing a tree came to: what could not be removed."""

    problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.problems


def tree_size(parent_fd: int, name: str, progress: Progress) -> int:
    """Bytes used on disk by the tree `name` below `parent_fd` (like du, each inode once)."""
    try:
        fd = safedir.open_below(parent_fd, name)
    except OSError:
        return 0
    with safedir.closing(fd):
        st = os.fstat(fd)
        seen: set[int] = set()
        return st.st_blocks * 512 + _size_below(fd, st.st_dev, 1, seen, progress)


def _size_below(fd: int, dev: int, depth: int, seen: set[int], progress: Progress) -> int:
    total = 0
    try:
        names = safedir.list_names(fd)
    except OSError:
        return 0
    for name in names:
        progress.tick()
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            continue
        if st.st_dev != dev or st.st_ino in seen:
            continue
        if st.st_nlink > 1:
            seen.add(st.st_ino)
        total += st.st_blocks * 512
        if stat.S_ISDIR(st.st_mode) and depth < MAX_DEPTH:
            try:
                child = safedir.open_on(fd, name, dev)
            except (OSError, safedir.OtherDevice):
                continue
            with safedir.closing(child):
                total += _size_below(child, dev, depth + 1, seen, progress)
    return total


def remove_tree(
    parent_fd: int, name: str, dev: int, shown: str, progress: Progress | None = None
) -> Removal:
    """Removes the directory `name` below `parent_fd` and everything in it, on device `dev`
    only. Problems (a mount inside, an immutable file, a tree too deep) are collected, the
    rest is removed, and the top directory stays when anything below it could not go."""
    progress = progress or Progress()
    result = Removal()
    try:
        fd = safedir.open_below(parent_fd, name)
    except OSError as exc:
        result.problems.append(f"{shown}: cannot open: {exc.strerror}")
        return result
    with safedir.closing(fd):
        if os.fstat(fd).st_dev != dev:
            result.problems.append(f"{shown}: another filesystem is mounted here; left alone")
            return result
        _empty(fd, dev, shown, 1, result=result, progress=progress)
    if result.complete:
        try:
            os.rmdir(name, dir_fd=parent_fd)
        except OSError as exc:
            result.problems.append(f"{shown}: cannot remove: {exc.strerror}")
    return result


def _empty(
    fd: int, dev: int, shown: str, depth: int, *, result: Removal, progress: Progress
) -> None:
    try:
        names = safedir.list_names(fd)
    except OSError as exc:
        result.problems.append(f"{shown}: cannot list: {exc.strerror}")
        return
    for name in names:
        progress.tick()
        path = f"{shown}/{name}"
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=fd)  # a symlink is removed itself, never followed
                continue
            if depth >= MAX_DEPTH:
                result.problems.append(f"{path}: deeper than {MAX_DEPTH} levels; left alone")
                continue
            child = safedir.open_below(fd, name)
        except FileNotFoundError:
            continue  # removed by someone else meanwhile
        except OSError as exc:
            result.problems.append(f"{path}: {exc.strerror}")
            continue
        with safedir.closing(child):
            if os.fstat(child).st_dev != dev:
                result.problems.append(f"{path}: another filesystem is mounted here; left alone")
                continue
            before = len(result.problems)
            _empty(child, dev, path, depth + 1, result=result, progress=progress)
        if len(result.problems) == before:
            try:
                os.rmdir(name, dir_fd=fd)
            except OSError as exc:
                result.problems.append(f"{path}: cannot remove: {exc.strerror}")
