"""A create opens what exists of its paths while its claim's transaction in the registry is
under way, once the claim holds the namespace's lock (volumes/trashcheck.py `open_ahead`),
and the walk after the claim takes those descriptors: nothing is opened while the claim waits
for the lock, nothing is marked, looked up in the trash or made before the claim's outcome,
and the rest is as without the look ahead. The claim answers once its entries are in place,
its unlock finishing behind the answer. Through the start guard on real directories, the
lock held by another process where a claim must wait for it, and the transaction held under
the lock (`paused_transaction`: its round trips slow) where something must happen during it."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from tests.unit.aged import FORGET, make_dir, still_unused
from tests.unit.factories import directory_timeout, make_state, volumes_of
from tests.unit.guard_requests import LABELS, create, create_body, plugin_body
from tests.unit.test_registry import hold, let_go

from volagent import safedir
from volagent.errors import MountUnhealthy
from volagent.guard.plugin import Guard
from volagent.httpserver import Request
from volagent.ops.gc import survey as gcsurvey
from volagent.ops.gc import trashing, tree
from volagent.rack import registry, registry_claim
from volagent.rack.registry import Entry
from volagent.rack.registry_task import Registry
from volagent.values import Owner
from volagent.vocabulary import MountState
from volagent.volumes import trashcheck
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


def opening(monkeypatch: pytest.MonkeyPatch, *names: str) -> tuple[threading.Event, list[str]]:
    """Set once a directory of one of `names` has been opened below its parent; and every
    name opened, in order."""
    seen = threading.Event()
    opened: list[str] = []
    open_below = safedir.open_below

    def watched(parent: int, name: str) -> int:
        fd = open_below(parent, name)
        opened.append(name)
        if name in names:
            seen.set()
        return fd

    monkeypatch.setattr(safedir, "open_below", watched)
    return seen, opened


class Paused:
    """A claim's transaction that, once it holds the lock, waits for `go` before it reads the
    entries (its round trips slow): `under_way` once it is there."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.under_way = threading.Event()


def paused_transaction(monkeypatch: pytest.MonkeyPatch) -> Paused:
    paused = Paused()
    decide = registry_claim._decide

    def slow(*args: Any, **kwargs: Any) -> Any:
        paused.under_way.set()
        paused.go.wait(WAIT_S)
        return decide(*args, **kwargs)

    monkeypatch.setattr(registry_claim, "_decide", slow)
    return paused


def hold_the_lock(held: list[Any], mp: Path) -> None:
    """Another process (another host, as far as fcntl locks go) is in a transaction."""
    (mp / ".volagent/registry").mkdir(parents=True, exist_ok=True)
    hold(held, mp / ".volagent/registry/r1-a.lock")


def registered(mp: Path) -> list[tuple[str, str]]:
    path = mp / ".volagent/registry/r1-a.json"
    if not path.exists():
        return []
    return sorted((e["host"], e["path"]) for e in json.loads(path.read_text())["entries"])


def test_the_walk_opens_its_path_while_the_claims_transaction_is_under_way(
    mp: Path, guard: Guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the overlap saves: the walk's opens (a round trip each on NFS) go on beside the
    claim's transaction instead of after it."""
    make_dir(mp, "r1-a/web/data")
    leaf_opened, _ = opening(monkeypatch, "data")
    tx = paused_transaction(monkeypatch)
    t, answers = in_background(lambda: create(guard, f"{mp}/r1-a/web/data:/data"))
    assert leaf_opened.wait(WAIT_S), "the walk waited for the claim before opening anything"
    assert tx.under_way.wait(WAIT_S) and registered(mp) == []  # the claim has not written
    tx.go.set()
    t.join(WAIT_S)
    assert answers[0]["Allow"] is True, answers
    assert registered(mp) == [("host-a", "r1-a/web/data")]


def test_a_bind_above_the_path_that_changed_it_and_went_while_the_claim_waited_is_seen(
    mp: Path, guard: Guard, held: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule 4. A container of app a on another host binds r1-a/web; while this host's create
    of r1-a/web/data waits for the namespace's lock (that host's transaction), it swaps data
    for a symlink into app b's namespace and is removed, its entry with it, so the claim
    finds nothing in its way. Opened before the lock (0.6), the path was judged as it was
    before the swap, the create allowed, and on the kernel's NFS client the start that only
    looks (0.7) would not have seen it either. Opened once the lock is held, it is seen."""
    make_dir(mp, "r1-a/web/data")
    make_dir(mp, "r1-b/web/secret")
    _, opened = opening(monkeypatch, "data")
    hold_the_lock(held, mp)
    t, answers = in_background(lambda: create(guard, f"{mp}/r1-a/web/data:/data"))
    time.sleep(0.3)  # the claim polls the lock held elsewhere
    assert "data" not in opened, "opened ahead while the claim waited for the lock"
    (mp / "r1-a/web/data").rename(mp / "r1-a/web/old")
    (mp / "r1-a/web/data").symlink_to(mp / "r1-b/web")
    let_go(held)
    t.join(WAIT_S)
    assert answers[0]["Allow"] is False and "symlink" in answers[0]["Msg"], answers
    assert sorted(os.listdir(mp / "r1-b/web")) == ["secret"]


def test_nothing_is_made_before_the_claim_has_registered_the_bind(
    mp: Path, guard: Guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dir(mp, "r1-a/web")
    looked, _ = opening(monkeypatch, "web")
    tx = paused_transaction(monkeypatch)
    t, answers = in_background(lambda: create(guard, f"{mp}/r1-a/web/new:/data"))
    assert looked.wait(WAIT_S)
    time.sleep(0.2)  # a walk that did not wait would have made it by now
    assert not (mp / "r1-a/web/new").exists()
    tx.go.set()
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
    # the claim's thread gives up at 80% of it, well before its caller would call it hung
    with directory_timeout(guard.state, 2.0):
        answer = create(guard, f"{mp}/r1-a/web/new:/data")
    assert answer["Allow"] is False and "registry" in answer["Msg"], answer
    assert "not answering" not in answer["Msg"]
    assert not (mp / "r1-a/web/new").exists()


def test_a_create_the_claim_refuses_gets_none_of_its_directories_made(
    mp: Path, guard: Guard
) -> None:
    """Rule 7 across hosts: another host binds r1-a/web/data. A create of a directory
    inside it and of a new one beside it is refused as a whole, as before the looks ahead:
    neither is made nor marked, no walk is counted and no line is logged but the refusal's
    (the looks ahead opened what exists of both paths meanwhile, and that is all)."""
    make_dir(mp, "r1-a/web/data")
    walks = guard.state.metrics.directory_walks
    before_walks = walks._value.get()
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
    with capture_logs() as logs:
        answer = create(guard, f"{mp}/r1-a/web/beside:/b", f"{mp}/r1-a/web/data/inside:/i")
    assert answer["Allow"] is False and "host-b" in answer["Msg"], answer
    assert walks._value.get() == before_walks  # the looks ahead are no walks
    assert not [line for line in logs if line.get("event") == "namespace_violation"], logs
    assert not (mp / "r1-a/web/beside").exists()
    assert not (mp / "r1-a/web/data/inside").exists()
    assert os.stat(mp / "r1-a/web").st_mtime == before  # nor marked
    assert registered(mp) == [("host-b", "r1-a/web/data")]


def test_gc_moving_the_namespace_while_the_walk_looks_ahead_refuses_the_create(
    mp: Path, root: int, guard: Guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc writes its trash record and judges the namespace unused a last time (no entry yet,
    nothing recent) just before the claim takes the lock; the look ahead opens
    r1-a/web/data, and gc then moves the namespace into the trash. The claim registers the
    bind, and the walk's look in the trash, which comes after it, refuses the create:
    nothing is made at the old path, the descriptors it opened notwithstanding."""
    make_dir(mp, "r1-a/web/data", data=b"wordpress")
    looked, _ = opening(monkeypatch, "data")
    tx = paused_transaction(monkeypatch)
    whole = gcsurvey.Candidate("r1-a", None, str(mp / "r1-a"), None, "", 0.0)
    judged = threading.Event()

    def last_judgement() -> bool:
        unused = still_unused(mp, root, whole)  # under the registry's lock, released after
        judged.set()
        assert looked.wait(WAIT_S)  # the claim holds the lock; its look ahead opened the leaf
        return unused

    moved: list[trashing.Moved] = []
    gc = threading.Thread(
        target=lambda: moved.append(
            trashing.move(
                root, whole, tree.Progress(), still_unused=last_judgement, reason="t", who=WHO
            )
        ),
        daemon=True,
    )
    gc.start()
    assert judged.wait(WAIT_S)
    t, answers = in_background(lambda: create(guard, f"{mp}/r1-a/web/data:/data"))
    gc.join(WAIT_S)
    assert moved and moved[0].outcome == trashing.Outcome.MOVED, moved
    tx.go.set()
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
        # answered while the unlock cannot have finished (it waits for `go`)
        assert slow.unlocking.wait(WAIT_S) and not slow.go.is_set()
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


async def ask(g: Guard, *binds: str, name: str, app: str = "a") -> dict[str, Any]:
    """A create sent to the guard on the test's own loop."""
    labels = {**LABELS, "convox.app": app}
    uri = f"/v1.41/containers/create?name={name}"
    body = plugin_body("POST", uri, create_body(*binds, labels=labels))
    resp = await g.handle(Request("POST", "/AuthZPlugin.AuthZReq", {}, {}, body, peer_uid=0))
    doc = json.loads(resp.body)
    assert isinstance(doc, dict)
    return doc


async def until(done: Callable[[], bool]) -> None:
    """Lets the test's loop run until `done`."""
    for _ in range(500):
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("what the test waits for did not happen")


async def asked_while_the_claim_is_under_way(
    mp: Path,
    guard: Guard,
    monkeypatch: pytest.MonkeyPatch,
    meanwhile: Callable[[], None],
) -> tuple[dict[str, Any], list[str]]:
    """A create of r1-a/web/new while its claim's transaction is under way: `meanwhile` once
    its look ahead has opened r1-a/web, then the transaction goes on. Its answer, and every
    name opened below a parent."""
    make_dir(mp, "r1-a/web")
    looked, opened = opening(monkeypatch, "web")
    tx = paused_transaction(monkeypatch)
    pending = asyncio.ensure_future(ask(guard, f"{mp}/r1-a/web/new:/d", name="w"))
    await until(looked.is_set)
    await asyncio.sleep(0.1)
    meanwhile()
    tx.go.set()
    return await asyncio.wait_for(pending, WAIT_S), opened


async def test_a_registry_lock_held_for_one_app_keeps_no_walk_of_another_waiting(
    mp: Path, guard: Guard, held: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another host died holding r1-a's lock (until its lease expires). Creates of app a wait
    for their claims, and open nothing ahead meanwhile, so they hold no thread of the walk's
    worker (two, in this test): app b's create is answered while they wait."""
    make_dir(mp, "r1-a/web")
    make_dir(mp, "r1-b/web")
    _, opened = opening(monkeypatch, "web")
    hold_the_lock(held, mp)
    with directory_timeout(guard.state, 2 * WAIT_S):  # app a's claims wait until let go
        stuck = [
            asyncio.ensure_future(ask(guard, f"{mp}/r1-a/web/n{i}:/d", name=f"a{i}"))
            for i in range(2)
        ]
        await asyncio.sleep(0.3)  # app a's claims are polling the lock held elsewhere
        assert "web" not in opened, "opened ahead while the claims waited for the lock"
        answer = await asyncio.wait_for(
            ask(guard, f"{mp}/r1-b/web/data:/d", name="b1", app="b"), WAIT_S
        )
        assert not any(t.done() for t in stuck), "app a's claims did not wait for the lock"
        assert answer["Allow"] is True, answer
        let_go(held)
        assert all(a["Allow"] for a in await asyncio.gather(*stuck))


async def test_a_mount_that_goes_unhealthy_during_the_claim_gets_nothing_made(
    mp: Path, guard: Guard, held: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`when_unhealthy = "deny"`: the mount stalls while the claim's transaction is under way. Its
    health is judged once the claim has ended, as before the looks ahead: the create is
    refused as unhealthy, and nothing is made through what was opened ahead (rule 3)."""

    def stalled() -> None:
        guard.state.set_mount_state(MountState.STALLED, "the probe did not answer")

    answer, _ = await asked_while_the_claim_is_under_way(mp, guard, monkeypatch, stalled)
    assert answer["Allow"] is False, answer
    assert not (mp / "r1-a/web/new").exists()


async def test_a_mount_made_again_during_the_claim_is_walked_afresh(
    mp: Path, guard: Guard, held: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mount went and came back (a new epoch) during the claim: what was opened
    ahead is of the mount before, so the walk opens the path itself."""

    def remounted() -> None:
        guard.state.mount_epoch += 1

    answer, opened = await asked_while_the_claim_is_under_way(mp, guard, monkeypatch, remounted)
    assert answer["Allow"] is True, answer
    assert opened.count("web") == 2  # once ahead, once by the walk
    assert (mp / "r1-a/web/new").is_dir()


def open_below(mp: Path) -> list[str]:
    """This process's descriptors of directories below `mp`, volagent's own files aside."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(mp)) and "/.volagent" not in target:
                found.append(target)
    return found


def test_nothing_opened_ahead_is_left_open(mp: Path, guard: Guard, held: list[Any]) -> None:
    """Allowed, refused by the registry, or refused for a violation: every descriptor the
    looks ahead opened is closed or taken by a walk, which closes it."""
    make_dir(mp, "r1-a/web/data")
    assert create(guard, f"{mp}/r1-a/web/data:/d", f"{mp}/r1-a/web/two:/t")["Allow"] is True
    registry_claim.claim(
        str(mp),
        os.stat(mp).st_dev,
        "r1-a",
        host="host-b",
        wanted=[Entry("host-b", "c9", "web-9", "r1-a/web/other", time.time())],
        expire_after_s=FORGET,
        deadline=time.monotonic() + WAIT_S,
    )
    answer = create(guard, f"{mp}/r1-a/web/other/in:/i", f"{mp}/r1-a/web/data:/d", name="w2")
    assert answer["Allow"] is False
    hold_the_lock(held, mp)
    with directory_timeout(guard.state, 0.3):
        # a path this host holds no entry of: the claim waits for the lock
        assert create(guard, f"{mp}/r1-a/web/third:/d", name="w3")["Allow"] is False
    let_go(held)
    # a look ahead that ended after its create closes what it opened as it ends: every job
    # queued before these has ended once they have
    worker = guard.preparer.worker
    for done in [worker.submit(lambda: None) for _ in range(worker.max_threads)]:
        done.result(WAIT_S)
    assert open_below(mp) == []


def test_a_path_opened_ahead_on_another_filesystem_is_not_walked(mp: Path) -> None:
    """Rule 3: what was opened ahead on one filesystem never stands for the walk of another
    (the expected device changed meanwhile): the walk opens the mount point afresh, which is
    refused, and nothing is made."""
    make_dir(mp, "r1-a/web")
    parts = ("r1-a", "web", "new")
    ahead = trashcheck.open_ahead(str(mp), parts, None)
    elsewhere = os.stat(mp).st_dev + 1
    with pytest.raises(MountUnhealthy):
        trashcheck.prepare_path(
            str(mp), parts, Owner(33, 33), 0o750, elsewhere, mark=False, ahead=ahead
        )
    assert not (mp / "r1-a/web/new").exists()


@pytest.fixture
def tmpfs_at(mp: Path) -> Iterator[Path]:
    """`mp` is a mount of its own (a tmpfs standing in for EFS)."""
    subprocess.run(["mount", "-t", "tmpfs", "review9", str(mp)], check=True)
    try:
        yield mp
    finally:
        subprocess.run(["umount", "-l", str(mp)], check=False, capture_output=True)


def test_a_mount_gone_after_the_look_ahead_gets_nothing_made_through_it(
    tmpfs_at: Path, guard: Guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule 3. The shared filesystem is unmounted (lazily: the claim's and the look ahead's
    descriptors keep it alive) after the look ahead opened the path, while the claim's
    transaction goes on; the supervisor has not seen it yet, so the epoch is unchanged, and
    /volumes is local disk now. A walk that took the look ahead's descriptors would make the
    directory on the detached filesystem and let the create through (a review found this of
    0.6): the walk sees the mount point is no longer that root, opens it afresh, and is
    refused."""
    mp = tmpfs_at
    guard.state.mount_dev = os.stat(mp).st_dev  # the tmpfs is the shared filesystem
    make_dir(mp, "r1-a/web")
    looked, _ = opening(monkeypatch, "web")
    tx = paused_transaction(monkeypatch)
    detached = os.open(mp, os.O_RDONLY | os.O_DIRECTORY)
    try:
        t, answers = in_background(lambda: create(guard, f"{mp}/r1-a/web/new:/data"))
        assert looked.wait(WAIT_S) and tx.under_way.wait(WAIT_S)
        subprocess.run(["umount", "-l", str(mp)], check=True)
        assert os.stat(mp).st_dev != guard.state.mount_dev  # local disk at the mount point
        tx.go.set()
        t.join(WAIT_S)
        made = os.path.isdir(os.path.join(f"/proc/self/fd/{detached}", "r1-a/web/new"))
        assert not made, "a directory was made on a filesystem no longer at the mount point"
        assert answers[0]["Allow"] is False, answers
    finally:
        os.close(detached)


async def test_looks_ahead_of_creates_already_refused_do_not_delay_later_walks(
    mp: Path, guard: Guard, held: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk's two threads are held a moment (walks slowed by the server). Meanwhile
    sixteen creates of app a are refused: their claims could not get r1-a's lock in time.
    Nothing of their paths is opened once the threads are free, so app b's create, asked
    after all of them were answered, has its walk run at once. (A review of 0.6 found their
    looks ahead, then asked before the lock, queued behind the held walks and never
    dropped: app b's walk waited behind them past its timeout. Since 0.7 a look ahead is
    asked only once the lock is taken.)"""
    from tests.unit.factories import directory_timeout

    make_dir(mp, "r1-a/web")
    make_dir(mp, "r1-b/web")
    # the namespaces' owners read once (they are kept): not what this test is about
    assert (await ask(guard, f"{mp}/r1-a/web/warm:/d", name="w"))["Allow"] is True
    assert (await ask(guard, f"{mp}/r1-b/web/warm:/d", name="w", app="b"))["Allow"] is True
    gate = threading.Event()
    worker = guard.preparer.worker
    busy = [worker.submit(lambda: gate.wait(WAIT_S)) for _ in range(2)]
    late: list[str] = []
    real = safedir.open_below

    def round_trip(parent: int, name: str) -> int:
        time.sleep(0.05)  # an NFS round trip to a server that is slow to answer
        if refused and name.startswith("n"):
            late.append(name)
        return real(parent, name)

    monkeypatch.setattr(safedir, "open_below", round_trip)
    hold_the_lock(held, mp)
    refused: list[bool] = []
    with directory_timeout(guard.state, 1.0):
        answers = await asyncio.gather(
            *(ask(guard, f"{mp}/r1-a/n{i}/d:/d", name=f"a{i}") for i in range(16))
        )
    assert all(a["Allow"] is False and "registry" in a["Msg"] for a in answers), answers
    refused.append(True)
    gate.set()
    answer = await ask(guard, f"{mp}/r1-b/web/data:/d", name="b1", app="b")
    for f in busy:
        f.result(WAIT_S)
    assert answer["Allow"] is True, answer
    assert late == [], "paths of creates already refused were opened"


def test_a_path_opened_ahead_is_closed_whatever_stops_the_walk(
    mp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dir(mp, "r1-a/web")
    parts = ("r1-a", "web", "new")
    ahead = trashcheck.open_ahead(str(mp), parts, None)

    def no_memory(*args: Any, **kwargs: Any) -> os.stat_result:
        raise MemoryError

    monkeypatch.setattr(trashcheck.os, "stat", no_memory)
    with pytest.raises(MemoryError):
        trashcheck.prepare_path(str(mp), parts, Owner(33, 33), 0o750, None, ahead=ahead)
    monkeypatch.undo()
    assert open_below(mp) == []


def test_a_starts_look_counts_from_when_the_path_was_opened_ahead(
    mp: Path, guard: Guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start only looks within LOOK_WITHIN_S of when the create's walk fetched the path's
    directories (volumes/preparer.py): with a look ahead, that is when the look ahead was
    asked, during the claim, not when the walk after the claim began."""
    make_dir(mp, "r1-a/web/data")
    leaf_opened, _ = opening(monkeypatch, "data")
    tx = paused_transaction(monkeypatch)
    t, answers = in_background(lambda: create(guard, f"{mp}/r1-a/web/data:/data"))
    assert leaf_opened.wait(WAIT_S)
    went_on_at = time.monotonic()
    tx.go.set()
    t.join(WAIT_S)
    assert answers[0]["Allow"] is True, answers
    walked = guard.preparer._walked[f"{mp}/r1-a/web/data"]
    assert walked.began < went_on_at, "counted from the walk after the claim"


class _SlowLock:
    """fcntl as the registry uses it, with a LOCK that answers only after `delay_s` (an NFS
    server slow to grant it)."""

    LOCK_EX, LOCK_NB, LOCK_UN = fcntl.LOCK_EX, fcntl.LOCK_NB, fcntl.LOCK_UN

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def lockf(self, fd: int, op: int, *args: Any) -> Any:
        if op & fcntl.LOCK_EX:
            time.sleep(self.delay_s)
        return fcntl.lockf(fd, op, *args)


@pytest.mark.parametrize("ends", ["given up", "cancelled"])
async def test_a_lock_granted_after_the_create_was_decided_opens_nothing_ahead(
    mp: Path, guard: Guard, monkeypatch: pytest.MonkeyPatch, ends: str
) -> None:
    """The claim's thread gets the lock only after its caller gave up (its deadline passed),
    or after the create's request went away (the decision cancelled): nothing is opened
    ahead for a walk that will never come, and nobody would close it."""
    make_dir(mp, "r1-a/web/data")
    assert (await ask(guard, f"{mp}/r1-a/web/warm:/w", name="w"))["Allow"] is True
    _, opened = opening(monkeypatch, "data")
    monkeypatch.setattr(registry, "fcntl", _SlowLock(1.0))
    with directory_timeout(guard.state, 0.5):  # the thread's deadline: 0.4 s
        asked = asyncio.ensure_future(ask(guard, f"{mp}/r1-a/web/data:/data", name="d"))
        if ends == "cancelled":
            await asyncio.sleep(0.2)
            asked.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asked
        else:
            answer = await asked
            assert answer["Allow"] is False and "registry" in answer["Msg"], answer
    await asyncio.sleep(1.2)  # the registry's thread got its lock late and went on
    worker = guard.preparer.worker
    for done in [worker.submit(lambda: None) for _ in range(worker.max_threads)]:
        done.result(WAIT_S)
    assert "data" not in opened
    assert open_below(mp) == []


async def test_a_lock_granted_after_a_cancel_but_before_the_deadline_opens_nothing(
    mp: Path, guard: Guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The create's request goes away (its connection closed: the decision cancelled) while
    its claim waits for a lock that comes well before the claim's deadline: the claim's
    thread goes on under the lock, and nothing is opened ahead for the walk that will never
    come."""
    make_dir(mp, "r1-a/web/data")
    assert (await ask(guard, f"{mp}/r1-a/web/warm:/w", name="w"))["Allow"] is True
    _, opened = opening(monkeypatch, "data")
    monkeypatch.setattr(registry, "fcntl", _SlowLock(0.6))
    with directory_timeout(guard.state, 5.0):  # the thread's deadline 4 s, its lock at 0.6 s
        asked = asyncio.ensure_future(ask(guard, f"{mp}/r1-a/web/data:/data", name="d"))
        await asyncio.sleep(0.2)
        asked.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asked
        await asyncio.sleep(1.2)  # the thread took the lock and went on
    worker = guard.preparer.worker
    for done in [worker.submit(lambda: None) for _ in range(worker.max_threads)]:
        done.result(WAIT_S)
    assert "data" not in opened
    assert open_below(mp) == []
