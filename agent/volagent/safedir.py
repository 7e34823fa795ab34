"""The one safe way volagent goes through directories on the shared filesystem.

Every directory below the mount point is opened relative to its parent's descriptor with
O_NOFOLLOW and O_DIRECTORY, so a symlink planted anywhere on a path, before or during a
walk, stops it there instead of leading elsewhere; every descriptor is checked to be on
the shared filesystem's device, so nothing is read, created or removed on the local disk
underneath a vanished mount, or on another filesystem mounted inside a namespace. The
mount point itself may be an operator's symlink: it is followed, and its device decides.

The creating walk (volumes/directories.py), the rack's records, the trash, the usage walk
and gc's sizing and removal all go through these. They block: call them through a
TimedWorker or a watched thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from collections.abc import Iterator, Sequence

from volagent.errors import MountUnhealthy

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# a directory looked at, not opened: the kernel's NFS client revalidates nothing for it
LOOK_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# openat2(2) (Linux 5.6): one lookup of a whole relative path that follows no symlink, crosses
# no mount and never leaves the starting directory
_SYS_OPENAT2 = 437  # the same number on every architecture
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class OtherDevice(Exception):
    """A directory on a path lies on another filesystem than its parent."""


@contextlib.contextmanager
def closing(fd: int) -> Iterator[int]:
    """`fd` for the block of a `with`, closed when the block is left, however it is left."""
    try:
        yield fd
    finally:
        os.close(fd)


def open_mount_point(mount_point: str, expected_dev: int | None) -> int:
    """A descriptor of the mount point, refused (MountUnhealthy) unless it is on
    `expected_dev`; not checked when `expected_dev` is None."""
    try:
        fd = os.open(mount_point, DIR_FLAGS & ~os.O_NOFOLLOW)
    except OSError as exc:
        raise MountUnhealthy(f"cannot open {mount_point}: {exc.strerror}") from None
    return _on_device(fd, mount_point, expected_dev)


def _on_device(fd: int, mount_point: str, expected_dev: int | None) -> int:
    """`fd`, the mount point's, when it is on `expected_dev` (or that is None); closed and
    refused (MountUnhealthy) otherwise, or when it cannot be stat'ed."""
    if expected_dev is None:
        return fd
    try:
        dev = os.fstat(fd).st_dev
    except OSError as exc:
        os.close(fd)
        raise MountUnhealthy(f"cannot stat {mount_point}: {exc.strerror}") from None
    if dev != expected_dev:
        os.close(fd)
        raise MountUnhealthy(f"{mount_point} is not the shared filesystem any more")
    return fd


def look_at_mount_point(mount_point: str, expected_dev: int | None) -> int:
    """`open_mount_point` for a look only (O_PATH): the kernel's NFS client answers it from
    its caches, without the revalidation of an open (close-to-open). Fit to stat and to
    look below with `look_below`, not to read, change or make anything in."""
    try:
        fd = os.open(mount_point, LOOK_FLAGS & ~os.O_NOFOLLOW)
    except OSError as exc:
        raise MountUnhealthy(f"cannot open {mount_point}: {exc.strerror}") from None
    return _on_device(fd, mount_point, expected_dev)


def open_shared_root(mount_point: str, expected_dev: int | None) -> int:
    """The mount point, only while it is the healthy shared filesystem (`expected_dev` is
    None when it is not)."""
    if expected_dev is None:
        raise MountUnhealthy(f"{mount_point} is not the healthy shared filesystem")
    return open_mount_point(mount_point, expected_dev)


def open_below(parent_fd: int, name: str) -> int:
    """The directory `name` in `parent_fd`, never through a symlink: OSError (ELOOP or
    ENOTDIR) for a symlink or a file, FileNotFoundError when missing."""
    return os.open(name, DIR_FLAGS, dir_fd=parent_fd)


def look_below(parent_fd: int, name: str) -> int:
    """`open_below` for a look only (O_PATH, see `look_at_mount_point`): the same refusal of
    a symlink or a file (ENOTDIR)."""
    return os.open(name, LOOK_FLAGS, dir_fd=parent_fd)


def open_at_once(root_fd: int, parts: Sequence[str]) -> int:
    """The directory `parts` below `root_fd` in one lookup of the whole path: no symlink
    followed, no mount crossed, nothing outside `root_fd` reached. Only the last component
    is revalidated by the kernel's NFS client (close-to-open); the others are answered from
    its caches, so use it only for volagent's own directories, which nobody else renames.
    OSError as for `open_below` (EXDEV for a mount on the way); ENOSYS where the kernel has
    no openat2 (or a sandbox forbids it)."""
    how = _OpenHow(DIR_FLAGS, 0, _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_XDEV | _RESOLVE_BENEATH)
    path = "/".join(parts).encode()
    fd = int(
        _libc.syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(root_fd),
            ctypes.c_char_p(path),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
    )
    if fd < 0:
        err = ctypes.get_errno()
        if err == errno.EPERM:  # a seccomp filter that does not know the call
            err = errno.ENOSYS
        raise OSError(err, os.strerror(err), path.decode())
    return fd


def open_on(parent_fd: int, name: str, dev: int) -> int:
    """`open_below`, and on device `dev` only (OtherDevice otherwise)."""
    fd = open_below(parent_fd, name)
    if os.fstat(fd).st_dev != dev:
        os.close(fd)
        raise OtherDevice(name)
    return fd


def kind_of(parent_fd: int, name: str) -> str:
    """What `name` in `parent_fd` is, said for an error message."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except OSError:
        return "vanished entry"
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    if stat.S_ISDIR(st.st_mode):
        return "directory"
    return "file" if stat.S_ISREG(st.st_mode) else "non-directory"


def list_names(dir_fd: int) -> list[str]:
    """The names in a directory, from its descriptor (the descriptor stays open)."""
    with os.scandir(dir_fd) as it:
        return [entry.name for entry in it]


def subdirs(dir_fd: int, *, dots: bool = False) -> list[str]:
    """Names of the real directories (not symlinks) in `dir_fd`, sorted; dot names left out
    unless `dots` (inside a namespace, `.shared` is a directory like any other)."""
    out = []
    for name in list_names(dir_fd):
        if name.startswith(".") and not dots:
            continue
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            out.append(name)
    return sorted(out)
