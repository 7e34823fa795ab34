"""Rule 6 across racks that share one filesystem: `<rack>-<app>` names one directory for two
(rack, app) pairs when the names hold `-` (rack `r1` with app `east-x`, rack `r1-east` with app
`x`); the owner recorded at the namespace's first allowed use keeps the other pair out."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.unit import factories
from tests.unit.guard_requests import create

from volagent.guard.plugin import Guard
from volagent.rack import owners
from volagent.vocabulary import MountState
from volagent.volumes.preparer import ContainerSpec, Preparer
from volagent.worker import TimedWorker

NS = "r1-east-x"


@pytest.fixture
def worker() -> Iterator[TimedWorker]:
    w = TimedWorker("test-owners", max_threads=2)
    yield w
    w.close()


def guard_of(mp: Path, worker: TimedWorker, rack: str) -> Guard:
    st = factories.make_state(mp, host=f"host-{rack}", rack=rack, guard={"enabled": True})
    return Guard(st, Preparer(st, worker))


def labels(app: str) -> dict[str, str]:
    return {"convox.app": app, "convox.service": "web", "volagent.owner": "33:33"}


def record(mp: Path) -> dict[str, object]:
    data = json.loads((mp / ".volagent" / "namespaces" / f"{NS}.json").read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.root
def test_an_app_of_another_rack_naming_the_same_directory_is_refused(
    mp: Path, worker: TimedWorker
) -> None:
    """The attack: app `east-x` of rack `r1` binds `<mp>/r1-east-x/web/data`, which app `x`
    of rack `r1-east` (another rack on the same filesystem) keeps its data in."""
    theirs = guard_of(mp, worker, "r1-east")
    assert create(theirs, f"{mp}/{NS}/web/data:/data", labels=labels("x")) == {"Allow": True}
    (mp / NS / "web" / "data" / "secret").write_text("x's")
    assert record(mp)["rack"] == "r1-east" and record(mp)["app"] == "x"

    mine = guard_of(mp, worker, "r1")
    answer = create(mine, f"{mp}/{NS}/web/data:/data", labels=labels("east-x"))
    assert answer["Allow"] is False
    assert "rule 6" in answer["Msg"] and "belongs to app x of rack r1-east" in answer["Msg"]
    # and another directory of it all the same
    answer = create(mine, f"{mp}/{NS}/other:/o", labels=labels("east-x"))
    assert answer["Allow"] is False
    assert not (mp / NS / "other").exists()
    # the owner's own creates go on
    assert create(theirs, f"{mp}/{NS}/web/more:/m", labels=labels("x")) == {"Allow": True}


def test_the_owner_is_recorded_once_whoever_asks_at_the_same_moment(mp: Path) -> None:
    dev = os.stat(mp).st_dev
    found: list[owners.NamespaceOwner] = []
    start = threading.Barrier(8)

    def ask(i: int) -> None:
        rack, app = ("r1", "east-x") if i % 2 else ("r1-east", "x")
        start.wait()
        found.append(owners.owner_of(str(mp), dev, NS, rack=rack, app=app, host=f"h{i}"))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len({(o.rack, o.app) for o in found}) == 1
    assert (record(mp)["rack"], record(mp)["app"]) == (found[0].rack, found[0].app)
    # no temporary file left behind
    assert os.listdir(mp / ".volagent" / "namespaces") == [f"{NS}.json"]


def test_an_owner_record_that_cannot_be_read_fails_the_create(
    mp: Path, worker: TimedWorker
) -> None:
    """A record garbled by hand (or of a newer major format) tells no owner: fail closed."""
    d = mp / ".volagent" / "namespaces"
    d.mkdir(parents=True)
    (d / f"{NS}.json").write_text("{not json")
    guard = guard_of(mp, worker, "r1-east")
    answer = create(guard, f"{mp}/{NS}/web/data:/data", labels=labels("x"))
    assert answer["Allow"] is False
    assert "could not read the owner" in answer["Msg"]
    assert not (mp / NS).exists()


def owned_by_rack_r1_east(mp: Path) -> None:
    found = owners.owner_of(str(mp), os.stat(mp).st_dev, NS, rack="r1-east", app="x", host="e")
    assert (found.rack, found.app) == ("r1-east", "x")
    (mp / NS / "web" / "data").mkdir(parents=True)


@pytest.mark.root
def test_what_the_docker_watch_prepares_in_another_racks_namespace_is_a_violation(
    mp: Path, worker: TimedWorker
) -> None:
    """A container the guard never judged (made while it was off, or before owners were
    recorded) binding rack r1-east's namespace as rack r1's app east-x: the watch's
    preparation reports it in violation and makes nothing there (a directory owned by the
    intruder would be taken for the owner's data later)."""
    owned_by_rack_r1_east(mp)
    st = factories.make_state(mp, rack="r1")
    preparer = Preparer(st, worker)
    spec = ContainerSpec(
        id="c" * 64,
        name="intruder",
        labels=labels("east-x"),
        env=[],
        user="",
        host_config={"Binds": [f"{mp}/{NS}/web/data:/data", f"{mp}/{NS}/web/planted:/p"]},
    )
    outcome = asyncio.run(preparer.prepare(spec))
    assert outcome is not None
    assert [v.state for v in outcome.volumes] == ["violation", "violation"]
    assert not (mp / NS / "web" / "planted").exists()


def test_a_known_owner_is_compared_while_the_mount_is_not_healthy(
    mp: Path, worker: TimedWorker
) -> None:
    """`when_unhealthy = "allow"` lets creates through while the mount stalls; an owner
    this host has read already needs no filesystem to be compared, and still refuses."""
    owned_by_rack_r1_east(mp)
    st = factories.make_state(mp, rack="r1", guard={"enabled": True, "when_unhealthy": "allow"})
    g = Guard(st, Preparer(st, worker))
    bind = f"{mp}/{NS}/web/data:/data"
    assert create(g, bind, labels=labels("east-x"))["Allow"] is False  # read, and kept
    st.set_mount_state(MountState.STALLED, "the probe did not answer in 5s")
    answer = create(g, bind, labels=labels("east-x"))
    assert answer["Allow"] is False and "belongs to app x of rack r1-east" in answer["Msg"]
