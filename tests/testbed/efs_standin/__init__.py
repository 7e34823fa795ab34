"""The mount side's test bed: a scratch area whose mounts, immutable flags and stand-in server
processes are always cleaned up, and a helper to run a MountManager in-process.

The EFS stand-in itself is `mount_program.py`: the program `[mount] mount_program` points at.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.testbed import mounts as testbed_mounts
from tests.testbed.agent import AgentProcess
from volagent import config as config_mod
from volagent.config import Config
from volagent.mount import MountManager
from volagent.state import AgentState

T = TypeVar("T")
STANDIN = str(Path(__file__).with_name("mount_program.py"))


@dataclass
class Scratch:
    """A private directory tree for one test: the mount point, local_path, exports."""

    root: Path

    @property
    def mount_point(self) -> str:
        return str(self.root / "volumes")

    @property
    def local_path(self) -> str:
        return str(self.root / "local")

    @property
    def exports(self) -> str:
        return str(self.root / "exports")

    @property
    def argv_log(self) -> str:
        return str(self.root / "mount-argv.log")

    @property
    def mount_program(self) -> str:
        """A wrapper volagent calls as its mount program; it hands the argv to the stand-in."""
        path = self.root / "bin" / "mount-standin"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.makedirs(self.exports, exist_ok=True)
            path.write_text(
                "#!/bin/sh\n"
                f"exec {sys.executable} {STANDIN} --exports {self.exports} "
                f'--log {self.argv_log} --prog "$0" "$@"\n'
            )
            path.chmod(0o755)
        return str(path)

    def export(self, host: str) -> Path:
        """The export directory the stand-in serves for `host`."""
        path = Path(self.exports, host)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def refuse(self, host: str, message: str | None) -> None:
        """Makes mounts from `host` fail with `message` (None: stop refusing)."""
        path = Path(self.exports, host + ".fail")
        if message is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(message)

    def mount_calls(self) -> list[list[str]]:
        """Every argv the mount program received, in order."""
        try:
            lines = Path(self.argv_log).read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line)["argv"] for line in lines if line.strip()]

    def server_pids(self, mount_point: str = "") -> list[int]:
        """The bindfs servers started for the mount point (a stopped, detached one included),
        oldest first."""
        target = (mount_point or self.mount_point).encode()
        found = []
        for pid in standin_pids(self):
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if target in argv:
                    found.append(pid)
        return sorted(found, key=_start_time)

    def server_pid(self, mount_point: str = "") -> int | None:
        """The newest bindfs serving the mount point, if any."""
        pids = self.server_pids(mount_point)
        return pids[-1] if pids else None

    def shared_config(self, aws: dict[str, Any] | None = None, **mount: Any) -> Config:
        """A config for a shared type (default nfs4) through the stand-in."""
        settings: dict[str, Any] = {"type": "nfs4", "mount_program": self.mount_program}
        settings.update(mount)
        return self.config(settings, aws=aws or {})

    def config(self, mount: dict[str, Any] | None = None, **top: Any) -> Config:
        data: dict[str, Any] = {
            "mount_point": self.mount_point,
            "state_dir": str(self.root / "state"),
            "mount": {
                "type": "local",
                "local_path": self.local_path,
                "probe_interval_s": 0.2,
                "probe_timeout_s": 0.5,
                **(mount or {}),
            },
        }
        data.update({k: v for k, v in top.items() if v})
        return config_mod.from_dict(data)


def standin_pids(scratch: Scratch) -> list[int]:
    """The bindfs servers the stand-in started for this scratch area."""
    pids = []
    for line in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = line.read_bytes().split(b"\0")
            if argv and argv[0].endswith(b"bindfs") and scratch.exports.encode() in b" ".join(argv):
                pids.append(int(line.parent.name))
    return pids


def _start_time(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rpartition(")")[2].split()[19])


def cleanup(scratch: Scratch) -> None:
    """Kills the stand-in servers (SIGCONT first: a stopped one would keep its mount hung),
    lazily unmounts everything under the scratch root and lifts the immutable flags."""
    for pid in standin_pids(scratch):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
    testbed_mounts.umount_all_under(str(scratch.root))
    # symlinks are not followed by chattr -R
    subprocess.run(["chattr", "-R", "-i", str(scratch.root)], check=False, capture_output=True)


def stop_agent_on_standin(agent: AgentProcess, scratch: Scratch) -> None:
    """Stops an agent mounted from the stand-in before its stand-in server goes, then
    releases what the test bed's own finalizer cannot remove (the immutable directory under
    the mount point)."""
    with contextlib.suppress(Exception):
        agent.stop()
    cleanup(scratch)
    testbed_mounts.umount_lazy(agent.mount_point)
    subprocess.run(["chattr", "-i", agent.mount_point], check=False, capture_output=True)


@contextlib.contextmanager
def scratch_area(base: Path) -> Iterator[Scratch]:
    scratch = Scratch(base)
    try:
        yield scratch
    finally:
        cleanup(scratch)


@dataclass
class Running:
    """A MountManager running in this event loop, with what it reported."""

    state: AgentState
    manager: MountManager
    task: asyncio.Task[None]
    healthy_calls: list[float] = field(default_factory=list)

    async def wait_state(self, *states: str, timeout: float = 30.0) -> None:
        await self.until(
            lambda: self.state.mount.state in states,
            f"mount state in {states} (now {self.state.mount.state}: {self.state.mount.error})",
            timeout,
        )

    async def until(self, cond: Callable[[], T], what: str, timeout: float = 30.0) -> T:
        """`cond()`'s first truthy result, looked at again each time the state changes: for
        what changes through its methods (the mount state and error), which tell waiters.
        AssertionError naming `what` once `timeout` passed."""
        try:
            async with asyncio.timeout(timeout):
                while not (result := cond()):
                    await self.state.changed()
                return result
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None


@contextlib.asynccontextmanager
async def running_manager(cfg: Config, **kwargs: Any) -> AsyncIterator[Running]:
    """Starts a MountManager on `cfg`; stops it (cancels `run()`) on the way out."""
    state = AgentState(cfg)
    calls: list[float] = []
    manager = MountManager(state, lambda: calls.append(time.monotonic()), **kwargs)
    task = asyncio.create_task(manager.run(), name="mount")
    try:
        yield Running(state, manager, task, calls)
    finally:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=15)
        assert done, "the mount manager did not stop when cancelled"
        with contextlib.suppress(asyncio.CancelledError):
            await task


def sh(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True)
