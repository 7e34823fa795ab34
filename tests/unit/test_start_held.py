"""When a start may only look at its path (volumes/preparer.py `held`): only while this host's
entries in the registry have held it without a break since the walk that recorded it. Here
another host forgets this host's entries (as it may once this host's heartbeats have failed
for `forget_after_s`), binds a directory above the path and goes, all between the create's
claim and the start: the start opens every component, so it would see what that bind did."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from tests.unit.factories import make_state

from volagent.rack import owners, registry_claim
from volagent.rack.registry import Entry
from volagent.rack.registry_task import Registry
from volagent.volumes import trashcheck
from volagent.volumes.preparer import Allowed, ContainerSpec, Preparer
from volagent.worker import TimedWorker

pytestmark = pytest.mark.root  # the walk judges directories another user may own


def spec_of(mp: Path, *paths: str) -> ContainerSpec:
    return ContainerSpec.from_inspect(
        {
            "Id": "c1",
            "Name": "/web-1",
            "Config": {"Labels": {"convox.app": "a", "convox.service": "web"}, "Env": []},
            "HostConfig": {"Binds": [f"{mp}/{p}:/d{i}" for i, p in enumerate(paths)]},
            "State": {"Running": False, "StartedAt": "0001-01-01T00:00:00Z"},
        }
    )


def walks(monkeypatch: pytest.MonkeyPatch, hook: Any = None) -> list[tuple[str, bool]]:
    """Each walk's leaf and whether it only looked (`held`); `hook(leaf)` before each."""
    seen: list[tuple[str, bool]] = []
    real = trashcheck.prepare_path

    def watched(mp: str, parts: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append((parts[-1], bool(kwargs.get("held"))))
        if hook is not None:
            hook(parts[-1])
        return real(mp, parts, *args, **kwargs)

    monkeypatch.setattr(trashcheck, "prepare_path", watched)
    return seen


def forgotten_by_a_bind_above(mp: Path) -> None:
    """Host h2 claims r1-a/web, finding h1 gone (its heartbeat older than forget_after_s,
    here 0), so dropping h1's entries; then h2's container goes, and its entry with it."""
    dev = os.stat(mp).st_dev
    above = Entry("h2", "x", "other", "r1-a/web", time.time())
    got = registry_claim.claim(
        str(mp), dev, "r1-a", host="h2", wanted=[above], expire_after_s=0.0,
        deadline=time.monotonic() + 5,
    )  # fmt: skip
    assert not got.clashes and "h1" in got.expired, got
    registry_claim.set_own(str(mp), dev, "r1-a", host="h2", live=[], deadline=time.monotonic() + 5)


def host_h1(mp: Path) -> tuple[Preparer, Registry, TimedWorker]:
    owners.owner_of(str(mp), os.stat(mp).st_dev, "r1-a", rack="r1", app="a", host="h1")
    st = make_state(mp, host="h1", guard={"enabled": True})
    worker, reg = TimedWorker("test-start-held"), Registry(st)
    return Preparer(st, worker, registry=reg), reg, worker


async def test_heartbeats_failing_since_before_the_create_leave_nothing_to_look_at(
    mp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No heartbeat of h1 has landed for half its forget_after_s (no trust in its entries;
    none has landed since, so the lapse is not counted yet): its claims make transactions,
    and another host may forget its entries between the create and the start."""
    (mp / "r1-a/web/data").mkdir(parents=True)
    preparer, reg, worker = host_h1(mp)
    seen = walks(monkeypatch)
    spec = spec_of(mp, "r1-a/web/data")
    try:
        created = await preparer.decide_create(spec, b"k", lambda _: None, lambda: None)
        assert isinstance(created, Allowed), created
        forgotten_by_a_bind_above(mp)
        seen.clear()
        assert isinstance(await preparer.decide_start(spec, True), Allowed)
    finally:
        reg.worker.close()
        worker.close()
    assert seen == [("data", False)], seen


async def test_a_lapse_landing_between_a_claim_and_its_second_walk_leaves_nothing_to_look_at(
    mp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two binds claimed together; during the first one's walk, a heartbeat lands after a
    lapse, and h1's entries had been forgotten meanwhile. The second bind's walk comes after
    the lapse: it must not count its path as held since the claim."""
    for p in ("r1-a/web/one", "r1-a/web/two"):
        (mp / p).mkdir(parents=True)
    preparer, reg, worker = host_h1(mp)
    st = preparer.state
    st.note_heartbeat(time.time(), 900.0)
    lapsed: list[bool] = []

    def lapse(leaf: str) -> None:
        if leaf == "one" and not lapsed:
            lapsed.append(True)
            st.entries_trusted_until = 0.0
            st.note_heartbeat(time.time(), 900.0)  # the lapse lands
            forgotten_by_a_bind_above(mp)

    seen = walks(monkeypatch, lapse)
    spec = spec_of(mp, "r1-a/web/one", "r1-a/web/two")
    try:
        created = await preparer.decide_create(spec, b"k", lambda _: None, lambda: None)
        assert isinstance(created, Allowed), created
        seen.clear()
        assert isinstance(await preparer.decide_start(spec, True), Allowed)
    finally:
        reg.worker.close()
        worker.close()
    assert ("two", False) in seen and ("two", True) not in seen, seen
