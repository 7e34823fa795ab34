"""The local directory under the mount point, kept immutable so nothing lands on local disk.

While the shared filesystem is not mounted, the mount point is just a directory of the root
disk, and Docker's own auto-create of a bind source would write beneath it. With the immutable
flag set (`chattr +i`), nobody can, root included. The flag stays on while the shared filesystem is
mounted over the directory (the kernel mounts on an immutable directory), so the moment the
mount vanishes the directory is already locked, and there is no moment during a mount
attempt when it is not.

These functions block; run them through a TimedWorker, and only while nothing is mounted at
the mount point, so the directory they touch is the local one.
"""

from __future__ import annotations

import contextlib
import errno
import os

from volagent import safedir
from volagent.mount import kernel

UNSUPPORTED = (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)


class NoImmutableFlag(Exception):
    """The filesystem holding the mount point has no immutable flag."""


def canonical_mount_point(mount_point: str) -> str:
    """The mount point as the mount table names it: parents resolved, created if missing.

    Only the parent is resolved, never the mount point itself: resolving it would stat the
    mounted filesystem's root, which blocks on a hung mount.
    """
    path = os.path.normpath(mount_point)
    parent = os.path.realpath(os.path.dirname(path))
    os.makedirs(parent, mode=0o755, exist_ok=True)
    canonical = os.path.join(parent, os.path.basename(path))
    with contextlib.suppress(FileExistsError):
        os.mkdir(canonical, 0o755)
    if os.path.islink(canonical):
        # a mount point given as a symlink: the mount table names its target
        target = os.path.realpath(canonical)
        if os.path.islink(target):
            raise OSError(errno.ELOOP, "the mount point is a symlink loop", canonical)
        os.makedirs(target, mode=0o755, exist_ok=True)
        return target
    return canonical


def lock(mount_point: str) -> bool:
    """Makes the (unmounted) mount point directory immutable. True if it changed.
    Raises NoImmutableFlag where the filesystem does not support the flag."""
    with safedir.closing(os.open(mount_point, safedir.DIR_FLAGS)) as fd:
        try:
            return kernel.set_immutable(fd)
        except OSError as exc:
            if exc.errno in UNSUPPORTED:
                raise NoImmutableFlag(os.strerror(exc.errno or 0)) from None
            raise
