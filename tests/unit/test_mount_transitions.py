"""The mount state machine, transition by transition: mounting -> mounted; mounted ->
stalled when a probe hangs past its timeout, and back when it answers; a dead probe, a mount
that leaves the table or is covered; a remount asked for, a config change that needs one and
one that does not; failed attempts with backoff; mounts that die young counting towards it.

The MountManager runs for real on the event loop. Only what cannot run unprivileged here is
faked, at the boundary: the kernel's mount table and its change notification, the mount
calls (the mount program, lazy unmount, the immutable flag), the TCP check of the NFS
server, and the probe's filesystem I/O (the real probe runs on a temporary directory, unless
a test makes it hang on an Event or fail with an errno). Nothing waits on the wall clock:
each step waits for a condition, with a generous guard that only turns a hang into a
failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import structlog
from tests.unit.changes import GUARD_S, Changes, capturing_logs
from tests.unit.factories import RACK, make_state

from volagent.aws import discovery
from volagent.config import LIVE, REMOUNT, Config, from_dict, keys_applying, value_of
from volagent.errors import EfsUnavailable, MountError
from volagent.mount import child, kernel, manager, probe, table
from volagent.mount.manager import MountManager
from volagent.mount.report import Reporter
from volagent.mount.supervise import Current, Signals, Supervisor
from volagent.mount.target import Target
from volagent.state import AgentState
from volagent.vocabulary import MountState

SOURCE = "server:/export"
REAL_PROBE = probe.probe


# --- the fakes at the boundary ------------------------------------------------------------
class Kernel:
    """The mount table (what /proc/self/mountinfo would say), its change notification, and
    the mount system calls, kept in memory."""

    def __init__(self, changes: Changes) -> None:
        self.changes = changes
        self.entries: list[table.MountEntry] = []
        self.unmounts: list[str] = []
        self.immutable: dict[tuple[int, int], bool] = {}
        self.watchers: list[tuple[asyncio.AbstractEventLoop, Callable[[], None]]] = []
        self._next_id = 100
        self._lock = threading.Lock()
        self.fail_reads = 0  # the next reads of the table that fail unexpectedly
        self.no_immutable_flag = False  # the root filesystem has no immutable flag (tmpfs)

    def mount(self, source: str, fstype: str, mount_point: str, root: str = "/") -> None:
        with self._lock:
            self._next_id += 1
            self.entries.append(
                table.MountEntry(
                    mount_id=self._next_id,
                    parent_id=1,
                    # the probe sees the directory standing in for the mount point
                    dev=os.stat(mount_point).st_dev,
                    root=root,
                    mount_point=os.path.normpath(mount_point),
                    options="rw,relatime",
                    fstype=fstype,
                    source=source,
                    super_options="rw",
                )
            )
        self._changed()

    def at(self, mount_point: str) -> table.MountEntry | None:
        return table.mount_at(self.read_table(), mount_point)

    def remove(self, mount_point: str) -> bool:
        with self._lock:
            found = [e for e in self.entries if e.mount_point == os.path.normpath(mount_point)]
            if not found:
                return False
            self.entries.remove(found[-1])
        self._changed()
        return True

    def _changed(self) -> None:
        for loop, callback in list(self.watchers):
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(callback)
        self.changes.poke()

    # what the code calls
    def read_table(
        self, path: str = table.MOUNTINFO, at: str | None = None
    ) -> list[table.MountEntry]:
        assert path == table.MOUNTINFO
        with self._lock:
            if self.fail_reads > 0:
                self.fail_reads -= 1
                raise RuntimeError("unexpected")
            return list(self.entries)

    async def lazy_unmount(self, target: str, timeout: float) -> bool:
        self.unmounts.append(target)
        return self.remove(target)

    def bind_mount(self, source: str, target: str) -> None:
        self.mount(source, "ext4", target, root=source)

    def set_immutable(self, fd: int) -> bool:
        if self.no_immutable_flag:
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        was = self.immutable.get(key, False)
        self.immutable[key] = True
        return not was

    def is_immutable(self, path: Path) -> bool:
        st = os.stat(path)
        return self.immutable.get((st.st_dev, st.st_ino), False)

    def watch(self) -> type:
        kernel_ = self

        class TableWatch:
            def __init__(self, on_change: Callable[[], None], path: str = "") -> None:
                self._entry = (asyncio.get_running_loop(), on_change)

            def start(self) -> None:
                kernel_.watchers.append(self._entry)

            def close(self) -> None:
                with contextlib.suppress(ValueError):
                    kernel_.watchers.remove(self._entry)

        return TableWatch


class Probe:
    """The probe's filesystem I/O: the real probe, or one that hangs until released, or
    one that fails with an errno."""

    def __init__(self, changes: Changes) -> None:
        self.changes = changes
        self.calls = 0
        self.hanging = 0
        self.fail_next: list[int] = []  # errnos of the next probes, one each
        self.hang = False
        self.gate = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, mount_point: str, name: str) -> probe.ProbeResult:
        with self._lock:
            self.calls += 1
            hang, gate = self.hang, self.gate
            fail = self.fail_next.pop(0) if self.fail_next and not hang else None
            if hang:
                self.hanging += 1
        self.changes.poke()
        if hang:
            gate.wait()
        elif fail is not None:
            raise OSError(fail, os.strerror(fail), mount_point)
        return REAL_PROBE(mount_point, name)

    def stall(self) -> None:
        """The probes from now on hang until `release()`."""
        with self._lock:
            self.hang = True
            self.gate = threading.Event()

    def release(self) -> None:
        """Answers the hung probes (and the ones to come)."""
        with self._lock:
            self.hang = False
        self.gate.set()


@dataclass
class Bed:
    """One MountManager on a temporary mount point, and everything it was given."""

    tmp: Path
    mp: Path
    state: AgentState
    changes: Changes
    kernel: Kernel
    probe: Probe
    mounted: list[Target] = field(default_factory=list)  # what the mount program was asked
    # whether the directory was locked at each call of the mount program: a bind source
    # Docker creates during a mount attempt must never land on the local disk
    locked_while_mounting: list[bool] = field(default_factory=list)
    fail_mounts: list[Exception] = field(default_factory=list)
    healthy_calls: int = 0
    history: list[tuple[str, str | None]] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)
    delays: list[int] = field(default_factory=list)  # the short-lived counts
    mgr: MountManager | None = None

    def config(self, **mount: Any) -> Config:
        """The config the state starts with (as make_state makes it), with `mount` changed."""
        return from_dict(
            {"rack": RACK, "mount_point": str(self.mp), **self.sections(self.tmp, **mount)}
        )

    @staticmethod
    def sections(tmp: Path, **mount: Any) -> dict[str, Any]:
        """NFS from SOURCE; probes an hour apart with an hour to answer, unless told; the
        local state in `tmp`/state."""
        base = {
            "type": "nfs",
            "source": SOURCE,
            "probe_interval_s": 3600,
            "probe_timeout_s": 3600,
        }
        return {"state_dir": str(tmp / "state"), "mount": {**base, **mount}}

    def manager(self) -> MountManager:
        async def program(cfg: Config, target: Target, mount_point: str) -> None:
            self.mounted.append(target)
            self.locked_while_mounting.append(self.kernel.is_immutable(Path(mount_point)))
            self.changes.poke()
            if self.fail_mounts:
                raise self.fail_mounts.pop(0)
            self.kernel.mount(target.source, "nfs4", mount_point, root="/export")

        def on_healthy() -> None:
            self.healthy_calls += 1

        self.mgr = MountManager(self.state, on_healthy, mount_program=program)
        return self.mgr

    def events(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.logs
            if e["event"] == name and all(e.get(k) == v for k, v in fields.items())
        ]

    def states(self) -> list[str]:
        """The mount states in the order they were entered (repeats folded)."""
        out: list[str] = []
        for s, _ in self.history:
            if not out or out[-1] != s:
                out.append(s)
        return out

    def metric(self, name: str, **labels: str) -> float | None:
        return self.state.metrics.registry.get_sample_value(name, labels)

    async def until_state(self, state: str, *, after: int = 0) -> None:
        """Until the mount state `state` is entered (at index `after` of history or later)."""
        await self.changes.until(
            lambda: any(s == state for s, _ in self.history[after:]),
            f"mount state {state!r} (history {self.history[after:]})",
        )

    async def until_log(self, name: str, count: int = 1, **fields: Any) -> None:
        await self.changes.until(
            lambda: len(self.events(name, **fields)) >= count,
            f"{count} x log {name} {fields}",
        )


@pytest.fixture
def bed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bed]:
    changes = Changes()
    kern = Kernel(changes)
    fake_probe = Probe(changes)
    mp = tmp_path / "mp"
    monkeypatch.setattr(table, "read_table", kern.read_table)
    monkeypatch.setattr(table, "TableWatch", kern.watch())
    monkeypatch.setattr(child, "lazy_unmount", kern.lazy_unmount)
    monkeypatch.setattr(kernel, "bind_mount", kern.bind_mount)
    monkeypatch.setattr(kernel, "set_immutable", kern.set_immutable)
    monkeypatch.setattr(probe, "probe", fake_probe)
    monkeypatch.setattr(discovery, "tcp_check", lambda host: None)
    b = Bed(
        tmp=tmp_path,
        mp=mp,
        # as the agent starts: the manager under test drives the mount from unmounted
        state=make_state(mp, mount_state=None, docker_state=None, **Bed.sections(tmp_path)),
        changes=changes,
        kernel=kern,
        probe=fake_probe,
    )

    def delay(times: int) -> float:
        b.delays.append(times)
        changes.poke()
        return 0.0

    monkeypatch.setattr(manager, "_short_lived_delay", delay)

    real_set = b.state.set_mount_state

    def set_mount_state(state: str, error: str | None = None) -> None:
        b.history.append((state, error))
        real_set(state, error)
        changes.poke()

    b.state.set_mount_state = set_mount_state  # type: ignore[method-assign]

    try:
        with capturing_logs(b.logs, changes):
            yield b
    finally:
        fake_probe.release()  # no probe thread is left hanging
    assert not b.events("mount.crashed"), b.events("mount.crashed")


@contextlib.asynccontextmanager
async def running(b: Bed, mgr: MountManager | None = None) -> AsyncIterator[MountManager]:
    b.changes.bind()
    mgr = mgr or b.manager()
    task = asyncio.create_task(mgr.run())
    b.changes.watch(task)
    try:
        yield mgr
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        b.probe.release()


def set_config(b: Bed, **mount: Any) -> None:
    b.state.config = replace(b.state.config, mount=replace(b.state.config.mount, **mount))
    b.changes.poke()


# --- mounting -> mounted ------------------------------------------------------------------
async def test_mounting_then_mounted(bed: Bed) -> None:
    async with running(bed):
        await bed.until_state("mounted")
        await bed.until_log("mount.healthy")
    assert bed.states() == ["mounting", "mounted"]
    st = bed.state
    (target,) = bed.mounted
    assert (target.type, target.source) == ("nfs", SOURCE)
    entry = bed.kernel.at(str(bed.mp))
    assert entry is not None and entry.source == SOURCE
    assert st.mount.state == "mounted" and st.mount.error is None
    assert st.mount_dev == os.stat(bed.mp).st_dev
    assert st.mount_known.is_set()
    assert (st.mount.source, st.mount.type) == (SOURCE, "nfs")
    assert st.mount.last_probe_ms is not None
    assert bed.healthy_calls == 1
    assert st.warnings == []
    # the directory underneath was locked before the mount, during it, and stays so under it
    assert bed.locked_while_mounting == [True]
    assert bed.kernel.is_immutable(bed.mp)
    assert [e["event"] for e in bed.logs if e["event"].startswith("mount.")] == [
        "mount.locked",
        "mount.discovered",
        "mount.mounting",
        "mount.mounted",
        "mount.healthy",
    ]
    assert bed.metric("volagent_mount_up") == 1
    for s in MountState:
        assert bed.metric("volagent_mount_state", state=s) == (1 if s == "mounted" else 0)
    assert (bed.metric("volagent_probe_seconds_count") or 0) >= 1
    assert bed.metric("volagent_remounts_total") == 0
    assert bed.metric("volagent_probe_failures_total") == 0
    assert (bed.tmp / "state" / "mount.json").exists()


async def test_a_mount_already_there_is_adopted_not_mounted_again(bed: Bed) -> None:
    bed.mp.mkdir()
    bed.kernel.mount(SOURCE, "nfs4", str(bed.mp), root="/export")

    async with running(bed):
        await bed.until_state("mounted")
    assert bed.mounted == []
    assert bed.events("mount.adopted", source=SOURCE)
    assert bed.kernel.unmounts == []


async def test_a_mount_point_that_cannot_be_locked_is_warned_about_and_mounted(bed: Bed) -> None:
    bed.kernel.no_immutable_flag = True

    async with running(bed):
        await bed.until_state("mounted")
    (warning,) = bed.state.warnings
    assert f"{bed.mp} cannot be made immutable" in warning
    assert "writes under it would land on local disk" in warning
    assert len(bed.mounted) == 1


async def test_local_type_binds_local_path_and_warns(bed: Bed) -> None:
    local = bed.tmp / "local"
    bed.state.config = bed.config(type="local", source="", local_path=str(local))

    async with running(bed):
        await bed.until_state("local")
    assert bed.mounted == []  # no mount program for local: a bind mount
    entry = bed.kernel.at(str(bed.mp))
    assert entry is not None and entry.root == str(local)
    assert local.is_dir()
    assert bed.state.mount_healthy
    assert any("data is not shared" in w for w in bed.state.warnings)
    assert bed.metric("volagent_mount_state", state="local") == 1
    assert bed.metric("volagent_mount_up") == 1


async def test_local_fallback_where_efs_cannot_be_had_and_efs_tried_again_on_request(
    bed: Bed, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = bed.tmp / "local"
    bed.state.config = bed.config(
        type="efs", source="", local_path=str(local), allow_local_fallback=True
    )
    asked: list[str] = []

    def discover(cfg: Config, resolve: Any = None, identity: Any = None) -> Any:
        asked.append(cfg.mount.type)
        raise EfsUnavailable("no EFS filesystem tagged for this rack", "create one")

    monkeypatch.setattr(discovery, "discover", discover)

    async with running(bed) as mgr:
        await bed.until_state("local")
        assert any("(EFS could not be had)" in w for w in bed.state.warnings)
        mgr.request_remount()  # tries EFS again
        await bed.until_log("mount.local_fallback", count=2)
        await bed.until_log("mount.healthy", count=2)
    assert asked == ["efs", "efs"]
    assert bed.states() == ["mounting", "local", "mounting", "local"]
    assert bed.kernel.unmounts == [str(bed.mp)]
    assert bed.metric("volagent_mount_state", state="local") == 1
    assert bed.state.verdict() != "ok"  # data is not shared: never simply ok


async def test_an_internal_error_is_said_and_the_mount_watched_again(bed: Bed) -> None:
    bed.state.config = bed.config(probe_interval_s=0.05)

    async with running(bed):
        await bed.until_state("mounted")
        bed.kernel.fail_reads = 1  # the supervisor's next look at the table
        await bed.until_log("mount.crashed")
        await bed.until_log("mount.healthy", count=2)
    (crashed,) = bed.events("mount.crashed")
    assert crashed["error"] == "RuntimeError('unexpected')"
    assert ("unmounted", "internal error: RuntimeError('unexpected')") in bed.history
    assert bed.states() == ["mounting", "mounted", "unmounted", "mounting", "mounted"]
    # its own mount, still there, is adopted: not mounted again, not unmounted
    assert bed.events("mount.adopted")
    assert len(bed.mounted) == 1 and bed.kernel.unmounts == []
    bed.logs.remove(crashed)  # expected here, unlike in every other test


# --- mounted <-> stalled ------------------------------------------------------------------
async def test_a_hung_probe_makes_it_stalled_and_its_answer_mounted_again(bed: Bed) -> None:
    bed.state.config = bed.config(probe_interval_s=0.05, stalled_remount_after=1000)
    st = bed.state

    async def stall_and_answer(episode: int) -> list[str | None]:
        """One hung probe, stalled for two probes, then answering; the errors shown."""
        mark = len(bed.history)
        bed.probe.stall()
        hanging = bed.probe.hanging
        await bed.changes.until(lambda: bed.probe.hanging > hanging, "a hung probe")
        # the short timeout only while the probe hangs: a busy machine may take longer than
        # that for a good probe too
        set_config(bed, probe_timeout_s=0.05)
        await bed.changes.until(
            lambda: "(2 in a row)" in (st.mount.error or ""), "stalled for two probes"
        )
        assert st.mount.state == "stalled"
        assert st.mount_dev is None  # nothing is created on a stalled mount
        assert not st.mount_healthy and st.verdict() == "critical"
        assert "probe did not finish within 0.05s" in (st.mount.error or "")
        assert bed.metric("volagent_mount_up") == 0
        assert bed.metric("volagent_mount_state", state="stalled") == 1
        set_config(bed, probe_timeout_s=3600)
        bed.probe.release()  # the filesystem answers again
        await bed.until_state("mounted", after=mark)
        await bed.until_log("mount.healthy", count=episode + 1)
        assert st.mount_dev == os.stat(bed.mp).st_dev
        assert st.mount.error is None
        return [e for s, e in bed.history[mark:] if s == "stalled"]

    async with running(bed):
        await bed.until_state("mounted")
        first = await stall_and_answer(1)
        assert (bed.metric("volagent_probe_failures_total") or 0) >= 2
        # the count starts afresh once a probe has answered
        second = await stall_and_answer(2)
        for errors in (first, second):
            assert "(1 in a row)" in (errors[0] or "")
    assert bed.states() == ["mounting", "mounted", "stalled", "mounted", "stalled", "mounted"]
    # said when it stalls, not again at every overdue probe
    assert len(bed.events("mount.stalled")) == 2
    assert bed.healthy_calls == 3
    assert len(bed.mounted) == 1 and bed.kernel.unmounts == []  # never let go
    assert bed.metric("volagent_remounts_total") == 0


async def test_stalled_for_too_many_probes_is_let_go_and_mounted_again(bed: Bed) -> None:
    bed.state.config = bed.config(probe_interval_s=0.05, stalled_remount_after=2)

    async with running(bed):
        await bed.until_state("mounted")
        bed.probe.stall()
        await bed.changes.until(lambda: bed.probe.hanging > 0, "a hung probe")
        set_config(bed, probe_timeout_s=0.05)  # only while the probe hangs
        await bed.changes.until(lambda: bed.kernel.unmounts != [], "the lazy unmount")
        set_config(bed, probe_timeout_s=3600)
        bed.probe.release()
        await bed.until_log("mount.healthy", count=2)
    assert bed.states() == ["mounting", "mounted", "stalled", "unmounted", "mounting", "mounted"]
    (lost,) = bed.events("mount.lost")
    assert lost["reason"] == "stalled"
    assert lost["error"] == "stalled for 2 probes in a row: remounting"
    assert bed.kernel.unmounts == [str(bed.mp)]
    assert len(bed.mounted) == 2
    assert (bed.metric("volagent_probe_failures_total") or 0) >= 2
    assert bed.metric("volagent_remounts_total") == 1
    assert bed.delays == [1]  # it lived a moment: counts towards the backoff


async def test_a_live_probe_timeout_applies_without_a_remount(bed: Bed) -> None:
    bed.state.config = bed.config(probe_interval_s=0.05, stalled_remount_after=1000)

    async with running(bed):
        await bed.until_state("mounted")
        set_config(bed, probe_timeout_s=0.05)  # applies live
        calls = bed.probe.calls
        # two probes later the supervisor has seen the new config
        await bed.changes.until(lambda: bed.probe.calls >= calls + 2, "two more probes")
        bed.probe.stall()
        # with the old timeout (an hour) this would never come
        await bed.until_state("stalled")
    assert "within 0.05s" in (bed.state.mount.error or "")
    assert len(bed.mounted) == 1 and bed.kernel.unmounts == []
    assert not bed.events("mount.remount")


# --- a probe that fails -------------------------------------------------------------------
@pytest.mark.parametrize("code", sorted(probe.DEAD_ERRNOS))
async def test_a_dead_probe_lets_go_and_mounts_again(bed: Bed, code: int) -> None:
    bed.state.config = bed.config(probe_interval_s=0.05)

    async with running(bed):
        await bed.until_state("mounted")
        bed.probe.fail_next = [code]
        await bed.until_log("mount.healthy", count=2)
    assert bed.states() == ["mounting", "mounted", "unmounted", "mounting", "mounted"]
    (lost,) = bed.events("mount.lost")
    assert lost["reason"] == "dead"
    assert os.strerror(code) in lost["error"]
    lost_state = [e for s, e in bed.history if s == "unmounted"]
    assert lost_state == [lost["error"]]
    assert bed.kernel.unmounts == [str(bed.mp)]
    assert bed.metric("volagent_probe_failures_total") == 1
    assert bed.metric("volagent_remounts_total") == 1


async def test_a_probe_failing_otherwise_keeps_the_mount_and_warns(bed: Bed) -> None:
    bed.state.config = bed.config(probe_interval_s=0.05)
    problem = f"probe failed: {os.strerror(errno.ENOSPC)}"

    async with running(bed):
        await bed.until_state("mounted")
        bed.probe.fail_next = [errno.ENOSPC]
        await bed.changes.until(
            lambda: ("mounted", problem) in bed.history, "the probe's problem shown"
        )
        assert bed.state.mount_healthy
        assert any(problem in w for w in bed.state.warnings)
        mark = len(bed.history)
        await bed.changes.until(
            lambda: ("mounted", None) in bed.history[mark:], "a good probe again"
        )
        assert bed.state.warnings == []
    assert bed.states() == ["mounting", "mounted"]
    assert bed.metric("volagent_probe_failures_total") == 1
    assert len(bed.mounted) == 1 and bed.kernel.unmounts == []
    assert len(bed.events("mount.healthy")) == 1  # it never stopped being healthy


# --- the mount table ----------------------------------------------------------------------
async def test_unmounted_by_someone_else_is_noticed_from_the_table_and_mounted_again(
    bed: Bed,
) -> None:
    # probes an hour apart: only the table watch can tell
    async with running(bed):
        await bed.until_state("mounted")
        bed.kernel.remove(str(bed.mp))
        await bed.until_log("mount.healthy", count=2)
    assert bed.states() == ["mounting", "mounted", "unmounted", "mounting", "mounted"]
    (lost,) = bed.events("mount.lost")
    assert lost["reason"] == "gone"
    assert lost["error"] == f"{bed.mp} was unmounted by someone else"
    assert bed.kernel.unmounts == []  # nothing of ours was left to detach
    assert len(bed.mounted) == 2
    assert bed.metric("volagent_remounts_total") == 1
    assert bed.delays == [1]
    assert bed.healthy_calls == 2


async def test_covered_by_another_mount_is_refused_until_it_goes_and_ours_is_adopted(
    bed: Bed,
) -> None:
    async with running(bed):
        await bed.until_state("mounted")
        bed.kernel.mount("intruder:/x", "nfs4", str(bed.mp), root="/x")
        await bed.until_log("mount.refused")
        st = bed.state
        assert st.mount.state == "unmounted"
        assert "already has nfs4 intruder:/x mounted" in (st.mount.error or "")
        assert bed.metric("volagent_mount_up") == 0
        bed.kernel.remove(str(bed.mp))  # the intruder leaves; ours is underneath
        await bed.until_log("mount.adopted")
        await bed.until_log("mount.healthy", count=2)
    (lost,) = bed.events("mount.lost")
    assert (lost["reason"], lost["error"]) == (
        "gone",
        f"{bed.mp} was covered by intruder:/x by someone else",
    )
    assert bed.states() == [
        "mounting",
        "mounted",
        "unmounted",  # lost
        "mounting",
        "unmounted",  # refused: never mounted on top of another filesystem
        "mounted",  # our own mount, adopted from its record
    ]
    assert bed.kernel.unmounts == []  # never unmounts what is not its own
    assert len(bed.mounted) == 1


# --- remounts asked for -------------------------------------------------------------------
async def test_a_requested_remount_detaches_and_mounts_again(bed: Bed) -> None:
    async with running(bed) as mgr:
        await bed.until_state("mounted")
        mgr.request_remount()
        await bed.until_log("mount.healthy", count=2)
    assert bed.states() == ["mounting", "mounted", "mounting", "mounted"]
    again = [e for s, e in bed.history if s == "mounting"]
    assert "remount requested" in again
    (remount,) = bed.events("mount.remount")
    assert remount["reason"] == "requested"
    assert not bed.events("mount.lost")
    assert bed.kernel.unmounts == [str(bed.mp)]
    assert len(bed.mounted) == 2
    assert bed.metric("volagent_remounts_total") == 1
    assert bed.delays == []  # asked for: not a mount that died young
    assert bed.healthy_calls == 2


async def test_a_config_change_needing_a_remount_mounts_with_the_new_config(bed: Bed) -> None:
    bed.state.config = bed.config(probe_interval_s=0.05)
    options = "nfsvers=4.1,hard,ro"

    async with running(bed):
        await bed.until_state("mounted")
        set_config(bed, options=options)
        await bed.until_log("mount.healthy", count=2)
    (remount,) = bed.events("mount.remount")
    assert (remount["reason"], remount["error"]) == ("config", "the mount configuration changed")
    assert ("mounting", "the mount configuration changed") in bed.history
    assert [t.options for t in bed.mounted] == [bed.mounted[0].options, options]
    assert bed.mounted[0].options != options
    assert bed.kernel.unmounts == [str(bed.mp)]
    assert bed.delays == []
    assert bed.metric("volagent_remounts_total") == 1


async def test_a_reload_is_looked_at_at_once_not_at_the_next_probe(bed: Bed) -> None:
    # probes an hour apart: only the daemon's word that the config changed can wake the
    # watch, as a reload does
    bed.state.config = bed.config(probe_interval_s=3600)

    async with running(bed) as mgr:
        await bed.until_state("mounted")
        probes = bed.probe.calls
        bed.state.config = bed.config(probe_interval_s=3600, options="nfsvers=4.1,hard,ro")
        mgr.config_changed()
        await bed.until_log("mount.healthy", count=2)
        assert bed.probe.calls <= probes + 1  # the new mount's first probe, no tick
    assert bed.events("mount.remount", reason="config")


async def test_a_moved_mount_point_keeps_the_old_mount_for_running_containers(bed: Bed) -> None:
    bed.state.config = bed.config(probe_interval_s=0.05)
    new = bed.tmp / "elsewhere"

    async with running(bed):
        await bed.until_state("mounted")
        bed.state.config = replace(bed.state.config, mount_point=str(new))
        await bed.until_log("mount.healthy", count=2)
    assert bed.events("mount.remount", reason="config")
    assert bed.kernel.unmounts == []  # the old one stays: containers use it
    assert bed.kernel.at(str(bed.mp)) is not None
    assert bed.kernel.at(str(new)) is not None
    assert bed.state.mount.mount_point == str(new)
    assert bed.state.mount_dev == os.stat(new).st_dev


def edited(cfg: Config, dotted: str) -> Config:
    """`cfg` with the value of one key changed (not validated: only compared)."""
    value = value_of(cfg, dotted)
    if isinstance(value, bool):
        new: Any = not value
    elif isinstance(value, int | float):
        new = value * 2 + 1
    else:
        new = f"{value}-edited"
    section, _, key = dotted.rpartition(".")
    if not section:
        return replace(cfg, **{key: new})
    return replace(cfg, **{section: replace(getattr(cfg, section), **{key: new})})


def mount_section_live_keys() -> list[str]:
    return [k for k in keys_applying(LIVE) if k.startswith("mount.")] + ["log_level", "rack"]


@pytest.mark.parametrize(
    ("key", "reason"),
    [(k, "config") for k in [*keys_applying(REMOUNT), "mount_point"]]
    + [(k, "gone") for k in mount_section_live_keys()],
)
async def test_the_supervisor_lets_go_for_exactly_the_remount_keys(
    bed: Bed, key: str, reason: str
) -> None:
    """Each key declared to need a remount (and the mount point) ends the watch; a key that
    applies live does not (the mount is then taken away, so the watch ends as `gone`)."""
    cfg = bed.config(probe_interval_s=0.05)
    bed.state.config = cfg
    bed.mp.mkdir()
    bed.kernel.mount(SOURCE, "nfs4", str(bed.mp), root="/export")
    entry = bed.kernel.at(str(bed.mp))
    assert entry is not None
    signals = Signals()
    sup = Supervisor(
        Reporter(bed.state, lambda: None, structlog.get_logger()), signals, lambda: bed.state.config
    )
    cur = Current(target=Target("nfs", SOURCE), mount_point=str(bed.mp), entry=entry, config=cfg)

    try:
        bed.changes.bind()
        signals.bind(asyncio.get_running_loop())
        watch = asyncio.create_task(sup.watch(cur))
        await bed.until_state("mounted")
        bed.state.config = edited(cfg, key)
        if reason == "gone":
            bed.kernel.remove(str(bed.mp))
        async with asyncio.timeout(GUARD_S):
            got, error = await watch
    finally:
        sup.close()
    assert got == reason
    if reason == "config":
        assert error == "the mount configuration changed"


# --- failed attempts and backoff ----------------------------------------------------------
async def test_failed_attempts_back_off_showing_mounting_and_the_error(bed: Bed) -> None:
    bed.state.config = bed.config(probe_interval_s=0.05)  # backoff from 0.05 s up to 2 s
    bed.fail_mounts = [MountError("mount.nfs: Connection timed out")] * 8
    waits: list[tuple[float, str, str | None]] = []

    mgr = bed.manager()

    async def backoff(seconds: float) -> None:
        waits.append((seconds, bed.state.mount.state, bed.state.mount.error))

    mgr._backoff = backoff  # type: ignore[method-assign]  # the retry's sleep, injected
    async with running(bed, mgr):
        await bed.until_state("mounted")
    assert len(bed.mounted) == 9
    assert bed.locked_while_mounting == [True] * 9  # never unlocked for an attempt
    seconds = [w for w, _, _ in waits]
    assert len(seconds) == 8
    assert seconds == sorted(seconds)  # exponential, jitter never undoes a doubling
    assert seconds[0] <= 0.1
    assert seconds[-1] == 2.0  # capped at max(2, 4 x probe_interval_s)
    for _, state, error in waits:
        assert state == "mounting"
        assert error == "mount.nfs: Connection timed out"
    failed = bed.events("mount.attempt_failed")
    assert [e["attempt"] for e in failed] == list(range(1, 9))
    assert {e["kind"] for e in failed} == {"MountError"}
    assert bed.states() == ["mounting", "mounted"]
    assert bed.state.mount.error is None
    assert bed.metric("volagent_remounts_total") == 0  # failed attempts are not remounts
    assert bed.healthy_calls == 1


async def test_a_remount_request_cuts_the_backoff_short(bed: Bed) -> None:
    bed.fail_mounts = [MountError("mount.nfs: access denied by server")]

    mgr = bed.manager()
    real = mgr._backoff
    mgr._backoff = lambda seconds: real(3600)  # type: ignore[method-assign]
    async with running(bed, mgr):
        await bed.until_log("mount.attempt_failed")
        assert bed.state.mount.state == "mounting"
        mgr.request_remount()
        await bed.until_state("mounted")
    assert len(bed.mounted) == 2


# --- mounts that die young ----------------------------------------------------------------
async def test_mounts_dying_young_back_off_more_each_time_until_one_lives(bed: Bed) -> None:
    bed.state.config = bed.config(probe_interval_s=0.05)
    bed.probe.fail_next = [errno.ESTALE] * 3  # each new mount is dead at its first probe

    async with running(bed) as mgr:
        await bed.until_state("mounted")
        assert bed.delays == [1, 2, 3]
        mgr.request_remount()  # asked for: starts the count afresh
        await bed.until_log("mount.healthy", count=2)
        bed.probe.fail_next = [errno.ESTALE]
        await bed.until_log("mount.healthy", count=3)
    assert bed.delays == [1, 2, 3, 1]
    assert len(bed.events("mount.lost", reason="dead")) == 4


async def test_a_mount_that_lived_long_does_not_count(
    bed: Bed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager, "SHORT_LIVED_S", -1.0)  # every mount has lived long enough
    bed.state.config = bed.config(probe_interval_s=0.05)

    async with running(bed):
        await bed.until_state("mounted")
        bed.probe.fail_next = [errno.EIO]
        await bed.until_log("mount.healthy", count=2)
    assert bed.delays == []


def test_short_lived_delay_doubles_from_a_quarter_second_up_to_30s() -> None:
    for times, base in ((1, 0.25), (2, 0.5), (3, 1.0), (8, 30.0), (9, 30.0), (50, 30.0)):
        for _ in range(20):
            assert base <= manager._short_lived_delay(times) <= base * 1.25
