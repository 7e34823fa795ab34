"""Programs the mount side runs in a child process, where a hung kernel cannot hold volagent.

On a dead NFS server a mount, and even a lazy unmount, can sit in the kernel for minutes
(the retry backoff of `timeo=600,retrans=2`: about 6 minutes, measured). A thread that makes
such a call is lost until the kernel lets go, and volagent's workers are few. A child process
in its own session costs nothing volagent needs: at its timeout it is killed and left to the
kernel (a process in D state dies when the call returns), and volagent goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from dataclasses import dataclass

from volagent.errors import VolagentError

KILLED_WAIT_S = 5.0  # how long a killed child is waited for before it is left behind

# The lazy unmount, as a program of its own: umount2(MNT_DETACH | UMOUNT_NOFOLLOW) on argv[1].
# Exit 0: detached; 3: nothing mounted there (EINVAL); 1: failed, the reason on stderr. It
# imports nothing of volagent, so it starts in milliseconds.
_DETACH = """
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
if libc.umount2(os.fsencode(sys.argv[1]), 0x2 | 0x8) != 0:
    code = ctypes.get_errno()
    if code == errno.EINVAL:
        sys.exit(3)
    sys.exit("lazy unmount of %s: %s" % (sys.argv[1], os.strerror(code)))
"""


class ChildHung(VolagentError):
    """A child did not finish within its timeout and was killed."""


@dataclass(frozen=True)
class Finished:
    returncode: int
    output: str  # stdout and stderr, the first 8 KiB


async def run(argv: list[str], timeout: float) -> Finished:
    """Runs `argv` in a new session; its output goes to a file, not a pipe (a helper that
    daemonizes would hold a pipe open forever). Raises OSError when it cannot start,
    ChildHung when it outlives `timeout` (it is killed, and not waited for long)."""
    with tempfile.TemporaryFile() as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(KILLED_WAIT_S):
                    await proc.wait()
            raise ChildHung(
                f"{' '.join(argv)} did not finish within {timeout:g}s and was killed"
            ) from None
        out.seek(0)
        output = out.read(8192).decode("utf-8", "replace").strip()
    return Finished(proc.returncode or 0, output)  # set: the child was waited for


async def lazy_unmount(target: str, timeout: float) -> bool:
    """`umount -l target` in a child: True when detached, False when nothing was mounted
    there. Raises OSError when the kernel refuses, ChildHung when it does not answer."""
    done = await run([sys.executable, "-I", "-S", "-c", _DETACH, target], timeout)
    if done.returncode == 3:
        return False
    if done.returncode != 0:
        raise OSError(done.output or f"lazy unmount of {target} failed ({done.returncode})")
    return True
