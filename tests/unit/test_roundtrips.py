"""What the directory walks and the registry's claim ask of the filesystem, counted on a FUSE
stand-in (tests/testbed/counting_fs.py) where every operation the kernel passes on would be a
round trip to the server on NFS. The figures are what they cost when they were last made
leaner: a change that adds an operation fails here, so the count cannot creep back unseen.

The stand-in caches nothing in the kernel (its entry and attribute timeouts are 0), so every
lookup, stat, open, mkdir, chown, chmod and utime of the walk is counted, the same at every
run; `getattr` counts the kernel's lookups of names and its stats alike. The kernel's NFS
client answers some of these from its caches; `make bench-vm` counts what it really sends.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from tests.testbed.counting_fs import ops_of
from tests.testbed.mounts import is_mount_point, umount_lazy
from tests.testbed.waiting import wait_until
from tests.unit.factories import make_state, volumes_of
from tests.unit.guard_requests import create

from volagent.guard.plugin import Guard
from volagent.rack import owners, registry_claim
from volagent.rack.registry import Entry
from volagent.rack.registry_task import Registry
from volagent.values import Owner
from volagent.volumes import preparer as preparer_module
from volagent.volumes import trashcheck
from volagent.volumes.directories import Identity, Prepared
from volagent.volumes.preparer import Allowed, ContainerSpec, Preparer
from volagent.worker import TimedWorker

pytestmark = pytest.mark.mount

OWNER = Owner(1234, 1234)
DAY = 86400.0
EXISTING = ("r1-a", "web", "x", "y", "z")  # three levels below the service's namespace
NEW = ("r1-a", "web", "data")
T = TypeVar("T")


@dataclass
class Counted:
    """The mount point of the counting filesystem, its backing directory, and its log."""

    mount_point: Path
    backing: Path
    log: Path
    dev: int  # the mount's device, known to the walks beforehand (the daemon's mount_dev)

    def ops(self, *, every_thread: bool = False) -> Counter[str]:
        """The operations so far of this process's main thread, where the walks run (of
        every caller: `every_thread`)."""
        return ops_of(self.log.read_text(), None if every_thread else os.getpid())

    def count(self, walk: Callable[[], T]) -> tuple[Counter[str], T]:
        """The operations `walk()` asked of the filesystem, and what it returned."""
        before = self.ops()
        result = walk()
        return self.ops() - before, result


@contextlib.contextmanager
def counting_mount(tmp_path: Path) -> Iterator[tuple[Counted, subprocess.Popen[bytes]]]:
    """The counting FUSE stand-in mounted at `tmp_path`/mp over `tmp_path`/backing, and its
    server's process; unmounted and ended when the block is left."""
    backing = tmp_path / "backing"
    backing.mkdir()
    mount_point = tmp_path / "mp"
    mount_point.mkdir()
    log = tmp_path / "ops.log"
    log.touch()
    argv = ["-m", "tests.testbed.counting_fs", str(backing), str(mount_point), str(log)]
    server = subprocess.Popen([sys.executable, *argv])
    try:
        wait_until(
            lambda: is_mount_point(str(mount_point)) or server.poll() is not None,
            "the counting filesystem",
            timeout=30,
        )
        assert server.poll() is None, "the counting filesystem did not start"
        yield Counted(mount_point, backing, log, os.stat(mount_point).st_dev), server
    finally:
        umount_lazy(str(mount_point))
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def counted(tmp_path: Path) -> Iterator[Counted]:
    with counting_mount(tmp_path) as (c, _):
        yield c


def aged(backing: Path, *rels: str) -> None:
    """The directories `rels` last changed two days ago, as gc sees a namespace on a rack."""
    then = time.time() - 2 * DAY
    for rel in rels:
        os.utime(backing / rel, (then, then))


def create_walk(c: Counted, parts: tuple[str, ...]) -> Prepared:
    return trashcheck.prepare_path(str(c.mount_point), parts, OWNER, 0o750, c.dev)


def start_walk(c: Counted, parts: tuple[str, ...], known: Identity) -> Prepared:
    return trashcheck.prepare_path(str(c.mount_point), parts, OWNER, 0o750, c.dev, known=known)


def test_existing_directory_three_levels_below_the_namespace(counted: Counted) -> None:
    (counted.backing / "/".join(EXISTING)).mkdir(parents=True)
    aged(counted.backing, "r1-a", "r1-a/web")
    ops, got = counted.count(lambda: create_walk(counted, EXISTING))
    assert got.created == 0
    # open and stat each component once; mark the two that gc judges (their mtime is old);
    # the trash check finds no .volagent; nothing is created, chowned or chmodded
    assert ops["utimens"] == 2
    assert ops["mkdir"] == ops["chown"] == ops["chmod"] == 0
    assert ops.total() <= 24, ops  # 37 before the walk opened first
    # the walk at the start only opens and compares: same directories, nothing else asked
    ops, again = counted.count(lambda: start_walk(counted, EXISTING, got.identity))
    assert again == got
    assert ops.total() <= 18, ops  # 37 before it compared with the create walk
    assert set(ops) <= {"getattr", "opendir"}, ops


def test_a_recently_marked_namespace_is_not_touched_again(counted: Counted) -> None:
    (counted.backing / "/".join(EXISTING)).mkdir(parents=True)
    ops, _ = counted.count(lambda: create_walk(counted, EXISTING))
    assert ops["utimens"] == 0, ops
    assert ops.total() <= 20, ops  # 37 before


def test_a_namespace_this_host_recorded_within_the_hour_is_not_touched(counted: Counted) -> None:
    (counted.backing / "/".join(EXISTING)).mkdir(parents=True)
    aged(counted.backing, "r1-a", "r1-a/web")
    ops, _ = counted.count(
        lambda: trashcheck.prepare_path(
            str(counted.mount_point), EXISTING, OWNER, 0o750, counted.dev, recorded_at=time.time()
        )
    )
    assert ops["utimens"] == 0, ops
    assert ops.total() <= 20, ops


def test_new_directory(counted: Counted) -> None:
    (counted.backing / "r1-a").mkdir()
    old = os.umask(0o022)
    try:
        ops, got = counted.count(lambda: create_walk(counted, NEW))
    finally:
        os.umask(old)
    assert (got.created, got.leaf_created) == (2, True)
    # made with their final mode: the parent (root 0755) needs neither chown nor chmod, the
    # leaf one chown
    assert (ops["mkdir"], ops["chown"], ops["chmod"]) == (2, 1, 0), ops
    assert ops.total() <= 23, ops  # 37 before
    ops, again = counted.count(lambda: start_walk(counted, NEW, got.identity))
    assert (again.uid, again.gid, again.mode) == (1234, 1234, 0o750)
    assert ops.total() <= 12, ops  # 29 before


def test_a_start_the_registry_holds_looks_and_opens_nothing(counted: Counted) -> None:
    """The start of a path this host's entries hold (the guard's start after its create): each
    component only looked at (O_PATH), which the kernel's NFS client answers from its caches
    (0 operations in `make bench-vm` against 6 opening each); the stand-in, which caches
    nothing, still counts each look's lookup and stat."""
    (counted.backing / "/".join(EXISTING)).mkdir(parents=True)
    got = create_walk(counted, EXISTING)
    ops, again = counted.count(
        lambda: trashcheck.prepare_path(
            str(counted.mount_point),
            EXISTING,
            OWNER,
            0o750,
            counted.dev,
            known=got.identity,
            held=True,
        )
    )
    assert (again.identity, again.created) == (got.identity, 0)
    assert set(ops) <= {"getattr"}, ops  # no opendir: nothing opened to read
    assert ops.total() <= 12, ops  # 18 opening each (its opendirs)


async def test_a_start_looks_only_where_the_registry_holds_its_path(
    counted: Counted, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The preparer's start walk looks (no open) where this host's entries have held the bind
    without a break since the create walk, as after the guard's create. It opens every
    component when its heartbeats lapsed in between or are lapsing (other hosts may have
    forgotten its entries, and let a bind above the path in meanwhile), when the start comes
    later than LOOK_WITHIN_S after that walk (what the walk fetched may be dropped from the
    caches between the look and Docker's bind), and without the registry."""
    (counted.backing / "/".join(EXISTING)).mkdir(parents=True)
    backing = str(counted.backing)
    owners.owner_of(backing, os.stat(backing).st_dev, "r1-a", rack="r1", app="a", host="h1")
    st = make_state(counted.mount_point, host="h1", guard={"enabled": True})
    st.note_heartbeat(time.time(), 900.0)  # as the heartbeat does
    worker = TimedWorker("test-roundtrips")
    reg = Registry(st)
    opened: dict[str, int] = {}

    def lapse() -> None:  # a heartbeat that lands after the trust in the entries ran out
        st.entries_trusted_until = 0.0
        st.note_heartbeat(time.time(), 900.0)

    def late() -> None:
        monkeypatch.setattr(preparer_module, "LOOK_WITHIN_S", -1.0)

    def untrusted() -> None:  # heartbeats failing since before the create: none landed yet
        st.entries_trusted_until = 0.0

    def trusted_again() -> None:  # the lapse lands, for the cases after
        st.note_heartbeat(time.time(), 900.0)

    # (a case's `between` runs after its create; "untrusted" before it too)
    cases = (
        ("held", Preparer(st, worker, registry=reg), lambda: None),
        ("lapsed", Preparer(st, worker, registry=reg), lapse),
        ("untrusted", Preparer(st, worker, registry=reg), untrusted),
        ("late", Preparer(st, worker, registry=reg), late),
        ("unregistered", Preparer(st, worker), lambda: None),
    )
    host = f"{counted.mount_point}/{'/'.join(EXISTING)}"
    began: dict[str, tuple[float, float]] = {}
    try:
        for n, (name, preparer, between) in enumerate(cases):
            spec = ContainerSpec.from_inspect(
                {
                    "Id": f"c{n}",
                    "Name": f"/web-{n}",
                    "Config": {"Labels": {"convox.app": "a", "convox.service": "web"}, "Env": []},
                    "HostConfig": {"Binds": [f"{counted.mount_point}/{'/'.join(EXISTING)}:/d"]},
                    "State": {"Running": False, "StartedAt": "0001-01-01T00:00:00Z"},
                }
            )
            if name == "untrusted":
                between()
            created = await preparer.decide_create(spec, b"k", lambda _: None, lambda: None)
            assert isinstance(created, Allowed), created
            walked = preparer._walked[host].began
            between()
            before = counted.ops(every_thread=True)
            started = await preparer.decide_start(spec, True)
            assert isinstance(started, Allowed), started
            opened[name] = (counted.ops(every_thread=True) - before)["opendir"]
            if name == "untrusted":
                trusted_again()
            began[name] = (walked, preparer._walked[host].began)
    finally:
        reg.worker.close()
        worker.close()
    assert opened["held"] == 0, opened
    # the mount point's and each component's
    assert opened["lapsed"] >= len(EXISTING) + 1, opened
    assert opened["late"] >= len(EXISTING) + 1, opened
    assert opened["untrusted"] >= len(EXISTING) + 1, opened
    # a look fetches nothing: the next start's bound still counts from the create's walk
    assert began["held"][0] == began["held"][1], began
    assert began["late"][0] < began["late"][1], began
    assert opened["unregistered"] >= len(EXISTING) + 1, opened


def test_a_start_after_a_swap_judges_from_scratch(counted: Counted) -> None:
    (counted.backing / "/".join(EXISTING)).mkdir(parents=True)
    got = create_walk(counted, EXISTING)
    # the leaf replaced by another directory of the same name: not the one judged at create
    (counted.backing / "/".join(EXISTING)).rename(counted.backing / "r1-a/web/x/y/moved")
    (counted.backing / "/".join(EXISTING)).mkdir()
    ops, again = counted.count(lambda: start_walk(counted, EXISTING, got.identity))
    assert again.identity != got.identity
    # judged as a create: the trash looked at (a lookup of .volagent among the operations)
    assert ops.total() > 18, ops


def claim(c: Counted, path: str, epoch: int | None) -> registry_claim.ClaimResult:
    return registry_claim.claim(
        str(c.mount_point),
        c.dev,
        "r1-a",
        host="h1",
        wanted=[Entry("h1", "request:x", "", path, time.time())],
        expire_after_s=900.0,
        deadline=time.monotonic() + 10,
        epoch=epoch,
    )


def test_a_claim_of_a_new_path(counted: Counted) -> None:
    claim(counted, "r1-a/web/a", epoch=None)  # the registry's directory and files exist
    ops, _ = counted.count(lambda: claim(counted, "r1-a/web/b", epoch=None))
    # open the mount point and the registry's directory, open the lock file, read the
    # entries, write them to a new file and rename it over the old
    assert (ops["create"], ops["write"], ops["rename"]) == (1, 1, 1), ops
    fresh = ops.total()
    assert fresh <= 31, ops
    # on the mount of the claim before: the directory and the lock file kept open
    claim(counted, "r1-a/web/c", epoch=1)
    ops, _ = counted.count(lambda: claim(counted, "r1-a/web/d", epoch=1))
    assert (ops["create"], ops["write"], ops["rename"]) == (1, 1, 1), ops
    # no open of the mount point, the registry's directory or the lock file, nor a close:
    # 31 each time before; the directory looked up by its path and the lock file by its
    # name (a stat each, which the NFS client answers from its caches while they are fresh)
    # to see that neither was renamed by hand since they were opened
    assert ops.total() <= 25, ops
    assert ops["open"] == 1 and ops["opendir"] == 0, ops  # the entries file's


async def test_a_claim_through_the_registry_reads_the_registry_alone(counted: Counted) -> None:
    """What the guard's claim of a new path costs, as the daemon makes it: the transaction and
    nothing more. 0.3 first looked for 0.2 hosts' binds in the namespace's usage records (an
    open and a listing of each of their directories, 4-6 round trips on EFS) at every claim."""
    for d in ("r1-a", "r1-a/web"):  # another host's records there, as on a rack
        usage = counted.backing / ".volagent" / "usage" / d
        usage.mkdir(parents=True)
        (usage / "h2.json").write_text(json.dumps({"host": "h2", "time": time.time()}))
    st = make_state(counted.mount_point, host="h1")
    reg = Registry(st)
    try:
        vols, plans = volumes_of(f"{counted.mount_point}/r1-a/web/a")
        await reg.claim(vols, plans, "c1", "")  # the registry's files opened, and kept
        vols, plans = volumes_of(f"{counted.mount_point}/r1-a/web/b")
        before = counted.ops(every_thread=True)  # the claim runs in the registry's worker
        await reg.claim(vols, plans, "c2", "")
        ops = counted.ops(every_thread=True) - before
    finally:
        reg.worker.close()
    assert vols[0].state != "violation" and vols[0].error is None
    assert (ops["create"], ops["write"], ops["rename"]) == (1, 1, 1), ops
    assert ops["opendir"] == ops["readdir"] == 0, ops  # no directory listed
    assert ops.total() <= 25, ops  # as the bare transaction on kept files (0.3.3: 58)


def test_a_create_the_registry_holds_marks_nothing(counted: Counted) -> None:
    """A guarded create of an existing directory three levels down, first used on this host,
    as the daemon decides it once every host's gc reads the registry: the claim's entry
    stands for gc's mark, so the walk sets no mtime (two round trips on EFS before the
    answer, and the start's LOOKUP and ACCESS of each directory they changed)."""
    (counted.backing / "/".join(EXISTING)).mkdir(parents=True)
    (counted.backing / "r1-a/web/other").mkdir()
    # the namespace's owner recorded at its first use (written by a link the stand-in lacks)
    backing = str(counted.backing)
    owners.owner_of(backing, os.stat(backing).st_dev, "r1-a", rack="r1", app="a", host="h1")
    st = make_state(counted.mount_point, host="h1", guard={"enabled": True})
    st.gc_reads_registry_in = st.mount_epoch  # a rack of hosts whose gc reads the registry
    reg = Registry(st)
    worker = TimedWorker("test-roundtrips")
    guard = Guard(st, Preparer(st, worker, registry=reg))
    try:
        # another directory of the namespace first: the registry's files made and kept, the
        # namespace's owner read
        assert create(guard, f"{counted.mount_point}/r1-a/web/other:/data")["Allow"] is True
        aged(counted.backing, "r1-a", "r1-a/web")
        before = counted.ops(every_thread=True)
        answer = create(guard, f"{counted.mount_point}/r1-a/web/x/y/z:/data", name="web-2")
        ops = counted.ops(every_thread=True) - before
    finally:
        reg.worker.close()
        worker.close()
    assert answer["Allow"] is True, answer
    assert ops["utimens"] == 0, ops
    # 52 with the mark (two utimens and their getattrs); 48 before 0.6, which asks whether
    # the mount point is still the filesystem the path was opened on ahead of the claim
    # (one stat by path: the kernel's NFS client answers it from its caches)
    assert ops.total() <= 49, ops
