"""A FUSE filesystem that counts the operations asked of it: the test stand-in for a network
filesystem, where every operation the kernel passes on is a round trip.

`python -m tests.testbed.counting_fs BACKING MOUNTPOINT LOG` serves BACKING (a directory) at
MOUNTPOINT, passing every operation through, and appends each operation's name and the id of
the process that caused it to LOG (one line each, written before it is answered, so a call
that returned has its operations in LOG). Other processes of the machine look at every mount
now and then (a stat of each mount point): `ops_of` counts one process's operations only.
Inode numbers are the backing directory's own (`use_ino`), so a walk that compares inodes
sees what the backing filesystem has.

The kernel's FUSE client caches names and attributes for `entry_timeout` and `attr_timeout`
(1 s by default): within them a lookup or stat of the same thing is answered without asking,
and what a walk costs then depends on how fast it ran. Both are 0 here, and negative lookups
are not cached either, so every lookup, stat and open of the walk reaches this process: the
counts are those of the walk's own operations, the same at every run. The kernel's NFS client
caches more (and revalidates on open); `make bench-vm` counts what it really sends.

Closing a directory (RELEASEDIR) and forgetting an inode reach the filesystem after the call
that caused them has returned, and cost a network filesystem nothing: they are not counted.
"""

from __future__ import annotations

import errno
import os
import sys
from collections import Counter
from typing import Any

from fuse import FUSE, FuseOSError, Operations, fuse_get_context

COUNTED_OPTIONS = {
    "entry_timeout": 0,
    "attr_timeout": 0,
    "negative_timeout": 0,
    "use_ino": True,
    "nothreads": True,
    "foreground": True,
}


class Counting(Operations):  # type: ignore[misc]
    """Passes operations through to `backing`, each one logged by name."""

    def __init__(self, backing: str, log_path: str) -> None:
        self.backing = backing
        self.log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def __call__(self, op: str, path: str, *args: Any) -> Any:
        if op not in ("releasedir", "release", "destroy", "init"):
            _uid, _gid, pid = fuse_get_context()
            os.write(self.log_fd, f"{op} {pid}\n".encode())
        method = getattr(self, op, None)
        if method is None:
            raise FuseOSError(errno.ENOSYS)
        try:
            return method(self._real(path), *args)
        except OSError as exc:
            raise FuseOSError(exc.errno or errno.EIO) from None

    def _real(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        st = os.lstat(path)
        keys = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size")
        out = {k: getattr(st, k) for k in keys}
        out.update(st_atime=st.st_atime, st_mtime=st.st_mtime, st_ctime=st.st_ctime)
        return out

    def access(self, path: str, amode: int) -> None:
        if not os.access(path, amode, follow_symlinks=False):
            raise FuseOSError(errno.EACCES)

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(path, mode)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(path, mode, follow_symlinks=False)

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.chown(path, uid, gid, follow_symlinks=False)

    def utimens(self, path: str, times: tuple[float, float] | None = None) -> None:
        os.utime(path, times, follow_symlinks=False)

    def opendir(self, path: str) -> int:
        return 0

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(path)]

    def readlink(self, path: str) -> str:
        return os.readlink(path)

    def symlink(self, target: str, source: str) -> None:
        os.symlink(source, target)

    def rename(self, old: str, new: str) -> None:
        os.rename(old, self._real(new))

    def unlink(self, path: str) -> None:
        os.unlink(path)

    # files (the registry's and the records'): byte-range locks are the kernel's own here,
    # as FUSE keeps them locally for a filesystem that does not take them
    def create(self, path: str, mode: int) -> int:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, mode)

    def open(self, path: str, flags: int) -> int:
        return os.open(path, flags & ~os.O_CREAT | os.O_NOFOLLOW)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        os.truncate(path if fh is None else fh, length)

    def flush(self, path: str, fh: int) -> None:
        pass

    def fsync(self, path: str, datasync: int, fh: int) -> None:
        os.fsync(fh)

    def release(self, path: str, fh: int) -> None:
        os.close(fh)

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(path)
        keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree")
        return {k: getattr(st, k) for k in keys} | {"f_namemax": st.f_namemax}


def ops_of(log: str, pid: int | None) -> Counter[str]:
    """The operations LOG's text holds of process `pid` (of every caller: None), by name. FUSE
    names the calling thread: a thread other than the main one is a caller of its own."""
    out: Counter[str] = Counter()
    for line in log.splitlines():
        op, _, who = line.partition(" ")
        if pid is None or who == str(pid):
            out[op] += 1
    return out


def main() -> None:
    backing, mount_point, log_path = sys.argv[1:4]
    FUSE(Counting(os.path.abspath(backing), log_path), mount_point, **COUNTED_OPTIONS)


if __name__ == "__main__":
    main()
