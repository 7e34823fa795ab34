"""The few system calls the mount side makes directly: bind mount, and the immutable flag of
the directory under the mount point (the lazy unmount runs in a child: see child.py).

All of these block: call them through a TimedWorker.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct

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


def bind_mount(source: str, target: str) -> None:
    """`mount --bind source target`."""
    if _libc.mount(os.fsencode(source), os.fsencode(target), None, MS_BIND, None) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"bind mount of {source}: {os.strerror(code)}", target)


def set_immutable(fd: int) -> bool:
    """Sets the immutable flag (`chattr +i`) of the open directory `fd`. Returns whether it
    changed. Raises OSError (ENOTTY/EOPNOTSUPP where the filesystem has no such flag)."""
    flags = struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("i", 0)))[0]
    if flags & FS_IMMUTABLE_FL:
        return False
    fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags | FS_IMMUTABLE_FL))
    return True
