"""Mount helpers of the test bed: what is mounted where, lazy unmounts, and a look at the
directory underneath a mount point through a second, non-recursive bind of its parent."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mount_points() -> list[str]:
    """Every mount point of this mount namespace, in mount order."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [_unescape(line.split()[4]) for line in f if line.strip()]


def mounts_under(root: str) -> list[str]:
    """Mount points at or below `root`, deepest first (the order to unmount them in)."""
    root = os.path.realpath(root).rstrip("/")
    found = {p for p in mount_points() if p == root or p.startswith(root + "/")}
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def is_mount_point(path: str) -> bool:
    return os.path.realpath(path) in set(mount_points())


def umount_lazy(path: str) -> None:
    """Detaches every mount stacked at `path` (umount -l), ignoring what is not mounted."""
    for _ in range(16):  # bounded: a path can carry a few stacked mounts, not more
        if not is_mount_point(path):
            return
        subprocess.run(["umount", "-l", path], check=False, capture_output=True)


def umount_all_under(root: str) -> None:
    """Lazily unmounts every mount at or below `root`, deepest first."""
    for _ in range(4):
        left = mounts_under(root)
        if not left:
            return
        for path in left:
            subprocess.run(["umount", "-l", path], check=False, capture_output=True)


def remove_tree(root: str) -> None:
    """Unmounts everything below `root`, then removes it. Never removes through a mount."""
    if not os.path.lexists(root):
        return
    umount_all_under(root)
    if mounts_under(root):
        raise RuntimeError(f"mounts left under {root}: {mounts_under(root)}")
    try:
        shutil.rmtree(root)
    except OSError:
        # volagent marks an empty mount point immutable so nothing lands on the disk below
        # while it is unmounted; lift that (symlinks are not followed by chattr -R)
        subprocess.run(["chattr", "-R", "-i", root], check=False, capture_output=True)
        shutil.rmtree(root)


def mount_tmpfs(path: str, size: str = "64m") -> None:
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", path],
        check=True,
        capture_output=True,
    )


@contextlib.contextmanager
def underneath(path: str) -> Iterator[str]:
    """Yields where `path`'s own directory can be seen with the mounts on top of it peeled
    off: a non-recursive bind of its parent shows the parent's filesystem only."""
    parent, name = os.path.split(os.path.realpath(path).rstrip("/"))
    view = tempfile.mkdtemp(prefix="vt-under-")
    try:
        subprocess.run(["mount", "--bind", parent, view], check=True, capture_output=True)
        try:
            yield os.path.join(view, name)
        finally:
            umount_lazy(view)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(view)
