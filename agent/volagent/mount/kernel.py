"""The few system calls the mount side makes directly: bind mount, and the immutable flag of
the directory under the mount point (the lazy unmount runs in a child: see child.py).

All of these block: call them through a TimedWorker.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct

from volagent import safedir

MS_BIND = 0x1000
# _IOR('f', 1, long) and _IOW('f', 2, long); the kernel reads and writes an int through them
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x00000010

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]


def _raise_errno(what: str, path: str) -> None:
    code = ctypes.get_errno()
    raise OSError(code, f"{what}: {os.strerror(code)}", path)


def bind_mount(source: str, target: str) -> None:
    """`mount --bind source target`."""
    if _libc.mount(os.fsencode(source), os.fsencode(target), None, MS_BIND, None) != 0:
        _raise_errno(f"bind mount of {source}", target)


def get_flags(fd: int) -> int:
    buf = fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("i", 0))
    flags: int = struct.unpack("i", buf)[0]
    return flags


def set_immutable(fd: int, on: bool) -> bool:
    """Sets or clears the immutable flag (`chattr +i`/`-i`) of the open directory `fd`.
    Returns whether it changed. Raises OSError (ENOTTY/EOPNOTSUPP where the filesystem has
    no such flag)."""
    flags = get_flags(fd)
    wanted = flags | FS_IMMUTABLE_FL if on else flags & ~FS_IMMUTABLE_FL
    if wanted == flags:
        return False
    fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", wanted))
    return True


def is_immutable(path: str) -> bool:
    with safedir.closing(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)) as fd:
        return bool(get_flags(fd) & FS_IMMUTABLE_FL)


def release(path: str) -> None:
    """Clears the immutable flag of the directory `path` if set (for operators and tests that
    remove a mount point volagent guarded). Nothing happens where the flag is unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    with safedir.closing(fd):
        try:
            set_immutable(fd, False)
        except OSError as exc:
            if exc.errno not in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL):
                raise
