"""The health probe of a mounted filesystem: statfs, then write, read back and remove a canary
file under `<mount point>/.volagent/`.

`probe()` blocks, for ever on a hung mount: the manager runs it in a worker thread and stops
waiting at `probe_timeout_s`. Errors that mean the mount is dead (the server process is gone,
the handle is stale) are told apart from the others, which leave the mount in place.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import time
from dataclasses import dataclass

from volagent import safedir

CANARY_DIR = ".volagent"
# what a dead mount answers: FUSE server gone (ENOTCONN), NFS handle stale (ESTALE), I/O error
DEAD_ERRNOS = frozenset({errno.ENOTCONN, errno.ESTALE, errno.EIO})


@dataclass(frozen=True)
class ProbeResult:
    dev: int  # st_dev of the mount point as the probe saw it
    seconds: float


class CanaryMismatch(OSError):
    """The canary read back differs from what was written."""


def is_dead(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DEAD_ERRNOS


def canary_name() -> str:
    return f"probe-{os.uname().nodename}-{os.getpid()}"


def probe(mount_point: str, name: str) -> ProbeResult:
    """Probes the filesystem at `mount_point`; raises OSError on any failure."""
    start = time.monotonic()
    # the mount point may be an operator's symlink: followed here, like everywhere
    with safedir.closing(os.open(mount_point, safedir.DIR_FLAGS & ~os.O_NOFOLLOW)) as fd:
        dev = os.fstat(fd).st_dev
        os.fstatvfs(fd)
        _canary(fd, name)
    return ProbeResult(dev=dev, seconds=time.monotonic() - start)


def _canary(root_fd: int, name: str) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(CANARY_DIR, 0o755, dir_fd=root_fd)
    with safedir.closing(safedir.open_below(root_fd, CANARY_DIR)) as dfd:
        token = secrets.token_bytes(16)
        wfd = os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600, dir_fd=dfd
        )
        with safedir.closing(wfd):
            os.write(wfd, token)
            # fsync makes a network filesystem answer now, not at some later write-back
            os.fsync(wfd)
        with safedir.closing(os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)) as rfd:
            back = os.read(rfd, 64)
        os.unlink(name, dir_fd=dfd)
        if back != token:
            raise CanaryMismatch(errno.EIO, "the canary read back differs from what was written")
