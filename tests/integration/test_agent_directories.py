"""Issue 2 acceptance: directories are made on the mounted filesystem for containers created
at once, and `docker run` bursts end `ready` or `late`, exactly as the disk shows."""

from __future__ import annotations

import os

import pytest

from tests.testbed import AgentProcess, Containers, app_labels, parallel
from tests.testbed.agent import all_in, container
from tests.testbed.disk import on_the_mount, owner_mode, underneath_entries

pytestmark = [pytest.mark.docker, pytest.mark.mount]

OWNER = "1234:1234"


def test_twenty_containers_created_at_once(agent: AgentProcess, containers: Containers) -> None:
    specs = [(f"app{i % 4}", f"svc{i}") for i in range(20)]
    paths = [agent.ns(app, svc, "data") for app, svc in specs]

    def create(i: int) -> str:
        app, svc = specs[i]
        return containers.create([f"{paths[i]}:/data"], labels=app_labels(app, svc, owner=OWNER))

    ids = parallel(create, range(20), workers=20)
    doc = agent.wait_for(lambda d: all_in(d, ids, ["ready"]), what="20 volumes ready")

    for cid, path, (app, svc) in zip(ids, paths, specs, strict=True):
        c = container(doc, cid)
        assert c is not None
        assert (c["rack"], c["app"], c["service"]) == ("r1", app, svc)
        (vol,) = c["volumes"]
        assert (vol["host"], vol["container"], vol["state"]) == (path, "/data", "ready")
        assert vol["error"] is None
        assert on_the_mount(agent, path), path
        assert owner_mode(path) == (1234, 1234, 0o755)
        # parents volagent made are root's, the leaf's owner comes from the label
        assert owner_mode(os.path.dirname(path))[:2] == (0, 0)
        assert owner_mode(agent.ns(app))[:2] == (0, 0)
    assert underneath_entries(agent) == [], "something was written under the mount point"
    assert doc["status"] == "degraded"  # a local mount: data is not shared, said so
    assert doc["warnings"]


@pytest.mark.parametrize("burst", [1, 2])
def test_docker_run_bursts_end_ready_or_late(
    agent: AgentProcess, containers: Containers, burst: int
) -> None:
    n = 15
    paths = [agent.ns("web", f"b{burst}s{i}", "data") for i in range(n)]

    def run(i: int) -> str:
        return containers.run(
            [f"{paths[i]}:/data:ro" if i % 3 == 0 else f"{paths[i]}:/data"],
            labels=app_labels("web", f"b{burst}s{i}", owner=OWNER),
            command=["true"],
        )

    ids = parallel(run, range(n), workers=n)
    doc = agent.wait_for(
        lambda d: all_in(d, ids, ["ready", "late"]), what="every volume ready or late"
    )

    states = {"ready": 0, "late": 0}
    for i, (cid, path) in enumerate(zip(ids, paths, strict=True)):
        c = container(doc, cid)
        assert c is not None
        (vol,) = c["volumes"]
        assert vol["host"] == path
        assert vol["read_only"] is (i % 3 == 0)
        assert os.path.isdir(path), f"{path} is missing"
        assert on_the_mount(agent, path), path
        states[vol["state"]] += 1
        if vol["state"] == "ready":
            assert owner_mode(path)[:2] == (1234, 1234), (path, vol)
        else:
            # Docker won the race and made it itself; volagent says so and leaves it alone
            assert owner_mode(path) == (0, 0, 0o755), (path, vol)
            assert vol["error"]
    assert sum(states.values()) == n
    assert underneath_entries(agent) == []


def test_unlabeled_binds_are_violations_and_foreign_binds_are_left_alone(
    agent: AgentProcess, containers: Containers
) -> None:
    unlabeled = agent.ns("nobody", "s", "data")
    elsewhere = os.path.join(agent.base, "not-under-mp")
    a = containers.create([f"{unlabeled}:/data"])
    b = containers.create([f"{elsewhere}:/x"], labels=app_labels("app", "s", owner=OWNER))
    marker = containers.create(
        [f"{agent.ns('app', 's', 'after')}:/d"], labels=app_labels("app", "s", owner=OWNER)
    )
    doc = agent.wait_for(
        lambda d: all_in(d, [marker], ["ready"]) and all_in(d, [a], ["violation"]),
        what="marker ready, the unlabeled bind a violation",
    )
    unnamed = container(doc, a)
    assert unnamed is not None and "names no app" in str(unnamed["volumes"][0]["error"])
    assert container(doc, b) is None
    assert not os.path.exists(unlabeled)
    assert not os.path.exists(elsewhere)


def test_removed_containers_leave_the_status_and_their_data(
    agent: AgentProcess, containers: Containers
) -> None:
    path = agent.ns("app", "s", "data")
    cid = containers.create([f"{path}:/d"], labels=app_labels("app", "s", owner=OWNER))
    agent.wait_for(lambda d: all_in(d, [cid], ["ready"]), what="ready")
    containers.remove(cid)
    agent.wait_for(lambda d: container(d, cid) is None, what="container forgotten")
    assert owner_mode(path)[:2] == (1234, 1234)  # data stays: only gc --delete removes it
