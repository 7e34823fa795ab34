"""What the disk says about a directory tree, read without following symlinks: shared by the
unit tests of the directory walk and by the integration tests that compare the disk with what
the agent's status says."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from tests.testbed import mounts

if TYPE_CHECKING:
    from tests.testbed.agent import AgentProcess


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


def namespaces_tree(mount_point: str) -> list[str]:
    """`tree` of the mount point without volagent's own `.volagent` (heartbeats, records)."""
    return [p for p in tree(mount_point) if p.split("/")[0] != ".volagent"]


def on_the_mount(agent: AgentProcess, path: str) -> bool:
    """`path` is a directory on the agent's mounted filesystem: same st_dev as the mount
    point, another st_dev than the directory the mount point was made in, and present in
    the local filesystem the mount comes from."""
    mp_dev = os.stat(agent.mount_point).st_dev
    below_dev = os.stat(os.path.dirname(agent.mount_point)).st_dev
    rel = os.path.relpath(path, agent.mount_point)
    return (
        mounts.is_mount_point(agent.mount_point)
        and mp_dev != below_dev
        and os.stat(path).st_dev == mp_dev
        and os.path.isdir(os.path.join(agent.local_path, rel))
    )


def underneath_entries(agent: AgentProcess) -> list[str]:
    """What lies in the mount point's own directory, under the mount: should stay empty."""
    with mounts.underneath(agent.mount_point) as view:
        return tree(view)
