"""Issue 5 acceptance: two hosts of one rack (two agents, two mount points on the same
export): `status --rack` on either lists both, a stopped one turns stale; gc lists a
namespace nobody used and keeps the one a container on the other host uses, and --delete
moves only the first into the trash."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.testbed import (
    AgentFactory,
    AgentProcess,
    Containers,
    app_labels,
    unixhttp,
    volagent_cli,
)
from tests.testbed.aws import INSTANCE_ID, Imds
from tests.testbed.registry_view import registered
from tests.testbed.waiting import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.mount]

HEALTH = {"heartbeat_interval_s": 0.3, "stale_after_s": 2.0}
NO_DOCKER = "unix:///nonexistent/docker.sock"  # a host whose Docker is not ours to watch
DAY = 86400.0


def two_hosts(agent_factory: AgentFactory, docker_url: str) -> tuple[AgentProcess, AgentProcess]:
    """Host a (no Docker) and host b (the session engine), sharing a's export."""
    a = agent_factory(docker_url=NO_DOCKER, config={"host_id": "host-a", "health": HEALTH})
    b = agent_factory(
        docker_url=docker_url,
        local_tmpfs=False,
        config={"host_id": "host-b", "health": HEALTH, "mount": {"local_path": a.local_path}},
    )
    return a.start(), b.start()


def rack(agent: AgentProcess) -> dict[str, dict[str, Any]]:
    """`volagent status --rack --json` of the agent, hosts by name."""
    out = volagent_cli(
        ["status", "--rack", "--json", "--socket", agent.socket_path, "--timeout", "10"]
    )
    assert out.returncode in (0, 1, 2), out.stderr
    doc = json.loads(out.stdout)
    return {h["host"]: h for h in doc.get("hosts", [])}


def metric(agent: AgentProcess, name: str, **labels: str) -> float:
    status, body = unixhttp.request(agent.socket_path, "GET", "/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_status_rack_lists_both_hosts_and_a_stopped_one_turns_stale(
    agent_factory: AgentFactory, docker_url: str
) -> None:
    a, b = two_hosts(agent_factory, docker_url)
    for agent in (a, b):
        hosts = wait_until(
            lambda agent=agent: (h := rack(agent)).keys() >= {"host-a", "host-b"} and h,
            "both hosts in the rack view",
        )
        assert not hosts["host-a"]["stale"] and not hosts["host-b"]["stale"]
        for h in hosts.values():
            assert h["last_seen"].endswith("Z") and h["version"] and h["status"]
            assert h["registry"] is True  # both take part in the rack's registry
    assert metric(a, "volagent_heartbeats_total", result="written") >= 1

    assert b.stop() == 0
    hosts = wait_until(
        lambda: (h := rack(a)).get("host-b", {}).get("stale") and h, "host-b to turn stale"
    )
    assert hosts["host-b"]["status"] == "stopped"
    assert not hosts["host-a"]["stale"]
    assert metric(a, "volagent_rack_hosts", freshness="stale") == 1

    # the human view names both, the stale one flagged
    human = volagent_cli(["status", "--rack", "--socket", a.socket_path])
    assert "host-a" in human.stdout and "host-b" in human.stdout
    assert "stale" in human.stdout


def age(path: str, days: float) -> None:
    when = time.time() - days * DAY
    os.utime(path, (when, when))


def test_gc_keeps_what_another_host_uses(
    agent_factory: AgentFactory, docker_url: str, containers: Containers
) -> None:
    a, b = two_hosts(agent_factory, docker_url)
    # r1-used/web is used by a container of host b; r1-old/web by nobody for 90 days
    used = b.ns("used", "web", "data")
    cid = containers.create([f"{used}:/data"], labels=app_labels("used", "web"))
    b.wait_for(
        lambda d: any(c["id"] == cid for c in d["containers"]), what="the container on host b"
    )
    # known to gc: host b's entry in the registry (its first usage record waits for the
    # first refresh, every host's gc reading the registry)
    path = "r1-used/web/data"
    wait_until(
        lambda: ("host-b", path) in registered(a.mount_point, "r1-used"), "host b's registry entry"
    )
    old = a.ns("old", "web", "data")
    os.makedirs(old)
    with open(os.path.join(old, "file"), "wb") as f:
        f.write(b"z" * 4096)
    for path in (old, a.ns("old", "web"), a.ns("old"), a.ns("used", "web"), a.ns("used")):
        age(path, 90)

    listing = volagent_cli(["--config", a.config_path, "gc", "--older-than", "30"])
    assert listing.returncode == 0, listing.stderr
    assert a.ns("old") in listing.stdout
    assert "r1-used" not in listing.stdout
    assert os.path.isdir(old), "listing must not delete"

    deleting = volagent_cli(["--config", a.config_path, "gc", "--older-than", "30", "--delete"])
    assert deleting.returncode == 0, deleting.stdout + deleting.stderr
    assert f"trashed {a.ns('old')}" in deleting.stdout
    assert not os.path.exists(a.ns("old"))
    trash = os.path.join(a.mount_point, ".volagent", "trash")
    [entry] = [n for n in os.listdir(trash) if os.path.isdir(os.path.join(trash, n))]
    assert os.path.getsize(os.path.join(trash, entry, "web", "data", "file")) == 4096
    assert os.path.isdir(used)
    assert os.path.isdir(b.ns("used", "web", "data"))


def test_gc_delete_refuses_while_a_host_of_the_rack_is_stale(
    agent_factory: AgentFactory, docker_url: str
) -> None:
    """Host b stops: what its containers use is no longer recorded, so --delete on host a
    refuses until the operator names host b."""
    a, b = two_hosts(agent_factory, docker_url)
    wait_until(lambda: rack(a).keys() >= {"host-a", "host-b"}, "both hosts in the rack view")
    old = a.ns("old", "web")
    os.makedirs(old)
    for path in (old, a.ns("old")):
        age(path, 90)
    assert b.stop() == 0
    wait_until(lambda: rack(a).get("host-b", {}).get("stale"), "host-b to turn stale")
    refused = volagent_cli(["--config", a.config_path, "gc", "--delete"])
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "host-b" in refused.stdout and "--ignore-stale host-b" in refused.stdout
    assert os.path.isdir(old)
    named = volagent_cli(["--config", a.config_path, "gc", "--delete", "--ignore-stale", "host-b"])
    assert named.returncode == 0, named.stdout + named.stderr
    assert not os.path.exists(a.ns("old"))


def test_a_host_is_named_by_its_instance_id(agent_factory: AgentFactory, imds: Imds) -> None:
    """Without `host_id`, the rack view names the host by the instance id from metadata."""
    agent = agent_factory(
        docker_url=NO_DOCKER,
        config={"host_id": "", "health": HEALTH, "aws": {"imds_endpoint": imds.url}},
    ).start()
    hosts = wait_until(lambda: (h := rack(agent)).get(INSTANCE_ID) and h, "the instance's entry")
    assert list(hosts) == [INSTANCE_ID]
    assert hosts[INSTANCE_ID]["instance_id"] == INSTANCE_ID
    beats = os.listdir(os.path.join(agent.mount_point, ".volagent", "hosts"))
    assert beats == [f"{INSTANCE_ID}.json"]  # no record left under the hostname
