"""A claim of a path this host's entries hold already makes no transaction, and the keeper
writes only when the paths this host binds change: what keeps that as safe as a claim under
the lock (an entry a claim judged, not one the keeper wrote beside a nesting one; heartbeats
fresh by what they said, without a lapse since; the same filesystem and host
name, a former name's heartbeat kept until the entries bear the new one), and the keeper
never removing a path claimed meanwhile nor stopping at a namespace it cannot update."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.unit.factories import directory_timeout, make_state, volumes_of

from volagent import log
from volagent.mount.report import Reporter
from volagent.rack import heartbeat, registry_claim, registry_task
from volagent.rack.registry import Entry
from volagent.rack.registry_task import Registry
from volagent.rack.usage import share
from volagent.state import AgentState, ContainerRecord, VolumeRecord
from volagent.worker import TimedWorker

NS = "r1-evil"
SHORT_TIMEOUT_S = 0.5  # how long a claim waits for a lock held elsewhere


def registry_file(mp: Path) -> Path:
    return mp / ".volagent" / "registry" / f"{NS}.json"


def entries(mp: Path) -> list[tuple[str, str, str]]:
    doc = json.loads(registry_file(mp).read_text())
    return sorted((e["host"], e["path"], e["ref"]) for e in doc["entries"])


@contextlib.contextmanager
def lock_held_elsewhere(mp: Path, st: AgentState) -> Iterator[None]:
    """Another process (another host, as far as fcntl locks go) holds the namespace's lock:
    a claim that makes a transaction waits for it and fails by its deadline, which is
    short meanwhile (and generous otherwise, so that a loaded machine fails no claim)."""
    lock = mp / ".volagent" / "registry" / f"{NS}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    code = (
        "import fcntl, os, sys\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR)\n"
        "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "held"
        with directory_timeout(st, SHORT_TIMEOUT_S):
            yield
    finally:
        holder.stdin.close()
        holder.stdout.close()
        holder.wait(10)


def alive(mp: Path, host: str = "h1", **sections: object) -> AgentState:
    st = make_state(mp, host=host, **sections)  # type: ignore[arg-type]
    st.note_heartbeat(time.time(), st.config.health.forget_after_s)  # as the heartbeat does
    st.containers_listed.set()
    return st


def run_container(st: AgentState, cid: str, host_path: str) -> None:
    vol = VolumeRecord(host=host_path, container="/d", read_only=False, state="ready")
    st.upsert_container(
        ContainerRecord(
            id=cid, name=f"n-{cid}", rack="r1", app="evil", service="web", volumes=[vol]
        )
    )


def claims(st: AgentState, result: str) -> float:
    value = st.metrics.registry_claims.labels(result=result)._value.get()
    return float(value)


@contextlib.asynccontextmanager
async def registry_of(st: AgentState) -> AsyncIterator[Registry]:
    reg = Registry(st)
    try:
        yield reg
    finally:
        reg.worker.close()


async def test_a_claim_of_a_path_this_host_holds_makes_no_transaction(mp: Path) -> None:
    st = alive(mp)
    path = f"{mp}/{NS}/web/data"

    async with registry_of(st) as reg:
        first, plans = volumes_of(path)
        await reg.claim(first, plans, "c1", "one")
        assert first[0].state != "failed" and claims(st, "registered") == 1
        # the lock is held elsewhere now: a transaction would wait and fail by its deadline
        with lock_held_elsewhere(mp, st):
            again, plans = volumes_of(path)
            await reg.claim(again, plans, "c2", "two")
            assert again[0].state != "failed", again[0].error
            assert claims(st, "held") == 1
            # a path it does not hold still needs the lock, and is refused without it
            other, plans = volumes_of(f"{mp}/{NS}/web/other")
            await reg.claim(other, plans, "c3", "three")
            assert other[0].state == "failed"

    assert entries(mp) == [("h1", f"{NS}/web/data", "c1")]


async def test_a_held_path_is_claimed_under_the_lock_when_the_heartbeat_is_not_fresh(
    mp: Path,
) -> None:
    """Another host forgets this host's entries after `forget_after_s` without a heartbeat:
    whether they are still there is then not known without reading the file."""
    st = alive(mp)
    path = f"{mp}/{NS}/web/data"

    async with registry_of(st) as reg:
        await reg.claim(*volumes_of(path), "c1", "")
        st.entries_trusted_until = time.time()  # the last heartbeat half its forget time ago
        with lock_held_elsewhere(mp, st):
            again, plans = volumes_of(path)
            await reg.claim(again, plans, "c2", "")
            assert again[0].state == "failed"
            assert "could not consult the rack's registry" in (again[0].error or "")


async def test_a_held_path_is_claimed_under_the_lock_once_the_filesystem_changed(mp: Path) -> None:
    st = alive(mp)
    path = f"{mp}/{NS}/web/data"

    async with registry_of(st) as reg:
        await reg.claim(*volumes_of(path), "c1", "")
        assert st.mount_dev is not None
        st.mount_dev += 1  # remounted: another filesystem, as far as volagent knows
        with lock_held_elsewhere(mp, st):
            again, plans = volumes_of(path)
            await reg.claim(again, plans, "c2", "")
            assert again[0].state == "failed"


async def test_the_keeper_writes_nothing_when_docker_answers_a_create(mp: Path) -> None:
    """The claim's entry holds the path under the request's digest; the container that
    Docker names binds the same path, so the file is not written again."""
    st = alive(mp)
    path = f"{mp}/{NS}/web/data"

    async with registry_of(st) as reg:
        await reg.sync()  # the start-up pass
        await reg.claim(*volumes_of(path), "request:abc", "web-1")
        written = registry_file(mp).stat()
        st.reserved_binds[b"k" * 32] = (path,)
        assert await reg.sync() == 0
        del st.reserved_binds[b"k" * 32]
        run_container(st, "c1", path)
        assert await reg.sync() == 0
        assert registry_file(mp).stat().st_ino == written.st_ino

    assert entries(mp) == [("h1", f"{NS}/web/data", "request:abc")]


async def test_a_claim_waits_for_the_keepers_removal_of_its_path_under_way(
    mp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keeper looked when no container bound the path and is removing its entry; a
    create claiming the path meanwhile waits for that update and then registers it. Had the
    claim run first, it would have found the old entry and written nothing, and the keeper's
    removal landing after it would leave the path without an entry."""
    st = alive(mp)
    path = f"{mp}/{NS}/web/data"
    claimed = threading.Event()
    set_own = registry_claim.set_own

    def slow_set_own(*args: object, **kwargs: object) -> object:
        claimed.wait(0.2)  # a slow filesystem: the claim's transaction may come first
        return set_own(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(registry_task.registry_claim, "set_own", slow_set_own)

    async with registry_of(st) as reg:
        run_container(st, "c1", path)
        await reg.claim(*volumes_of(path), "c1", "")
        assert await reg.sync() == 1
        st.forget_container("c1")
        keeper = asyncio.create_task(reg.sync())
        await asyncio.sleep(0)  # the keeper has looked and its removal is under way
        st.reserved_binds[b"k" * 32] = (path,)  # the create being judged
        again, plans = volumes_of(path)
        await reg.claim(again, plans, "request:new", "")
        claimed.set()
        assert await keeper == 1
        assert again[0].state != "failed" and claims(st, "held") == 0
        assert entries(mp) == [("h1", f"{NS}/web/data", "request:new")]
        # refused after all: its reservation goes, and so does the entry
        del st.reserved_binds[b"k" * 32]
        assert await reg.sync() == 1
        assert entries(mp) == []


async def test_a_path_released_by_a_refused_create_is_removed_at_the_next_pass(mp: Path) -> None:
    """A create refused after its claim gives its reservation back: the keeper removes the
    entry at once, rather than holding the path from other hosts."""
    st = alive(mp)
    path = f"{mp}/{NS}/web/data"

    async with registry_of(st) as reg:
        await reg.sync()  # the start-up pass
        st.reserved_binds[b"k" * 32] = (path,)
        await reg.claim(*volumes_of(path), "request:abc", "")
        assert entries(mp) == [("h1", f"{NS}/web/data", "request:abc")]
        del st.reserved_binds[b"k" * 32]
        assert await reg.sync() == 1
        assert entries(mp) == []


async def test_the_keeper_restores_an_entry_that_went_missing(mp: Path) -> None:
    """Every VERIFY_INTERVAL_S the keeper reads its namespaces again, though nothing changed
    here: an entry removed from the file (by hand, or by a host that forgot this one) comes
    back, and a claim of its path is not skipped meanwhile on the strength of a stale note."""
    st = alive(mp)
    path = f"{mp}/{NS}/web/data"

    async with registry_of(st) as reg:
        run_container(st, "c1", path)
        assert await reg.sync() == 1
        registry_file(mp).write_text(
            json.dumps({"kind": "volagent.registry", "format": 1, "namespace": NS, "entries": []})
        )
        assert await reg.sync() == 0  # nothing changed here: nothing read
        reg._verify_at = 0.0  # its interval has run out
        assert await reg.sync() == 1

    assert entries(mp) == [("h1", f"{NS}/web/data", "c1")]


def entries_or_none(mp: Path) -> list[tuple[str, str, str]]:
    return entries(mp) if registry_file(mp).exists() else []


async def test_a_namespace_first_claimed_is_remembered_though_the_keeper_writes_nothing(
    mp: Path, tmp_path: Path
) -> None:
    """The claim's entry holds the path once Docker answers, so the keeper writes nothing:
    the namespace must still be noted for the next run, or an agent restarted after its
    container went while it was down never removes the entry."""
    state_dir = str(tmp_path / "state")
    st = alive(mp, state_dir=state_dir)
    path = f"{mp}/{NS}/web/data"

    async with registry_of(st) as reg:
        await reg.sync()  # the start-up pass: nothing held yet
        st.reserved_binds[b"k" * 32] = (path,)
        await reg.claim(*volumes_of(path), "request:abc", "web-1")
        del st.reserved_binds[b"k" * 32]
        run_container(st, "c1", path)
        assert await reg.sync() == 0
    assert entries(mp) == [("h1", f"{NS}/web/data", "request:abc")]

    # the agent restarts; the container was removed while it was down
    again = alive(mp, state_dir=state_dir)
    async with registry_of(again) as reg:
        await reg.sync()
    assert entries_or_none(mp) == []


async def test_a_claim_that_ends_after_a_remount_notes_nothing_held_on_the_new_filesystem(
    mp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim's entry went to the filesystem mounted when it began; the mount changed
    while it ran (before its answer, which since 0.6 comes before its unlock), so the path
    is not held on the filesystem mounted now."""
    st = alive(mp)
    path = f"{mp}/{NS}/web/data"
    claim = registry_claim.claim

    def remounted_meanwhile(*args: object, **kwargs: Any) -> object:
        answer = kwargs["answered"]

        def remounted_then_answered(result: object) -> None:
            assert st.mount_dev is not None
            st.mount_dev += 1  # the probe saw another filesystem
            answer(result)

        kwargs["answered"] = remounted_then_answered
        return claim(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(registry_task.registry_claim, "claim", remounted_meanwhile)
    async with registry_of(st) as reg:
        await reg.claim(*volumes_of(path), "c1", "")
        monkeypatch.setattr(registry_task.registry_claim, "claim", claim)
        again, plans = volumes_of(path)
        await reg.claim(again, plans, "c2", "")
        assert claims(st, "held") == 0


async def test_a_held_path_is_claimed_under_the_lock_once_the_host_id_changed(mp: Path) -> None:
    """The entries name the host as it was called when they were written (its hostname,
    before instance metadata answered): under its new name it holds none of them, and
    other hosts forget the old name once its heartbeat is gone."""
    st = alive(mp)
    path = f"{mp}/{NS}/web/data"

    async with registry_of(st) as reg:
        await reg.claim(*volumes_of(path), "c1", "")
        st.rename("i-0abc")  # instance metadata answered, or the config named the host
        with lock_held_elsewhere(mp, st):
            again, plans = volumes_of(path)
            await reg.claim(again, plans, "c2", "")
            assert again[0].state == "failed"
            assert claims(st, "held") == 0


async def test_a_claim_given_up_on_writes_nothing_after_the_keepers_next_pass(
    mp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim's job that waited for a thread of the worker must not write once its caller
    has given up: the keeper's next pass, which removes what the refused create left, may
    already have run, and an entry landing after it would hold the path for nobody."""
    st = alive(mp, directories={"timeout_s": SHORT_TIMEOUT_S})
    path = f"{mp}/{NS}/web/data"
    go = threading.Event()
    real_claim = registry_task.registry_claim.claim

    def slow_claim(*args: object, **kwargs: object) -> object:
        go.wait(2.0)  # a slow filesystem before the lock is taken
        return real_claim(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(registry_task.registry_claim, "claim", slow_claim)
    async with registry_of(st) as reg:
        await reg.sync()  # the start-up pass
        for _ in range(reg.worker.max_threads):  # every thread of the worker busy a while
            reg.worker.submit(lambda: time.sleep(0.3))
        st.reserved_binds[b"k" * 32] = (path,)
        refused, plans = volumes_of(path)
        await reg.claim(refused, plans, "request:abc", "")  # given up on at 0.5 s
        assert refused[0].state == "failed"
        del st.reserved_binds[b"k" * 32]  # the create is refused
        await reg.sync()  # the keeper's next pass: nothing to remove yet
        go.set()
        await asyncio.sleep(0.5)  # the claim's thread ends
        await reg.sync()
    assert entries_or_none(mp) == []


async def test_an_entry_written_before_the_clock_was_stepped_back_goes_once_nothing_binds_it(
    mp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clock ran an hour fast when the create's claim was written, then was stepped
    back: the entry is newer than the moment the keeper looks, yet nothing binds its path."""
    st = alive(mp)
    path = f"{mp}/{NS}/web/data"
    real = time.time

    async with registry_of(st) as reg:
        await reg.sync()  # the start-up pass
        monkeypatch.setattr(registry_task.time, "time", lambda: real() + 3600)
        st.reserved_binds[b"k" * 32] = (path,)
        await reg.claim(*volumes_of(path), "request:abc", "")
        monkeypatch.setattr(registry_task.time, "time", real)  # the clock stepped back
        assert entries(mp) == [("h1", f"{NS}/web/data", "request:abc")]
        del st.reserved_binds[b"k" * 32]  # the create is refused
        assert await reg.sync() == 1
        assert entries_or_none(mp) == []


async def test_a_held_path_is_claimed_under_the_lock_after_a_remount_on_the_same_device(
    mp: Path,
) -> None:
    """A remount (another file_system_id in the config, say) may get the device number the
    old mount freed: the filesystem mounted now is not known to hold this host's entries."""
    st = alive(mp)
    path = f"{mp}/{NS}/web/data"
    dev = st.mount_dev

    async with registry_of(st) as reg:
        await reg.claim(*volumes_of(path), "c1", "")
        Reporter(st, lambda: None, log.get("test")).mounting()  # unmounted, mounting again
        st.set_mount_state("mounted")
        st.mount_dev = dev  # the number the old mount freed, given to the new one
        with lock_held_elsewhere(mp, st):
            again, plans = volumes_of(path)
            await reg.claim(again, plans, "c2", "")
            assert again[0].state == "failed"
            assert claims(st, "held") == 0


def claimed_by_another_host(
    mp: Path, path: str, forget_after_s: float = 900.0
) -> registry_claim.ClaimResult:
    """Host h2's claim of `path` (relative to the mount point), under the namespace's lock."""
    return registry_claim.claim(
        str(mp),
        os.stat(mp).st_dev,
        NS,
        host="h2",
        wanted=[Entry("h2", "peer", "peer-1", path, time.time())],
        expire_after_s=forget_after_s,
        deadline=time.monotonic() + 5,
    )


async def test_a_reserved_path_the_keeper_wrote_before_the_claim_is_judged_at_the_claim(
    mp: Path,
) -> None:
    """The attack (seen in the two NFS clients' race): host h2 registers `web/lag`; host 1's
    create of `web/lag/s1` is reserved, and the keeper's pass lands between the reservation
    and the claim. The keeper writes what this host binds and judges nothing, so its entry of
    `s1` was taken for a claim's: the claim skipped the file and the create went through,
    two hosts binding nested directories."""
    st = alive(mp)
    child = f"{mp}/{NS}/web/lag/s1"
    key = b"k" * 32

    async with registry_of(st) as reg:
        await reg.sync()  # the start-up pass
        assert not claimed_by_another_host(mp, f"{NS}/web/lag").clashes
        st.reserved_binds[key] = (child,)  # the create, judged here and reserved
        assert await reg.sync() == 1  # the keeper's pass, before the create's claim
        vols, plans = volumes_of(child)
        await reg.claim(vols, plans, registry_task.request_ref(key), "web-1")
        assert vols[0].state == "violation", vols[0]
        assert "on host h2" in vols[0].error and "binds may not nest" in vols[0].error
        assert claims(st, "held") == 0


async def test_a_container_the_keeper_wrote_unjudged_is_judged_at_its_start(mp: Path) -> None:
    """A container no claim judged (created while the mount was not healthy and the guard
    let it through, or before the agent ran) is written by the keeper as what this host
    binds; its start still meets the other host's bind its path nests."""
    st = alive(mp)
    child = f"{mp}/{NS}/web/lag/s1"

    async with registry_of(st) as reg:
        assert not claimed_by_another_host(mp, f"{NS}/web/lag").clashes
        run_container(st, "c1", child)
        assert await reg.sync() == 1
        vols, plans = volumes_of(child)
        await reg.claim(vols, plans, "c1", "n-c1")
        assert vols[0].state == "violation", vols[0]
        assert "on host h2" in vols[0].error
        # the keeper's next passes change nothing, and read nothing while nothing changes
        assert await reg.sync() == 0


async def test_the_keepers_entry_written_first_wins_the_path(mp: Path) -> None:
    """The other order: the keeper's entry of the reserved path lands before h2's claim,
    which meets it and is refused; this host's claim then finds nothing in the way."""
    st = alive(mp)
    child = f"{mp}/{NS}/web/lag/s1"
    key = b"k" * 32

    async with registry_of(st) as reg:
        await reg.sync()
        st.reserved_binds[key] = (child,)
        assert await reg.sync() == 1
        refused = claimed_by_another_host(mp, f"{NS}/web/lag")
        assert "on host h1" in refused.clashes[f"{NS}/web/lag"]
        vols, plans = volumes_of(child)
        await reg.claim(vols, plans, registry_task.request_ref(key), "web-1")
        assert vols[0].state not in ("violation", "failed"), vols[0]


@contextlib.contextmanager
def beating(st: AgentState) -> Iterator[heartbeat.Heartbeat]:
    """This host's heartbeat task, beating when told."""
    worker = TimedWorker("heartbeat", max_threads=1)
    try:
        yield heartbeat.Heartbeat(st, worker)
    finally:
        worker.close()


def clock_at(monkeypatch: pytest.MonkeyPatch, when: float | None) -> None:
    """The heartbeat's and the registry's wall clock at `when` (None: the real one again)."""
    now = time.time if when is None else (lambda: when)
    monkeypatch.setattr(heartbeat, "time", types.SimpleNamespace(time=now))
    monkeypatch.setattr(
        registry_task, "time", types.SimpleNamespace(time=now, monotonic=time.monotonic)
    )


def reload_forget_after(st: AgentState, seconds: float) -> None:
    health = dataclasses.replace(st.config.health, forget_after_s=seconds)
    st.config = dataclasses.replace(st.config, health=health)


async def judged_after_a_beat(
    mp: Path,
    st: AgentState,
    beats: heartbeat.Heartbeat,
    reg: Registry,
    monkeypatch: pytest.MonkeyPatch,
    *,
    ago: float,
) -> str:
    """A heartbeat `ago` seconds back (the clock left there), then container c1 binding
    `web/lag/s1`, its claim judged under the lock; the path."""
    child = f"{mp}/{NS}/web/lag/s1"
    clock_at(monkeypatch, time.time() - ago)
    assert await beats.beat()
    run_container(st, "c1", child)
    first, plans = volumes_of(child)
    await reg.claim(first, plans, "c1", "n-c1")
    assert first[0].state not in ("violation", "failed"), first[0]
    return child


async def test_a_held_path_is_claimed_under_the_lock_after_the_heartbeat_lapsed(
    mp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: this host holds `s1` (judged under the lock); its heartbeats fail for
    longer than `forget_after_s` while the mount stays healthy (a process or machine frozen
    that long does the same). Host h2 forgets it and registers `web/lag`. The heartbeats come
    back, fresh again, and the stopped container that binds `s1` starts: its claim took the
    path as held and let it through beside h2's bind."""
    st = alive(mp)
    with beating(st) as beats:
        async with registry_of(st) as reg:
            await reg.sync()
            # the last heartbeat that landed, 20 minutes ago
            child = await judged_after_a_beat(mp, st, beats, reg, monkeypatch, ago=1200)
            assert await reg.sync() == 0
            clock_at(monkeypatch, None)
            assert not claimed_by_another_host(mp, f"{NS}/web/lag").clashes  # h1 forgotten
            assert entries(mp) == [("h2", f"{NS}/web/lag", "peer")]
            assert await beats.beat()  # the heartbeats are back
            again, plans = volumes_of(child)  # c1 started again
            await reg.claim(again, plans, "c1", "n-c1")
            assert again[0].state == "violation", again[0]
            assert claims(st, "held") == 0
            # the keeper's whole pass puts the entry back, judged nothing: contested
            assert await reg.sync() >= 1
            assert ("h1", f"{NS}/web/lag/s1", "c1") in entries(mp)
            await reg.claim(*volumes_of(child), "c1", "n-c1")
            assert claims(st, "held") == 0


async def test_a_held_path_is_claimed_under_the_lock_once_the_last_heartbeat_said_less(
    mp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: a reload raises `forget_after_s` from 900 to 3600 s and the heartbeats
    fail from then on. The last one that landed says 900, and other hosts forget this one by
    it; the claim went by the new setting and trusted its entries for 1800 s."""
    st = alive(mp)
    with beating(st) as beats:
        async with registry_of(st) as reg:
            await reg.sync()
            # says forget_after_s = 900
            child = await judged_after_a_beat(mp, st, beats, reg, monkeypatch, ago=1000)
            clock_at(monkeypatch, None)
            reload_forget_after(st, 3600.0)
            assert not claimed_by_another_host(mp, f"{NS}/web/lag").clashes
            again, plans = volumes_of(child)
            await reg.claim(again, plans, "c1", "n-c1")
            assert again[0].state == "violation", again[0]


async def test_a_renamed_host_keeps_its_binds_until_its_entries_bear_its_new_name(
    mp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: this host's name changes (instance metadata answered late, or a reload set
    `host_id`); its next heartbeat went under the new name and removed the former one while
    its entries still bore the former name, until the keeper's next pass. In that window h2
    found those entries without a heartbeat behind them, older than `forget_after_s`, forgot
    them and registered a bind nesting the path a running container binds."""
    st = alive(mp, host="ip-10-0-0-1")
    child = f"{mp}/{NS}/web/lag/s1"
    with beating(st) as beats:
        assert await beats.beat()
        async with registry_of(st) as reg:
            await reg.sync()
            clock_at(monkeypatch, time.time() - 1200)
            run_container(st, "c1", child)  # running for 20 minutes
            assert await reg.sync() == 1
            clock_at(monkeypatch, None)
            st.rename("i-0abc")  # the heartbeat is woken at once
            assert await beats.beat()
            refused = claimed_by_another_host(mp, f"{NS}/web/lag")  # before the keeper's pass
            assert "on host ip-10-0-0-1" in refused.clashes[f"{NS}/web/lag"], entries(mp)
            # the keeper's pass under the new name; the former heartbeat goes at the next beat
            assert await reg.sync() >= 1
            assert await beats.beat()
            beats_left = sorted(p.name for p in (mp / ".volagent" / "hosts").iterdir())
            assert beats_left == ["i-0abc.json"]
            refused = claimed_by_another_host(mp, f"{NS}/web/lag")
            assert "on host i-0abc" in refused.clashes[f"{NS}/web/lag"], entries(mp)


async def test_a_heartbeat_that_landed_though_given_up_on_bounds_the_trust(
    mp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: a reload lowers `forget_after_s` from 900 to 200 s. The next heartbeat,
    saying 200, lands but is given up on (the server slow), and none lands after while the
    mount stays healthy. Other hosts forget this one 200 s after it; the held claims went by
    the 900 of the last heartbeat known to have landed."""
    st = alive(mp)
    with beating(st) as beats:
        async with registry_of(st) as reg:
            # says 900
            child = await judged_after_a_beat(mp, st, beats, reg, monkeypatch, ago=300)
            reload_forget_after(st, 200.0)
            landed = threading.Event()
            write = heartbeat.write_heartbeat

            def answered_late(*args: Any, **kwargs: Any) -> None:
                write(*args, **kwargs)
                landed.set()
                time.sleep(0.5)  # the answer comes after the caller gave up

            monkeypatch.setattr(heartbeat, "write_heartbeat", answered_late)
            monkeypatch.setattr(heartbeat, "WRITE_TIMEOUT_S", 0.1)
            clock_at(monkeypatch, time.time() - 290)
            assert not await beats.beat()  # failed, as far as this host knows
            assert landed.wait(5)  # but on the server, saying 200
            clock_at(monkeypatch, None)
            forgotten = claimed_by_another_host(mp, f"{NS}/web/lag", forget_after_s=200.0)
            assert not forgotten.clashes and forgotten.expired == ["h1"]
            again, plans = volumes_of(child)  # c1 started again
            await reg.claim(again, plans, "c1", "n-c1")
            assert again[0].state == "violation", again[0]


async def test_a_renamed_hosts_former_heartbeat_is_kept_fresh_until_its_entries_bear_the_new_name(
    mp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: the host is renamed while its keeper cannot finish a whole pass under the
    new name (a namespace's registry it cannot update). The former name's heartbeat was kept
    but not written again: once older than `forget_after_s`, h2 forgot that name's entries
    and registered a bind nesting a path a running container binds."""
    st = alive(mp, host="ip-10-0-0-1")
    child = f"{mp}/{NS}/web/lag/s1"
    with beating(st) as beats:
        async with registry_of(st) as reg:
            clock_at(monkeypatch, time.time() - 1200)  # 20 minutes ago
            assert await beats.beat()
            run_container(st, "c1", child)
            assert await reg.sync() == 1
            st.rename("i-0abc")
            assert await beats.beat()
            clock_at(monkeypatch, None)
            assert await beats.beat()  # now; the entries still bear the former name
            assert entries(mp) == [("ip-10-0-0-1", f"{NS}/web/lag/s1", "c1")]
            refused = claimed_by_another_host(mp, f"{NS}/web/lag")
            assert "on host ip-10-0-0-1" in refused.clashes[f"{NS}/web/lag"], entries(mp)


async def test_the_keeper_goes_on_past_a_namespace_it_cannot_update(mp: Path) -> None:
    """A registry file it cannot read (garbled by hand, over its size) stopped the keeper's
    pass at that namespace: the entries of the namespaces after it were never set, and a
    renamed host's former heartbeat never went. The others are set; that one is tried again
    after a pause, and the entries bear this host's name only once it is set too."""
    st = alive(mp)
    run_container(st, "c0", f"{mp}/r1-app/web/data")  # its namespace sorts first
    run_container(st, "c1", f"{mp}/{NS}/web/data")
    garbled = mp / ".volagent" / "registry" / "r1-app.json"
    garbled.parent.mkdir(parents=True)
    garbled.write_text("{")
    async with registry_of(st) as reg:
        assert await reg.sync() == 1
        assert entries(mp) == [("h1", f"{NS}/web/data", "c1")]
        assert st.entries_named == ""
        assert await reg.sync() == 0  # the pause
        garbled.unlink()  # mended
        reg._retry_at = 0.0  # the pause is over
        assert await reg.sync() == 1
        assert st.entries_named == "h1"


async def test_a_name_left_and_come_back_to_leaves_no_heartbeat_behind(mp: Path) -> None:
    """A -> B -> A before the keeper's pass under B: B's heartbeat went only where the
    former name was the one just before, and the rack view listed a stale host B for ever."""
    st = alive(mp, host="a")
    with beating(st) as beats:
        async with registry_of(st) as reg:
            assert await beats.beat()
            await reg.sync()
            st.rename("b")
            assert await beats.beat()
            st.rename("a")
            assert await beats.beat()
            await reg.sync()
            assert await beats.beat()
            assert sorted(p.name for p in (mp / ".volagent" / "hosts").iterdir()) == ["a.json"]


async def test_a_keepers_read_that_ends_after_a_heartbeat_lapse_notes_nothing_held(
    mp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: the keeper's pass reads the file and finds this host's entry; before its
    job returns, h2 forgets this host (its heartbeats had failed) and registers `web/lag`,
    and a heartbeat lands, late: a lapse. The pass noted the path held all the same, as
    found before the lapse, and the next start of `s1` went through beside h2's bind."""
    st = alive(mp)
    loop = asyncio.get_running_loop()
    with beating(st) as beats:
        async with registry_of(st) as reg:
            child = await judged_after_a_beat(mp, st, beats, reg, monkeypatch, ago=1200)
            await reg.sync()
            clock_at(monkeypatch, None)
            set_own = registry_claim.set_own

            def meanwhile(*args: Any, **kwargs: Any) -> registry_claim.SetResult:
                result = set_own(*args, **kwargs)
                assert claimed_by_another_host(mp, f"{NS}/web/lag").expired == ["h1"]
                asyncio.run_coroutine_threadsafe(beats.beat(), loop).result(5)
                return result

            monkeypatch.setattr(registry_task.registry_claim, "set_own", meanwhile)
            reg._verify_at = 0.0  # the keeper reads its namespaces again
            await reg.sync()
            monkeypatch.setattr(registry_task.registry_claim, "set_own", set_own)
            assert entries(mp) == [("h2", f"{NS}/web/lag", "peer")]
            again, plans = volumes_of(child)
            await reg.claim(again, plans, "c1", "n-c1")
            assert again[0].state == "violation", again[0]


async def test_a_renamed_hosts_former_name_is_no_host_of_the_rack(mp: Path) -> None:
    """The former name's heartbeat, kept fresh for its entries, is no host: counted as one,
    it took a share of the usage walk that nobody walked, and a stop wrote it as a stopped
    host that gc's last judgement then waited for."""
    st = alive(mp, host="ip-10-0-0-1")
    with beating(st) as beats:
        assert await beats.beat()
        st.rename("i-0abc")
        assert await beats.beat()
        assert (mp / ".volagent" / "hosts" / "ip-10-0-0-1.json").exists()
        view = await beats.hosts(timeout=5.0)
        assert [h["host"] for h in view] == ["i-0abc"]
        assert share.live_hosts(view, st.host_id, st.config.rack) == ["i-0abc"]


async def test_the_keeper_goes_on_past_a_namespace_locked_by_a_host_gone(mp: Path) -> None:
    """A namespace whose lock a host gone still holds fails by the thread's own deadline,
    as a claim does, before the caller gives up on it as a hung filesystem: the namespaces
    after it are set."""
    st = alive(mp)
    run_container(st, "c0", f"{mp}/{NS}/web/data")  # the locked one sorts first
    run_container(st, "c1", f"{mp}/r1-zzz/web/data")
    async with registry_of(st) as reg:
        with lock_held_elsewhere(mp, st):
            assert await reg.sync() == 1
    assert (mp / ".volagent" / "registry" / "r1-zzz.json").exists()


async def test_a_renamed_host_trusts_no_held_path_before_a_heartbeat_under_the_new_name(
    mp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: this host (forget_after_s 3600) is renamed and its heartbeats fail from
    then on. No heartbeat names the new name, so h2 (900 s) judges its entries by its own
    setting and forgets them; the held claims still went by the former name's heartbeat,
    saying 3600, and the next start of `s1` went through beside h2's bind."""
    st = alive(mp, host="a", health={"forget_after_s": 3600.0})
    child = f"{mp}/{NS}/web/lag/s1"
    with beating(st) as beats:
        async with registry_of(st) as reg:
            clock_at(monkeypatch, time.time() - 1000)
            assert await beats.beat()  # under a, saying 3600
            st.rename("b")
            run_container(st, "c1", child)
            first, plans = volumes_of(child)
            await reg.claim(first, plans, "c1", "n-c1")  # under b, judged under the lock
            assert first[0].state not in ("violation", "failed"), first[0]
            clock_at(monkeypatch, None)
            forgot = claimed_by_another_host(mp, f"{NS}/web/lag", forget_after_s=900.0)
            assert not forgot.clashes and forgot.expired == ["b"]
            again, plans = volumes_of(child)
            await reg.claim(again, plans, "c1", "n-c1")
            assert again[0].state == "violation", again[0]
            assert claims(st, "held") == 0


async def test_a_destroyed_containers_entry_goes_though_the_host_was_renamed(mp: Path) -> None:
    """The keeper removed only entries bearing the current name: a container destroyed
    around a rename left its entry under the former name, in the way of nested binds (this
    host's own too) until other hosts forgot that name."""
    st = alive(mp, host="a")
    with beating(st) as beats:
        assert await beats.beat()
        async with registry_of(st) as reg:
            run_container(st, "c1", f"{mp}/{NS}/web/lag")
            run_container(st, "c2", f"{mp}/{NS}/web/other")
            assert await reg.sync() == 1
            st.forget_container("c1")
            st.rename("b")
            assert await beats.beat()
            await reg.sync()
            assert entries(mp) == [("b", f"{NS}/web/other", "c2")]
            assert st.entries_named == "b"
