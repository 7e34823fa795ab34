"""What the disk says about a directory tree, read without following symlinks: shared by the
unit tests of the directory walk and by the test bed that compares the disk with the agent."""

from __future__ import annotations

import os
import stat


def owner_mode(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """(uid, gid, permission bits) of path itself, never following a symlink."""
    st = os.lstat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def tree(root: str | os.PathLike[str]) -> list[str]:
    """Every entry below root as a relative path; symlinks are listed, not followed."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        out += [os.path.relpath(os.path.join(dirpath, n), root) for n in dirnames + filenames]
    return sorted(out)
