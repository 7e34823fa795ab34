"""Issue 13 acceptance, with the real tools: a real Prometheus server (on loopback, its own
data directory) scrapes two agents that share one EFS stand-in, with the shipped rules.
Every dashboard query returns series; an app filled past its quota raises the quota alert;
the stand-in hung (SIGSTOP of its servers) raises the mount alerts for both hosts, and they
resolve once it answers again.

The rules are loaded as shipped except their `for:` durations, shortened to one second so
the test takes seconds, not minutes (their timing is covered by the promtool unit tests).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.testbed import AgentFactory, AgentProcess
from tests.testbed.aws import NfsPorts
from tests.testbed.efs_standin import Scratch, stop_agent_on_standin
from tests.testbed.prometheus import PrometheusServer, free_port
from tests.testbed.waiting import wait_until

pytestmark = [pytest.mark.mount, pytest.mark.docker]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
QUOTA = 1 << 20  # every app's quota: 1 MiB


@dataclass
class Rack:
    agents: list[AgentProcess]
    addresses: list[str]
    scratch: Scratch
    export: Path
    prometheus: PrometheusServer


def wait_for_alerting(cond: Callable[[], Any], what: str) -> Any:
    """`wait_until` with the patience alerts need: their `for:` time and the scrape interval."""
    return wait_until(cond, what, timeout=90, interval=0.5)


def fill(export: Path, app: str, n_bytes: int) -> None:
    d = export / f"r1-{app}" / "web"
    d.mkdir(parents=True, exist_ok=True)
    with (d / f"blob{time.monotonic_ns()}").open("wb") as f:
        f.write(os.urandom(n_bytes))


def quick_rules(base: Path) -> Path:
    text = (DEPLOY / "prometheus" / "volagent-rules.yml").read_text()
    path = base / "rules.yml"
    path.write_text(re.sub(r"^(\s+)for: \S+$", r"\1for: 1s", text, flags=re.M))
    return path


@pytest.fixture
def rack(
    agent_factory: AgentFactory, tmp_path: Path, nfs_ports: NfsPorts, docker_url: str
) -> Iterator[Rack]:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (Debian package prometheus: make testbed-deps)")
    scratch = Scratch(tmp_path / "standin")
    export = scratch.export(nfs_ports.open_ip)
    agents, addresses = [], []
    for host in ("host-a", "host-b"):
        address = f"127.0.0.1:{free_port()}"
        agents.append(
            agent_factory(
                docker_url=docker_url,
                config={
                    "host_id": host,
                    "health": {"heartbeat_interval_s": 0.3, "stale_after_s": 3.0},
                    "api": {"metrics_address": address},
                    "usage": {"ops_per_second": 2000, "interval_s": 1},
                    # a default (the test bed's TOML writer has no nested tables)
                    "quotas": {"over_quota": "warn", "default": "1MiB"},
                    "mount": {
                        "type": "nfs",
                        "source": f"{nfs_ports.open_ip}:/",
                        "mount_program": scratch.mount_program,
                        "probe_interval_s": 0.2,
                        "probe_timeout_s": 0.5,
                        "stalled_remount_after": 100000,
                    },
                },
            )
        )
        addresses.append(address)
    prometheus = PrometheusServer(tmp_path / "prometheus", addresses, [quick_rules(tmp_path)])
    try:
        for agent in agents:
            agent.start()
            agent.wait_for(lambda d: d["mount"]["state"] == "mounted", what="mounted")
        prometheus.start()
        yield Rack(agents, addresses, scratch, export, prometheus)
    finally:
        prometheus.stop()
        for agent in agents:
            stop_agent_on_standin(agent, scratch)


def dashboard_queries() -> list[tuple[str, str]]:
    doc = json.loads((DEPLOY / "grafana" / "volagent-rack.json").read_text())
    return [
        (p["title"], t["expr"]) for p in doc["panels"] if p["type"] != "row" for t in p["targets"]
    ]


def test_dashboard_queries_and_alerts_against_a_real_prometheus(rack: Rack) -> None:
    prom = rack.prometheus
    fill(rack.export, "big", 100_000)
    fill(rack.export, "small", 10_000)
    wait_for_alerting(lambda: prom.targets_up() == 2, "both agents scraped")
    wait_for_alerting(
        lambda: len(prom.query('max by (app) (volagent_namespace_bytes{service=""})')) == 2,
        "both apps measured",
    )

    # every query of every panel returns series
    def empty() -> list[str]:
        return [f"{title}: {expr}" for title, expr in dashboard_queries() if not prom.query(expr)]

    missing: list[str] = []
    deadline = time.monotonic() + 60
    while (missing := empty()) and time.monotonic() < deadline:
        time.sleep(1)
    assert not missing, missing
    assert prom.firing("VolagentOverQuota") == []

    # the walk is shared: each host measured some namespace, every host exports both apps
    by_host = prom.query("count by (instance) (volagent_namespace_bytes{service=''})")
    assert {s["metric"]["instance"] for s in by_host} == set(rack.addresses)
    measured_by = {u["measured_by"] for u in rack_usage(rack.agents[0])}
    assert measured_by <= {"host-a", "host-b"}

    # one app past its quota: the alert, and the warning in status
    fill(rack.export, "big", 2 * QUOTA)
    firing = wait_for_alerting(lambda: prom.firing("VolagentOverQuota"), "the over-quota alert")
    assert [a["app"] for a in firing] == ["big"]
    doc = rack.agents[0].wait_for(lambda d: d["status"] == "degraded", what="degraded on quota")
    assert any("big" in w and "quota" in w for w in doc["warnings"])
    # the other host reads the measurement from the records on the shared filesystem, which
    # it refreshes on its own schedule: it may see it a moment later than Prometheus did
    big = wait_until(
        lambda: next(
            (u for u in rack_usage(rack.agents[1]) if u["app"] == "big" and u["over_quota"]),
            None,
        ),
        "the other host's rack view of the quota",
    )
    assert big["bytes"] > QUOTA and big["quota_bytes"] == QUOTA

    # the stand-in hangs: the mount alerts fire for both hosts, then resolve
    servers = [pid for a in rack.agents for pid in rack.scratch.server_pids(a.mount_point)]
    assert len(servers) == 2, servers
    for pid in servers:
        os.kill(pid, signal.SIGSTOP)
    try:
        for alert in ("VolagentMountStalled", "VolagentMountNotHealthy"):
            wait_for_alerting(
                lambda alert=alert: (
                    {a["instance"] for a in prom.firing(alert)} == set(rack.addresses)
                ),
                f"{alert} firing for both hosts",
            )
    finally:
        for pid in servers:
            os.kill(pid, signal.SIGCONT)
    for alert in ("VolagentMountStalled", "VolagentMountNotHealthy"):
        wait_for_alerting(lambda alert=alert: not prom.firing(alert), f"{alert} resolved")


def rack_usage(agent: AgentProcess) -> list[dict[str, Any]]:
    from tests.testbed import volagent_cli

    out = volagent_cli(["status", "--rack", "--json", "--socket", agent.socket_path])
    assert out.returncode in (0, 1, 2), out.stderr
    usage = json.loads(out.stdout)["usage"]
    assert isinstance(usage, list)
    return usage
