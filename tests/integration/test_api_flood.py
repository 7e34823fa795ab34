"""A local user without root floods the status socket while Docker is used: the server ends
the flood (each flooding connection is cut or refused) and the start guard answers every
Docker call meanwhile. No timing is judged here: bench/flood_bench.py measures the latency."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import docker
import pytest

from tests.testbed import (
    AgentProcess,
    Containers,
    app_labels,
    ensure_image,
    volagent_cli,
)
from tests.testbed.agent import all_in
from tests.testbed.flood import Flood, flood_report_text
from tests.testbed.plugin_home import PluginHome

pytestmark = [pytest.mark.docker, pytest.mark.mount]


@pytest.fixture
def guarded(busybox_rootfs: str) -> Iterator[tuple[AgentProcess, Containers]]:
    """An engine asking the guard, its agent, a status socket nobody's group may use."""
    home = PluginHome()
    cleanup = [home.close]
    try:
        engine = home.dockerd("--authorization-plugin=volagent", name="df")
        agent = home.agent(engine.url, config={"api": {"socket_group": "nogroup"}})
        agent.start()
        cleanup.append(agent.close)
        engine.start()
        cleanup.append(engine.stop)
        ensure_image(engine.client(), busybox_rootfs)
        agent.wait_for(lambda d: d["docker"]["state"] == "connected", what="connected")
        for path in (home.base, agent.base):  # nobody may reach the socket, not read around
            os.chmod(path, 0o711)  # noqa: S103 - traversable, not readable
        made = Containers(engine.url)
        cleanup += [made.close, made.cleanup]
        yield agent, made
    finally:
        for step in reversed(cleanup):
            step()


def test_the_flood_ends_and_every_docker_call_is_answered_meanwhile(
    guarded: tuple[AgentProcess, Containers],
) -> None:
    agent, made = guarded
    labels = app_labels("shop", "web")
    for i in range(20):  # answers worth rendering
        made.create([f"{agent.ns('shop', 'web', f'bg{i}')}:/d"], labels=labels)
    api = docker.APIClient(base_url=made.url, version="auto", timeout=120)
    flood = Flood(agent.socket_path, connections=40, kinds=("pipeline", "silent")).start()
    try:
        created = []
        for _ in range(5):
            path = agent.ns("shop", "web", uuid.uuid4().hex[:8])
            created.append(made.create([f"{path}:/d"], labels=labels))
            for _ in range(10):
                api.containers(all=True)
        # root's `volagent status` gets its answer too
        out = volagent_cli(["status", "--json", "--socket", agent.socket_path])
        assert out.returncode in (0, 1), out.stderr
    finally:
        report = flood.stop()
        api.close()
    print(flood_report_text(report))
    # the server ended every connection of the flood, and answered it while it lasted
    assert report.errors == []
    assert report.left_open == 0
    assert report.ended_by_server == report.connects
    assert report.codes.get("200", 0) > 0
    assert report.codes.get("429", 0) > 0  # cut: too many requests sent ahead
    assert report.codes.get("503", 0) > 0  # refused: nobody held its share of connections
    # the guard prepared every create made meanwhile, and the agent is still serving
    agent.wait_for(lambda d: all_in(d, created, ["ready"]), what="the creates prepared")
    assert agent.running
    status = agent.status()
    assert status["guard"]["denied"] == 0
    assert not [e for e in agent.log_events() if e.get("event") == "guard_error"]
