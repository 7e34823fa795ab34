"""Safe directory creation under the mount point.

The walk opens every component relative to its parent's descriptor with O_NOFOLLOW and
O_DIRECTORY, so a symlink anywhere on the path, planted before or during the walk, stops it
(rule 4). Every descriptor is checked to be on the shared filesystem's device, so nothing is
ever created on the local disk underneath a vanished mount (rule 3). Existing directories are
opened, never chowned or chmodded (rule 2). These functions block: call them through a
TimedWorker.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from volagent import safedir
from volagent.errors import MountUnhealthy, NamespaceViolation, VolagentError
from volagent.values import Owner

PARENT_MODE = 0o755


class PrepareFailed(VolagentError):
    """Creating a directory failed for a reason other than the rules (EACCES, ENOSPC, ...)."""


@dataclass(frozen=True)
class Prepared:
    """The outcome of one preparation: how many directories were created, and the leaf as
    it is now."""

    created: int
    leaf_created: bool
    uid: int
    gid: int
    mode: int
    # the leaf's identity, for the check after a start (volumes/start_check.py)
    dev: int = 0
    ino: int = 0


def _open_child(parent_fd: int, name: str, shown: str) -> int:
    try:
        return safedir.open_below(parent_fd, name)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            kind = safedir.kind_of(parent_fd, name)
            raise NamespaceViolation(
                4,
                f"{shown} is a {kind}, not a directory; volagent "
                "never follows links under the mount point",
            ) from None
        raise PrepareFailed(f"cannot open {shown}: {exc.strerror}") from None


def prepare_path(
    mount_point: str, parts: Sequence[str], owner: Owner, mode: int, expected_dev: int | None
) -> Prepared:
    """Creates every missing directory of `mount_point/parts...`. The leaf, if created, gets
    owner and mode; parents created on the way get root:root 0755."""
    root = safedir.open_mount_point(mount_point, expected_dev)
    try:
        return prepare_below(root, mount_point, parts, owner, mode)
    finally:
        os.close(root)


def prepare_below(
    root_fd: int, mount_point: str, parts: Sequence[str], owner: Owner, mode: int
) -> Prepared:
    """`prepare_path` from a descriptor of the mount point (`mount_point` only names it)."""
    if not parts:
        raise NamespaceViolation(5, "nothing to create below the mount point")
    fd = os.dup(root_fd)
    dev = os.fstat(fd).st_dev
    created = 0
    leaf_created = False
    shown = mount_point.rstrip("/")
    try:
        for i, name in enumerate(parts):
            if name in ("", ".", "..") or "/" in name:
                raise NamespaceViolation(5, f"bad path component {name!r}")
            shown = f"{shown}/{name}"
            is_leaf = i == len(parts) - 1
            made = False
            try:
                os.mkdir(name, 0o700, dir_fd=fd)  # tight until chowned, then opened up
                made = True
            except FileExistsError:
                pass
            except OSError as exc:
                if exc.errno in (errno.ENOTCONN, errno.ESTALE, errno.EIO):
                    raise MountUnhealthy(f"cannot create {shown}: {exc.strerror}") from None
                raise PrepareFailed(f"cannot create {shown}: {exc.strerror}") from None
            child = _open_child(fd, name, shown)
            os.close(fd)
            fd = child
            if os.fstat(fd).st_dev != dev:
                # not the shared filesystem: whatever were made there would not be shared
                raise NamespaceViolation(
                    3, f"{shown} is on another filesystem (a mount inside the namespace)"
                )
            if made:
                created += 1
                uid, gid, bits = (owner.uid, owner.gid, mode) if is_leaf else (0, 0, PARENT_MODE)
                os.fchown(fd, uid, gid)
                os.fchmod(fd, bits)
                leaf_created = is_leaf
        st = os.fstat(fd)
        return Prepared(
            created=created,
            leaf_created=leaf_created,
            uid=st.st_uid,
            gid=st.st_gid,
            mode=stat.S_IMODE(st.st_mode),
            dev=st.st_dev,
            ino=st.st_ino,
        )
    finally:
        os.close(fd)
