"""A create's walk goes ahead while its claim in the registry is under way (volumes/trashcheck.py):
the walk opens what exists of its path meanwhile, and marks, looks in the trash or creates
nothing before the claim's outcome; the claim answers once its entries are in place, its
unlock finishing behind the answer. Through the start guard on real directories, the lock
held by another process where a claim must wait for it."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.unit.aged import FORGET, make_dir, still_unused
from tests.unit.factories import directory_timeout, make_state, volumes_of
from tests.unit.guard_requests import create
from tests.unit.test_registry import hold, let_go

from volagent import safedir
from volagent.guard.plugin import Guard
from volagent.ops.gc import survey as gcsurvey
from volagent.ops.gc import trashing, tree
from volagent.rack import registry, registry_claim
from volagent.rack.registry import Entry
from volagent.rack.registry_task import Registry
from volagent.volumes import preparer
from volagent.volumes.preparer import Preparer
from volagent.worker import TimedWorker

# the preparer judges directories another user may own
pytestmark = pytest.mark.root

WHO = {"host": "host-b", "user": "root", "pid": 1}
WAIT_S = 10.0  # for what the code under test does at once: generous on a loaded machine


@pytest.fixture
def guard(mp: Path) -> Iterator[Guard]:
    st = make_state(mp, host="host-a", guard={"enabled": True})
    st.note_heartbeat(time.time(), st.config.health.forget_after_s)  # as the heartbeat does
    st.gc_reads_registry_in = st.mount_epoch  # a rack of 0.5 hosts and later
    worker = TimedWorker("test-overlap", max_threads=2)
    reg = Registry(st)
    yield Guard(st, Preparer(st, worker, registry=reg))
    reg.worker.close()
    worker.close()


@pytest.fixture
def held() -> Iterator[list[Any]]:
    holders: list[Any] = []
    yield holders
    let_go(holders)


def in_background(call: Callable[[], dict[str, Any]]) -> tuple[threading.Thread, list[Any]]:
    answers: list[Any] = []
    t = threading.Thread(target=lambda: answers.append(call()), daemon=True)
    t.start()
    return t, answers


def at_the_claims_outcome(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set when a walk has opened what exists of its path and waits for the claim."""
    reached = threading.Event()
    wait = preparer.ClaimGate.__call__

    def waiting(gate: preparer.ClaimGate) -> bool:
        reached.set()
        return wait(gate)

    monkeypatch.setattr(preparer.ClaimGate, "__call__", waiting)
    return reached


def hold_the_lock(held: list[Any], mp: Path) -> None:
    """Another process (another host, as far as fcntl locks go) is in a transaction."""
    (mp / ".volagent/registry").mkdir(parents=True, exist_ok=True)
    hold(held, mp / ".volagent/registry/r1-a.lock")


def registered(mp: Path) -> list[tuple[str, str]]:
    path = mp / ".volagent/registry/r1-a.json"
    if not path.exists():
        return []
    return sorted((e["host"], e["path"]) for e in json.loads(path.read_text())["entries"])


def test_the_walk_opens_its_path_while_the_claim_waits_for_the_lock(
    mp: Path, guard: Guard, held: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the overlap saves: the walk's opens (a round trip each on NFS) go on beside the
    claim's transaction instead of after it."""
    make_dir(mp, "r1-a/web/data")
    leaf_opened = threading.Event()
    open_below = safedir.open_below

    def watched(parent: int, name: str) -> int:
        fd = open_below(parent, name)
        if name == "data":
            leaf_opened.set()
        return fd

    monkeypatch.setattr(safedir, "open_below", watched)
    hold_the_lock(held, mp)
    t, answers = in_background(lambda: create(guard, f"{mp}/r1-a/web/data:/data"))
    assert leaf_opened.wait(WAIT_S), "the walk waited for the claim before opening anything"
    assert registered(mp) == []  # the claim had not got the lock yet
    let_go(held)
    t.join(WAIT_S)
    assert answers[0]["Allow"] is True, answers
    assert registered(mp) == [("host-a", "r1-a/web/data")]


def test_nothing_is_made_before_the_claim_has_registered_the_bind(
    mp: Path, guard: Guard, held: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dir(mp, "r1-a/web")
    waiting = at_the_claims_outcome(monkeypatch)
    hold_the_lock(held, mp)
    t, answers = in_background(lambda: create(guard, f"{mp}/r1-a/web/new:/data"))
    assert waiting.wait(WAIT_S)
    time.sleep(0.2)  # a walk that did not wait would have made it by now
    assert not (mp / "r1-a/web/new").exists()
    let_go(held)
    t.join(WAIT_S)
    assert answers[0]["Allow"] is True, answers
    st = os.stat(mp / "r1-a/web/new")
    assert (st.st_uid, st.st_gid) == (33, 33)


def test_a_claim_that_cannot_get_the_lock_refuses_the_create_and_makes_nothing(
    mp: Path, guard: Guard, held: list[Any]
) -> None:
    """Another host died holding the namespace's lock (its lease not expired yet): the
    claim fails by its deadline, and the walk that went ahead is abandoned with it: the
    create is refused for the registry, not as a hung filesystem, and nothing is made."""
    make_dir(mp, "r1-a/web")
    hold_the_lock(held, mp)
    with directory_timeout(guard.state, 0.5):
        answer = create(guard, f"{mp}/r1-a/web/new:/data")
    assert answer["Allow"] is False and "registry" in answer["Msg"], answer
    assert "not answering" not in answer["Msg"]
    assert not (mp / "r1-a/web/new").exists()


def test_a_create_the_claim_refuses_gets_none_of_its_directories_made(
    mp: Path, guard: Guard
) -> None:
    """Rule 7 across hosts: another host binds r1-a/web/data. A create of a directory
    inside it and of a new one beside it is refused; the walks that went ahead make neither
    (the bind beside was fine on its own, but the create is refused as a whole)."""
    make_dir(mp, "r1-a/web/data")
    registry_claim.claim(
        str(mp),
        os.stat(mp).st_dev,
        "r1-a",
        host="host-b",
        wanted=[Entry("host-b", "c9", "web-9", "r1-a/web/data", time.time())],
        expire_after_s=FORGET,
        deadline=time.monotonic() + WAIT_S,
    )
    before = os.stat(mp / "r1-a/web").st_mtime
    answer = create(guard, f"{mp}/r1-a/web/beside:/b", f"{mp}/r1-a/web/data/inside:/i")
    assert answer["Allow"] is False and "host-b" in answer["Msg"], answer
    assert not (mp / "r1-a/web/beside").exists()
    assert not (mp / "r1-a/web/data/inside").exists()
    assert os.stat(mp / "r1-a/web").st_mtime == before  # nor marked
    assert registered(mp) == [("host-b", "r1-a/web/data")]


def test_gc_moving_the_namespace_while_the_walk_looks_ahead_refuses_the_create(
    mp: Path, root: int, guard: Guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk has opened r1-a/web/data; before the claim's entry is written, gc judges
    the namespace unused (no entry yet, nothing recent) and moves it into the trash. The
    claim then registers the bind, and the walk's look in the trash, which comes after it,
    refuses the create: nothing is made at the old path, the descriptors it opened
    notwithstanding."""
    make_dir(mp, "r1-a/web/data", data=b"wordpress")
    waiting = at_the_claims_outcome(monkeypatch)
    go = threading.Event()
    claim = registry_claim.claim

    def paused(*args: Any, **kwargs: Any) -> Any:
        go.wait(WAIT_S)
        return claim(*args, **kwargs)

    monkeypatch.setattr(registry_claim, "claim", paused)
    t, answers = in_background(lambda: create(guard, f"{mp}/r1-a/web/data:/data"))
    assert waiting.wait(WAIT_S)
    whole = gcsurvey.Candidate("r1-a", None, str(mp / "r1-a"), None, "", 0.0)
    moved = trashing.move(
        root,
        whole,
        tree.Progress(),
        still_unused=lambda: still_unused(mp, root, whole),
        reason="t",
        who=WHO,
    )
    assert moved.outcome == trashing.Outcome.MOVED, moved
    go.set()
    t.join(WAIT_S)
    assert answers[0]["Allow"] is False and "trash" in answers[0]["Msg"], answers
    assert not (mp / "r1-a").exists()
    [kept] = [p for p in (mp / ".volagent/trash").iterdir() if p.is_dir()]
    assert (kept / "web/data/file").read_bytes() == b"wordpress"


class _UnlockHeld:
    """fcntl as the registry uses it, with an unlock that waits for `go`: a slow LOCKU."""

    LOCK_EX, LOCK_NB, LOCK_UN = fcntl.LOCK_EX, fcntl.LOCK_NB, fcntl.LOCK_UN

    def __init__(self) -> None:
        self.go = threading.Event()
        self.unlocking = threading.Event()

    def lockf(self, fd: int, op: int, *args: Any) -> Any:
        if op == fcntl.LOCK_UN:
            self.unlocking.set()
            self.go.wait(WAIT_S)
        return fcntl.lockf(fd, op, *args)


async def test_a_claim_is_answered_before_its_unlock(
    mp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim's outcome is final once its entries are renamed into place: the caller
    goes on while the unlock travels; the next transaction of the namespace here waits for
    it (fcntl locks belong to the process)."""
    st = make_state(mp, host="host-a")
    st.note_heartbeat(time.time(), st.config.health.forget_after_s)
    slow = _UnlockHeld()
    monkeypatch.setattr(registry, "fcntl", slow)
    reg = Registry(st)
    try:
        first, plans = volumes_of(f"{mp}/r1-a/web/one")
        await asyncio.wait_for(reg.claim(first, plans, "c1", "one"), WAIT_S / 2)
        assert slow.unlocking.is_set() and not slow.go.is_set()
        assert first[0].state != "failed", first[0].error
        assert registered(mp) == [("host-a", "r1-a/web/one")]
        second, plans = volumes_of(f"{mp}/r1-a/web/two")
        after = asyncio.ensure_future(reg.claim(second, plans, "c2", "two"))
        await asyncio.sleep(0.2)
        assert not after.done(), "the next transaction took the lock the first still held"
        slow.go.set()
        await asyncio.wait_for(after, WAIT_S)
        assert second[0].state != "failed", second[0].error
        assert registered(mp) == [("host-a", "r1-a/web/one"), ("host-a", "r1-a/web/two")]
    finally:
        slow.go.set()
        reg.worker.close()
