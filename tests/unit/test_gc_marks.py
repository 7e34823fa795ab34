"""Which creates mark their directories used for gc (volumes/trashcheck.py), through the start
guard on real directories: a create whose binds the registry holds leaves the mark out once
every host's gc reads the registry, and gc's last judgement keeps its directory all the same,
in either order of the two; any other create, and any walk no claim came before, marks."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.unit.aged import CUTOFF, OLD, make_dir, still_unused
from tests.unit.factories import make_state
from tests.unit.guard_requests import create

from volagent.guard.plugin import Guard
from volagent.ops.gc import survey as gcsurvey
from volagent.ops.gc import trashing, tree
from volagent.rack.registry_task import Registry
from volagent.state import AgentState
from volagent.volumes.preparer import ContainerSpec, Preparer
from volagent.worker import TimedWorker

# the preparer makes no parent here, but judges directories another user may own
pytestmark = pytest.mark.root

LABELS = {"convox.app": "a", "convox.service": "web", "volagent.owner": "33:33"}
WHO = {"host": "host-b", "user": "root", "pid": 1}


@pytest.fixture
def worker() -> Iterator[TimedWorker]:
    w = TimedWorker("test-marks", max_threads=2)
    yield w
    w.close()


@pytest.fixture
def guard(mp: Path, worker: TimedWorker) -> Iterator[Guard]:
    st = make_state(mp, host="host-a", guard={"enabled": True})
    st.note_heartbeat(time.time(), st.config.health.forget_after_s)  # as the heartbeat does
    registry = Registry(st)
    yield Guard(st, Preparer(st, worker, registry=registry))
    registry.worker.close()


def every_gc_reads_the_registry(st: AgentState) -> None:
    """What the heartbeat task judges from a rack view of 0.5 hosts alone."""
    st.gc_reads_registry_in = st.mount_epoch


def marked(mp: Path) -> bool:
    return os.stat(mp / "r1-a").st_mtime >= CUTOFF or os.stat(mp / "r1-a/web").st_mtime >= CUTOFF


def whole(mp: Path) -> gcsurvey.Candidate:
    return gcsurvey.Candidate("r1-a", None, str(mp / "r1-a"), None, "", OLD)


def test_a_create_the_registry_holds_is_not_marked_and_gc_keeps_it(
    mp: Path, root: int, guard: Guard
) -> None:
    make_dir(mp, "r1-a/web/data")
    every_gc_reads_the_registry(guard.state)
    assert create(guard, f"{mp}/r1-a/web/data:/data")["Allow"] is True
    assert not marked(mp), "no write round trip for gc"
    # gc after the create: its last judgement reads the create's entry
    assert not still_unused(mp, root, whole(mp))


def test_gc_first_then_the_create_meets_its_claim(mp: Path, root: int, guard: Guard) -> None:
    """The other order: gc claims the trash entry, then a create comes before its last
    judgement. The create is refused by the trash check after its claim, and the claim's
    entry keeps the directory (as a mark did before)."""
    make_dir(mp, "r1-a/web/data")
    every_gc_reads_the_registry(guard.state)
    answers = []

    def judge() -> bool:
        answers.append(create(guard, f"{mp}/r1-a/web/data:/data"))
        return still_unused(mp, root, whole(mp))

    moved = trashing.move(root, whole(mp), tree.Progress(), still_unused=judge, reason="t", who=WHO)
    [answer] = answers
    assert answer["Allow"] is False and "trash" in answer["Msg"]
    assert moved.outcome == trashing.Outcome.KEPT
    assert (mp / "r1-a/web/data").is_dir()
    assert not marked(mp)


def test_a_create_marks_while_a_host_may_run_an_older_gc(mp: Path, guard: Guard) -> None:
    make_dir(mp, "r1-a/web/data")
    assert guard.state.gc_reads_registry_in is None  # a host of 0.4 beat lately, or unknown
    assert create(guard, f"{mp}/r1-a/web/data:/data")["Allow"] is True
    assert marked(mp)


def test_a_walk_no_claim_came_before_marks_whatever_the_rack(mp: Path, guard: Guard) -> None:
    """The Docker watch prepares containers the guard never saw (created while it was
    off): no entry holds their binds until the keeper's next pass."""
    import asyncio

    make_dir(mp, "r1-a/web/data")
    every_gc_reads_the_registry(guard.state)
    spec = ContainerSpec.from_inspect(
        {
            "Id": "c1",
            "Name": "/c1",
            "Config": {"Labels": LABELS, "Env": [], "User": ""},
            "HostConfig": {"Binds": [f"{mp}/r1-a/web/data:/data"]},
            "State": {"Running": False, "StartedAt": "0001-01-01T00:00:00Z"},
        }
    )
    asyncio.run(guard.preparer.prepare(spec))
    assert marked(mp)


def test_a_create_after_the_mount_changed_marks(mp: Path, guard: Guard) -> None:
    """A mount lost and found again between the rack view and the create: another
    filesystem may be mounted, with other hosts, until the rack is judged on this one."""
    make_dir(mp, "r1-a/web/data")
    every_gc_reads_the_registry(guard.state)
    guard.state.mount_epoch += 1
    assert create(guard, f"{mp}/r1-a/web/data:/data")["Allow"] is True
    assert marked(mp)
