"""What a use leaves for gc once its registry entry goes, on real directories through the start
guard, on a rack whose every gc reads the registry (creates leave out the mark, and their
first usage record waits for the first refresh): the keeper records a use's end before it
removes this host's entry, a claim records a gone host's uses before it drops their entries,
and an entry that ends no use (a create refused after its claim) leaves no record."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.unit.aged import make_dir, still_unused, survey
from tests.unit.factories import make_state, volumes_of
from tests.unit.guard_requests import create
from tests.unit.test_registry import hold, let_go

from volagent.guard.plugin import Guard
from volagent.ops.gc import command, registered, trashing, tree
from volagent.ops.gc import survey as gcsurvey
from volagent.rack import registry, registry_claim
from volagent.rack.heartbeat import HostBeat, write_heartbeat
from volagent.rack.registry import Entry, RegistryError
from volagent.rack.registry_task import Registry
from volagent.rack.usage import recorder
from volagent.state import ContainerRecord, VolumeRecord
from volagent.volumes.preparer import Preparer
from volagent.worker import TimedWorker

pytestmark = pytest.mark.root  # the guard judges directories another user may own
WHO = {"host": "host-z", "user": "root", "pid": 1}


@pytest.fixture
def worker() -> Iterator[TimedWorker]:
    w = TimedWorker("test-uses-end", max_threads=2)
    yield w
    w.close()


class Host:
    """One host's agent parts: the state, the registry (claims and keeper), the guard."""

    def __init__(self, mp: Path, name: str, worker: TimedWorker) -> None:
        self.mp = mp
        self.state = make_state(mp, host=name, guard={"enabled": True})
        self.state.note_heartbeat(time.time(), self.state.config.health.forget_after_s)
        self.state.gc_reads_registry_in = self.state.mount_epoch  # a rack of 0.5 hosts
        self.registry = Registry(self.state)
        self.guard = Guard(self.state, Preparer(self.state, worker, registry=self.registry))

    def docker_created(self, cid: str, rel: str) -> None:
        """Docker answered the create: the container is in the table."""
        self.state.reserved_binds.clear()
        vol = VolumeRecord(f"{self.mp}/{rel}", "/data", read_only=False, state="ready")
        self.state.upsert_container(
            ContainerRecord(id=cid, name=cid, rack="r1", app="a", service="web", volumes=[vol])
        )

    def close(self) -> None:
        self.registry.worker.close()


def registry_paths(mp: Path) -> list[tuple[str, str]]:
    root = os.open(mp, os.O_RDONLY | os.O_DIRECTORY)
    try:
        reg = registry.open_dir_at(root)
        assert reg is not None
        entries = registry.read_locked(reg, str(mp), "r1-a", time.monotonic() + 5)
        os.close(reg)
    finally:
        os.close(root)
    return sorted((e.host, e.path) for e in entries)


def gc_delete(mp: Path) -> list[trashing.Outcome]:
    """`volagent gc --delete` on another host: the survey, then each move."""
    root = os.open(mp, os.O_RDONLY | os.O_DIRECTORY)
    try:
        s = survey(mp, root)
        outcomes = []
        for c in s.candidates:

            def judge(c: gcsurvey.Candidate = c) -> bool:
                return still_unused(mp, root, c)

            moved = trashing.move(root, c, tree.Progress(), still_unused=judge, reason="t", who=WHO)
            outcomes.append(moved.outcome)
        return outcomes
    finally:
        os.close(root)


def test_a_short_use_is_recorded_before_its_entry_goes(mp: Path, worker: TimedWorker) -> None:
    """A one-off container of a few seconds: no mark, its first record waiting for the
    first refresh. It ends, and the keeper's pass removes its entry before the recorder's
    pass, and the agent is killed then: the keeper recorded the end first."""
    make_dir(mp, "r1-a/web/data")
    a = Host(mp, "host-a", worker)
    try:
        assert create(a.guard, f"{mp}/r1-a/web/data:/data")["Allow"] is True
        a.docker_created("job-1", "r1-a/web/data")
        assert asyncio.run(recorder.UsageRecorder(a.state, worker).record_due()) == 0
        a.state.forget_container("job-1")  # it ended
        assert asyncio.run(a.registry.sync()) == 1  # the entry goes
    finally:
        a.close()
    # killed here: restarted, the agent has nothing of its own to take over
    outcomes = gc_delete(mp)
    assert (mp / "r1-a/web/data").is_dir(), f"used seconds ago, yet trashed: {outcomes}"


def test_a_crashed_hosts_use_is_recorded_before_a_claim_drops_its_entry(
    mp: Path, worker: TimedWorker
) -> None:
    """host-b ran a container for a minute and crashed before its first record. 16 minutes
    later (past forget_after_s) a claim on host-c meets its entry in the way and drops it,
    though the claim itself is refused for a live host's bind: the use is recorded at the
    entry's time on host-b's behalf first."""
    dev = os.stat(mp).st_dev
    make_dir(mp, "r1-a/web/data")
    make_dir(mp, "r1-a/api/x/y")
    b = Host(mp, "host-b", worker)
    try:
        assert create(b.guard, f"{mp}/r1-a/web/data:/data")["Allow"] is True
        b.docker_created("c1", "r1-a/web/data")
        assert asyncio.run(recorder.UsageRecorder(b.state, worker).record_due()) == 0
    finally:
        b.close()
    ago = 16 * 60
    with registry.locked(str(mp), dev, "r1-a", time.monotonic() + 10) as tx:
        tx.write([dataclasses.replace(e, time=e.time - ago) for e in tx.entries])
    write_heartbeat(str(mp), dev, HostBeat("host-b", time.time() - ago))
    write_heartbeat(str(mp), dev, HostBeat("host-d", time.time()))
    d = registry_claim.claim(
        str(mp), dev, "r1-a", host="host-d",
        wanted=[Entry("host-d", "c7", "", "r1-a/api/x/y", time.time())],
        expire_after_s=900, deadline=time.monotonic() + 10,
    )  # fmt: skip
    assert not d.clashes
    c = Host(mp, "host-c", worker)  # its claim as its guard makes it
    try:
        vols, plans = volumes_of(f"{mp}/r1-a/web", f"{mp}/r1-a/api/x")
        asyncio.run(c.registry.claim(vols, plans, "c9", "c9"))
    finally:
        c.close()
    assert vols[1].state == "violation"  # refused (rule 7): api/x nests host-d's bind
    assert registry_paths(mp) == [("host-d", "r1-a/api/x/y")], "host-b's entry dropped"
    kept = mp / ".volagent/usage/r1-a/web/host-b.json"
    assert kept.is_file()
    outcomes = gc_delete(mp)
    assert (mp / "r1-a/web/data").is_dir(), f"used 16 minutes ago, yet trashed: {outcomes}"


def test_a_create_refused_after_its_claim_ends_no_use(mp: Path, worker: TimedWorker) -> None:
    """A create into a namespace in the trash is refused by the look in the trash after
    its claim wrote an entry; the keeper removes the entry, and records no use of it."""
    make_dir(mp, "r1-a/web/data")
    assert gc_delete(mp) == [trashing.Outcome.MOVED]
    a = Host(mp, "host-a", worker)
    try:
        answer = create(a.guard, f"{mp}/r1-a/web/data:/data")
        assert answer["Allow"] is False and "trash" in answer["Msg"]
        assert asyncio.run(a.registry.sync()) == 1
        assert asyncio.run(recorder.UsageRecorder(a.state, worker).record_due()) == 0
    finally:
        a.close()
    assert not (mp / ".volagent/usage/r1-a").exists()
    assert registry_paths(mp) == []


def test_gc_waiting_for_a_registry_lock_held_elsewhere_says_so(
    mp: Path, root: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock held a while (a host that died holding it keeps it until its NFS lease
    expires) keeps the candidate and says why, well before gc's watchdog would take the wait
    for a hung filesystem and leave the trash entry's claim behind. Scaled down: gc waiting
    0.5 s, its watchdog 2 s."""
    assert registered.LOCK_WAIT_S <= command.STALL_S / 3
    make_dir(mp, "r1-a/web/data")
    registry_claim.claim(
        str(mp), os.stat(mp).st_dev, "r1-a", host="host-b",
        wanted=[Entry("host-b", "c1", "", "r1-a/web/data", time.time() - 40 * 86400)],
        expire_after_s=900, deadline=time.monotonic() + 10,
    )  # fmt: skip
    lock = mp / ".volagent" / "registry" / "r1-a.lock"
    [c] = survey(mp, root).candidates
    held: list[subprocess.Popen[str]] = []
    hold(held, lock)  # another process (another host, as far as locks go)
    try:
        monkeypatch.setattr(registered, "LOCK_WAIT_S", 0.5)

        def judge() -> bool:
            return still_unused(mp, root, c)

        with pytest.raises(RegistryError, match="stayed locked"):
            command.guarded(
                lambda p: trashing.move(root, c, p, still_unused=judge, reason="t", who=WHO),
                "moving", stall_s=2.0,
            )  # fmt: skip
    finally:
        let_go(held)
    assert (mp / "r1-a/web/data").is_dir()
    assert list((mp / ".volagent/trash").iterdir()) == [], "the claim went again"


def test_a_retried_create_after_a_refusal_records_its_end(
    mp: Path, worker: TimedWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `docker run` without a name refused after its claim (its walk failed once: an NFS
    timeout, say), run again the same way: the same request, so the same digest and ref.
    The retry is allowed, its container ends within a second (the usage recorder never saw
    it), and the keeper removes its entry: that use's end must be recorded, though the ref
    is the refused one's."""
    from volagent.volumes import trashcheck

    make_dir(mp, "r1-a/web/data")
    a = Host(mp, "host-a", worker)
    real = trashcheck.prepare_path
    calls = []

    def flaky(*args: object, **kw: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")  # a transient failure of the walk
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(trashcheck, "prepare_path", flaky)
    try:
        assert create(a.guard, f"{mp}/r1-a/web/data:/data")["Allow"] is False
        assert asyncio.run(a.registry.sync()) == 1  # the refused create's entry goes
        assert create(a.guard, f"{mp}/r1-a/web/data:/data")["Allow"] is True  # the retry
        a.docker_created("job-2", "r1-a/web/data")
        a.state.forget_container("job-2")  # it ended before the recorder's next pass
        assert asyncio.run(a.registry.sync()) == 1  # the entry goes
    finally:
        a.close()
    outcomes = gc_delete(mp)
    assert (mp / "r1-a/web/data").is_dir(), f"used seconds ago, yet trashed: {outcomes}"


def test_a_record_that_cannot_be_written_delays_no_new_entry(mp: Path, worker: TimedWorker) -> None:
    """The keeper cannot write the usage record of a use that ended (its record directory is
    in the way: a file left there by hand, a full quota on it...). Removing that entry may
    wait, but a container the Docker watch found (no claim: the guard was off, say) must
    still get its entry, or another host's claim nests it (rule 7)."""
    make_dir(mp, "r1-a/web/data")
    make_dir(mp, "r1-a/api/x")
    dev = os.stat(mp).st_dev
    a = Host(mp, "host-a", worker)
    try:
        assert create(a.guard, f"{mp}/r1-a/web/data:/data")["Allow"] is True
        a.docker_created("c1", "r1-a/web/data")
        asyncio.run(a.registry.sync())
        (mp / ".volagent/usage/r1-a").mkdir(parents=True, exist_ok=True)
        (mp / ".volagent/usage/r1-a/web").write_text("in the way")
        a.state.forget_container("c1")  # it ended: its record cannot be written
        vol = VolumeRecord(f"{mp}/r1-a/api/x", "/x", read_only=False, state="ready")
        a.state.upsert_container(  # found by the Docker watch, never claimed
            ContainerRecord(id="c2", name="c2", rack="r1", app="a", service="api", volumes=[vol])
        )
        for _ in range(3):
            a.registry._retry_at = 0.0  # the keeper's later passes
            asyncio.run(a.registry.sync())
    finally:
        a.close()
    write_heartbeat(str(mp), dev, HostBeat("host-a", time.time()))
    b = registry_claim.claim(
        str(mp), dev, "r1-a", host="host-b",
        wanted=[Entry("host-b", "c9", "", "r1-a/api", time.time())],
        expire_after_s=900, deadline=time.monotonic() + 10,
    )  # fmt: skip
    assert b.clashes, "host-b's bind of r1-a/api nests host-a's live c2 at r1-a/api/x"


def test_the_last_judgement_reads_the_registry_before_the_records(
    mp: Path, root: int, worker: TimedWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keeper writes a use's record, then removes its entry, under the registry's lock.
    gc's last judgement reads the usage records, then waits for that lock: the keeper's
    whole transaction falls between its two reads, and it sees neither the record (not
    written yet when it looked) nor the entry (gone when it got the lock)."""
    make_dir(mp, "r1-a/web/data")
    a = Host(mp, "host-a", worker)
    try:
        s = survey(mp, root)
        [c] = s.candidates  # unused at the survey
        # a one-off job, before gc's claim of the trash entry: no mark, its record deferred
        assert create(a.guard, f"{mp}/r1-a/web/data:/data")["Allow"] is True
        a.docker_created("job-1", "r1-a/web/data")
        a.state.forget_container("job-1")  # it ended
        real = gcsurvey.collect_usage

        def records_then_the_keeper(*args: object, **kw: object) -> object:
            found = real(*args, **kw)  # type: ignore[arg-type]
            assert asyncio.run(a.registry.sync()) == 1  # record written, entry removed
            return found

        def judge() -> bool:
            with monkeypatch.context() as m:
                m.setattr(gcsurvey, "collect_usage", records_then_the_keeper)
                return still_unused(mp, root, c)

        moved = trashing.move(root, c, tree.Progress(), still_unused=judge, reason="t", who=WHO)
    finally:
        a.close()
    assert moved.outcome == trashing.Outcome.KEPT, "used seconds ago, yet trashed"


def test_a_use_that_ends_while_gc_claims_its_trash_entry_is_recorded(
    mp: Path, root: int, worker: TimedWorker
) -> None:
    """A one-off job created after gc's survey (no mark, its first record deferred: its
    entry stands for it). gc claims the trash entry (a `moving` record, no directory yet);
    the job ends, and the keeper's pass falls before gc's last judgement takes the
    registry's lock (before the usage recorder's next pass). The directory is not in the
    trash yet: the end of a real use must be recorded, or gc sees neither entry nor record."""
    make_dir(mp, "r1-a/web/data")
    a = Host(mp, "host-a", worker)
    try:
        s = survey(mp, root)
        [c] = s.candidates  # unused at the survey
        assert create(a.guard, f"{mp}/r1-a/web/data:/data")["Allow"] is True
        a.docker_created("job-1", "r1-a/web/data")
        assert asyncio.run(recorder.UsageRecorder(a.state, worker).record_due()) == 0

        def judge() -> bool:
            # gc's trash entry is claimed: the job ends, the keeper's pass comes first
            a.state.forget_container("job-1")
            assert asyncio.run(a.registry.sync()) == 1  # the entry goes
            return still_unused(mp, root, c)

        moved = trashing.move(root, c, tree.Progress(), still_unused=judge, reason="t", who=WHO)
    finally:
        a.close()
    assert moved.outcome == trashing.Outcome.KEPT, "used seconds ago, yet trashed"


def test_ends_recorded_too_slowly_for_one_transaction_are_not_recorded_for_ever(
    mp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keeper's pass records many uses' ends under the registry's lock (a redeploy that
    removed a whole app, an agent restarted after its containers went, a slow filesystem):
    the records land, but the transaction's write comes after its deadline and fails. The
    next pass must not start the same records over (and fail the same way) for ever: the
    entries would never go, nor any new entry of the namespace be written. Scaled down:
    one record taking longer than the deadline."""
    make_dir(mp, "r1-a/web/data")
    st = make_state(mp, directories={"timeout_s": 1.0})
    st.note_heartbeat(time.time(), st.config.health.forget_after_s)
    st.gc_reads_registry_in = st.mount_epoch
    keeper = Registry(st)
    real = recorder.write_usage

    def slow(*args: object, **kw: object) -> object:
        time.sleep(0.9)  # past the transaction's deadline (0.8 of the timeout)
        return real(*args, **kw)  # type: ignore[arg-type]

    try:
        vol = VolumeRecord(f"{mp}/r1-a/web/data", "/data", read_only=False, state="ready")
        st.upsert_container(
            ContainerRecord(id="c1", name="c1", rack="r1", app="a", service="web", volumes=[vol])
        )
        assert asyncio.run(keeper.sync()) == 1
        st.forget_container("c1")
        monkeypatch.setattr(recorder, "write_usage", slow)
        for _ in range(3):
            keeper._retry_at = 0.0  # the keeper's later passes
            asyncio.run(keeper.sync())
    finally:
        keeper.worker.close()
    assert (mp / ".volagent/usage/r1-a/web/host-a.json").is_file()  # recorded every pass
    assert registry_paths(mp) == [], "the entry never goes"


def test_the_status_warns_while_the_end_of_a_use_cannot_be_recorded(
    mp: Path, worker: TimedWorker
) -> None:
    make_dir(mp, "r1-a/web/data")
    a = Host(mp, "host-a", worker)
    try:
        assert create(a.guard, f"{mp}/r1-a/web/data:/data")["Allow"] is True
        a.docker_created("c1", "r1-a/web/data")
        asyncio.run(a.registry.sync())
        (mp / ".volagent/usage/r1-a").mkdir(parents=True, exist_ok=True)
        (mp / ".volagent/usage/r1-a/web").write_text("in the way")
        a.state.forget_container("c1")
        asyncio.run(a.registry.sync())
        [warning] = [w for w in a.state.warnings if "cannot be recorded" in w]
        assert "r1-a" in warning
        assert registry_paths(mp) == [("host-a", "r1-a/web/data")], "its entry stays"
        (mp / ".volagent/usage/r1-a/web").unlink()
        a.registry._retry_at = 0.0  # the keeper's pass after the pause
        asyncio.run(a.registry.sync())
        assert not [w for w in a.state.warnings if "cannot be recorded" in w]
        assert registry_paths(mp) == []
    finally:
        a.close()
