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
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.unit.aged import CUTOFF, make_dir
from tests.unit.factories import make_state
from tests.unit.guard_requests import create

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


def gc_delete(mp: Path) -> list[trashing.Outcome]:
    """`volagent gc --delete` on another host: the survey, then each move."""
    root = os.open(mp, os.O_RDONLY | os.O_DIRECTORY)
    try:
        s = gcsurvey.survey(
            root, str(mp), cutoff=CUTOFF, local=set(), stale_after_s=90,
            expire_after_s=900, progress=tree.Progress(),
        )  # fmt: skip
        outcomes = []
        for c in s.candidates:

            def judge(c: gcsurvey.Candidate = c) -> bool:
                return gcsurvey.still_unused(
                    root, c, CUTOFF, set(), mount_point=str(mp), expire_after_s=900
                )

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
    c = registry_claim.claim(
        str(mp), dev, "r1-a", host="host-c",
        wanted=[
            Entry("host-c", "c9", "", "r1-a/web", time.time()),
            Entry("host-c", "c9", "", "r1-a/api/x", time.time()),
        ],
        expire_after_s=900, deadline=time.monotonic() + 10,
    )  # fmt: skip
    assert c.clashes and c.expired == ["host-b"]  # refused (rule 7); host-b's entry dropped
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
    root = os.open(mp, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert registry.read_locked(root, str(mp), "r1-a", time.monotonic() + 5) == []
    finally:
        os.close(root)


def test_gc_waiting_for_a_registry_lock_held_elsewhere_says_so(
    mp: Path, monkeypatch: pytest.MonkeyPatch
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
    root = os.open(mp, os.O_RDONLY | os.O_DIRECTORY)
    [c] = gcsurvey.survey(
        root, str(mp), cutoff=CUTOFF, local=set(), stale_after_s=90,
        expire_after_s=900, progress=tree.Progress(),
    ).candidates  # fmt: skip
    # another process (another host, as far as locks go) holds it
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        monkeypatch.setattr(registered, "LOCK_WAIT_S", 0.5)

        def judge() -> bool:
            return gcsurvey.still_unused(
                root, c, CUTOFF, set(), mount_point=str(mp), expire_after_s=900
            )

        with pytest.raises(RegistryError, match="stayed locked"):
            command.guarded(
                lambda p: trashing.move(root, c, p, still_unused=judge, reason="t", who=WHO),
                "moving", stall_s=2.0,
            )  # fmt: skip
    finally:
        holder.kill()
        holder.communicate()
        os.close(root)
    assert (mp / "r1-a/web/data").is_dir()
    assert list((mp / ".volagent/trash").iterdir()) == [], "the claim went again"


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""
