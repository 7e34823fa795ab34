"""Issue 2 acceptance: restarts. Docker restarted under the agent (connecting, then
connected, and later containers handled); the agent stopped while containers are created,
then started (all reconciled); the agent SIGKILLed in the middle of a burst of creates and
started again (every directory prepared, none missing)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import pytest

from tests.testbed import (
    AgentFactory,
    AgentProcess,
    Containers,
    DockerdFactory,
    app_labels,
    parallel,
)
from tests.testbed.agent import all_in
from tests.testbed.disk import on_the_mount, owner_mode

pytestmark = [pytest.mark.docker, pytest.mark.mount]

OWNER = "1234:1234"


def creator(agent: AgentProcess, containers: Containers, app: str) -> Callable[[int], str]:
    def create(i: int) -> str:
        path = agent.ns(app, f"s{i}", "data")
        return containers.create([f"{path}:/data"], labels=app_labels(app, f"s{i}", owner=OWNER))

    return create


def assert_prepared(agent: AgentProcess, app: str, n: int) -> None:
    for i in range(n):
        path = agent.ns(app, f"s{i}", "data")
        assert os.path.isdir(path), f"{path} is missing"
        assert on_the_mount(agent, path), path
        assert owner_mode(path)[:2] == (1234, 1234), path


def test_dockerd_restarted_under_the_agent(
    dockerd_factory: DockerdFactory, agent_factory: AgentFactory
) -> None:
    engine = dockerd_factory()  # its own engine: the session's is not disturbed
    agent = agent_factory(docker_url=engine.url).start()
    containers = Containers(engine.url)
    try:
        agent.wait_for(lambda d: d["docker"]["state"] == "connected", what="connected")
        before = containers.create(
            [f"{agent.ns('app', 'before', 'data')}:/d"],
            labels=app_labels("app", "before", owner=OWNER),
        )
        agent.wait_for(lambda d: all_in(d, [before], ["ready"]), what="first ready")

        engine.halt()
        doc = agent.wait_for(lambda d: d["docker"]["state"] == "connecting", what="connecting")
        assert doc["status"] == "critical"
        assert agent.health()[0] == 503

        engine.start()
        agent.wait_for(lambda d: d["docker"]["state"] == "connected", what="connected again")
        after = parallel(creator(agent, containers, "after"), range(5), workers=5)
        doc = agent.wait_for(lambda d: all_in(d, after, ["ready"]), what="after restart")
        assert all_in(doc, [before], ["ready"])  # still known after the reconcile
        assert_prepared(agent, "after", 5)
    finally:
        containers.cleanup()
        containers.close()


def test_agent_stopped_while_containers_are_created(
    agent: AgentProcess, containers: Containers
) -> None:
    agent.wait_for(lambda d: d["docker"]["state"] == "connected", what="connected")
    assert agent.stop() == 0
    ids = parallel(creator(agent, containers, "offline"), range(10), workers=10)
    for i in range(10):
        # the mount stayed (the agent never unmounts on stop), nothing was prepared
        assert not os.path.exists(agent.ns("offline", f"s{i}", "data"))
    agent.start()
    agent.wait_for(lambda d: all_in(d, ids, ["ready"]), what="all reconciled after start")
    assert_prepared(agent, "offline", 10)


def test_agent_killed_in_the_middle_of_a_burst(agent: AgentProcess, containers: Containers) -> None:
    agent.wait_for(lambda d: d["docker"]["state"] == "connected", what="connected")
    n = 20
    made = 0
    lock = threading.Lock()
    midway = threading.Event()
    create = creator(agent, containers, "burst")

    def create_and_count(i: int) -> str:
        nonlocal made
        cid = create(i)
        with lock:
            made += 1
            if made == 5:
                midway.set()
        return cid

    # at most 4 creates at a time, so most of the burst comes after the kill
    result: list[str] = []
    burst = threading.Thread(
        target=lambda: result.extend(parallel(create_and_count, range(n), workers=4))
    )
    burst.start()
    try:
        assert midway.wait(120), "the burst did not get going"
        assert agent.kill() == -9
    finally:
        burst.join(300)
    assert len(result) == n
    agent.start()
    doc = agent.wait_for(lambda d: all_in(d, result, ["ready"]), what="every directory ready")
    assert doc["mount"]["state"] == "local"  # the mount left by the killed agent was adopted
    assert_prepared(agent, "burst", n)
