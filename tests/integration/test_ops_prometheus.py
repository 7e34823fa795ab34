"""Monitoring with the real tools: a real Prometheus server (on loopback, its own data
directory) scrapes two racks, r1 with two agents sharing one EFS stand-in and r2 with one
agent on another, each target labelled with its rack, and evaluates the shipped rules. Every
dashboard query returns series for each rack and only that rack's; the dashboard's rack and
host variables list what was scraped; the recording rules give one figure per rack; an app
filled past its quota raises the quota alert for its rack; r1's stand-in hung (SIGSTOP of its
servers) raises the mount alerts for r1's hosts and not r2's, and they resolve once it
answers again.

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
class Racks:
    agents: dict[str, list[AgentProcess]]  # by rack
    addresses: dict[str, list[str]]  # the agents' metrics addresses, by rack
    scratch: dict[str, Scratch]
    export: dict[str, Path]
    prometheus: PrometheusServer


def wait_for_alerting(cond: Callable[[], Any], what: str) -> Any:
    """`wait_until` with the patience alerts need: their `for:` time and the scrape interval."""
    return wait_until(cond, what, timeout=90, interval=0.5)


def fill(export: Path, rack: str, app: str, n_bytes: int) -> None:
    d = export / f"{rack}-{app}" / "web"
    d.mkdir(parents=True, exist_ok=True)
    with (d / f"blob{time.monotonic_ns()}").open("wb") as f:
        f.write(os.urandom(n_bytes))


def quick_rules(base: Path) -> Path:
    text = (DEPLOY / "prometheus" / "volagent-rules.yml").read_text()
    path = base / "rules.yml"
    path.write_text(re.sub(r"^(\s+)for: \S+$", r"\1for: 1s", text, flags=re.M))
    return path


HOSTS = {"r1": ("host-a", "host-b"), "r2": ("host-c",)}


@pytest.fixture
def racks(
    agent_factory: AgentFactory, tmp_path: Path, nfs_ports: NfsPorts, docker_url: str
) -> Iterator[Racks]:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (Debian package prometheus: make testbed-deps)")
    agents: dict[str, list[AgentProcess]] = {}
    addresses: dict[str, list[str]] = {}
    scratch: dict[str, Scratch] = {}
    export: dict[str, Path] = {}
    for rack, hosts in HOSTS.items():
        # one filesystem per rack: a stand-in of its own
        scratch[rack] = Scratch(tmp_path / f"standin-{rack}")
        export[rack] = scratch[rack].export(nfs_ports.open_ip)
        agents[rack], addresses[rack] = [], []
        for host in hosts:
            address = f"127.0.0.1:{free_port()}"
            agents[rack].append(
                agent_factory(
                    docker_url=docker_url,
                    rack=rack,
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
                            "mount_program": scratch[rack].mount_program,
                            "probe_interval_s": 0.2,
                            "probe_timeout_s": 0.5,
                            "stalled_remount_after": 100000,
                        },
                    },
                )
            )
            addresses[rack].append(address)
    prometheus = PrometheusServer(
        tmp_path / "prometheus",
        [a for rack in HOSTS for a in addresses[rack]],
        [quick_rules(tmp_path)],
        # the rack as a target label, as the README's scrape config makes it
        target_labels={a: {"rack": rack} for rack in HOSTS for a in addresses[rack]},
    )
    try:
        for rack in HOSTS:
            for agent in agents[rack]:
                agent.start()
                agent.wait_for(lambda d: d["mount"]["state"] == "mounted", what="mounted")
        prometheus.start()
        yield Racks(agents, addresses, scratch, export, prometheus)
    finally:
        prometheus.stop()
        for rack in HOSTS:
            for agent in agents[rack]:
                stop_agent_on_standin(agent, scratch[rack])


DASHBOARD = json.loads((DEPLOY / "grafana" / "volagent-rack.json").read_text())


def dashboard_queries(rack: str) -> list[tuple[str, str]]:
    """(panel title, query) of every panel, its variables set as Grafana sets them for one
    rack and every host (an "All" of a variable is its allValue)."""
    values = {"$job": "volagent", "$rack": rack, "$instance": ".*"}

    def expand(expr: str) -> str:
        return re.sub(r"\$(job|rack|instance)\b", lambda m: values[m[0]], expr)

    return [
        (p["title"], expand(t["expr"]))
        for p in DASHBOARD["panels"]
        if p["type"] != "row"
        for t in p["targets"]
    ]


def variable_values(prom: PrometheusServer, name: str, rack: str = ".*") -> set[str]:
    """What the dashboard's query variable `name` offers, asked as Grafana asks it
    (label_values(SELECTOR, LABEL) is the LABEL of the series SELECTOR matches)."""
    (variable,) = [v for v in DASHBOARD["templating"]["list"] if v["name"] == name]
    match = re.fullmatch(r"label_values\((.*), (\w+)\)", variable["query"]["query"])
    assert match, variable["query"]
    selector = match[1].replace("$job", "volagent").replace("$rack", rack)
    return {s["metric"][match[2]] for s in prom.query(f"group by ({match[2]}) ({selector})")}


def firing_on(prom: PrometheusServer, alert: str, instances: set[str]) -> list[dict[str, str]]:
    """The alert's firing instances' labels, once they are exactly `instances` ([] before)."""
    fired = prom.firing(alert)
    return fired if {a["instance"] for a in fired} == instances else []


def test_dashboard_queries_and_alerts_against_a_real_prometheus(racks: Racks) -> None:
    prom = racks.prometheus
    fill(racks.export["r1"], "r1", "big", 100_000)
    fill(racks.export["r1"], "r1", "small", 10_000)
    fill(racks.export["r2"], "r2", "shop", 10_000)
    wait_for_alerting(lambda: prom.targets_up() == 3, "all three agents scraped")
    for rack, apps in (("r1", 2), ("r2", 1)):
        wait_for_alerting(
            lambda rack=rack, apps=apps: (
                len(
                    prom.query(
                        f'max by (app) (volagent_namespace_bytes{{service="",rack="{rack}"}})'
                    )
                )
                == apps
            ),
            f"the apps of {rack} measured",
        )

    # the variables list the racks and, per rack, its hosts
    assert variable_values(prom, "rack") == {"r1", "r2"}
    for rack in HOSTS:
        assert variable_values(prom, "instance", rack) == set(racks.addresses[rack])

    # every query of every panel returns series for each rack, and only that rack's
    def wrong(rack: str) -> list[str]:
        found = []
        for title, expr in dashboard_queries(rack):
            series = prom.query(expr)
            if not series:
                found.append(f"{rack}: {title}: {expr}: no series")
            elif any(s["metric"].get("rack", rack) != rack for s in series):
                found.append(f"{rack}: {title}: {expr}: another rack's series")
        return found

    for rack in HOSTS:
        problems: list[str] = []
        deadline = time.monotonic() + 60
        while (problems := wrong(rack)) and time.monotonic() < deadline:
            time.sleep(1)
        assert not problems, problems
    assert prom.firing("VolagentOverQuota") == []

    # the recording rules: one figure per rack
    hosts = {s["metric"]["rack"]: float(s["value"][1]) for s in prom.query("rack:up:count")}
    assert hosts == {"r1": 2.0, "r2": 1.0}

    # the walk is shared within a rack: each host of r1 exports r1's apps and no other's
    by_host = prom.query('count by (instance, rack) (volagent_namespace_bytes{service=""})')
    assert {(s["metric"]["instance"], s["metric"]["rack"]) for s in by_host} == {
        (a, rack) for rack in HOSTS for a in racks.addresses[rack]
    }
    measured_by = {u["measured_by"] for u in rack_usage(racks.agents["r1"][0])}
    assert measured_by <= {"host-a", "host-b"}

    # one app of r1 past its quota: the alert, for that rack and app, and the warning in status
    fill(racks.export["r1"], "r1", "big", 2 * QUOTA)
    firing = wait_for_alerting(lambda: prom.firing("VolagentOverQuota"), "the over-quota alert")
    assert [(a["rack"], a["app"]) for a in firing] == [("r1", "big")]
    first = racks.agents["r1"][0]
    doc = first.wait_for(lambda d: d["status"] == "degraded", what="degraded on quota")
    assert any("big" in w and "quota" in w for w in doc["warnings"])
    # the other host reads the measurement from the records on the shared filesystem, which
    # it refreshes on its own schedule: it may see it a moment later than Prometheus did
    big = wait_until(
        lambda: next(
            (u for u in rack_usage(racks.agents["r1"][1]) if u["app"] == "big" and u["over_quota"]),
            None,
        ),
        "the other host's rack view of the quota",
    )
    assert big["bytes"] > QUOTA and big["quota_bytes"] == QUOTA

    # r1's stand-in hangs: the mount alerts fire for r1's hosts, not r2's, then resolve
    servers = [
        pid for a in racks.agents["r1"] for pid in racks.scratch["r1"].server_pids(a.mount_point)
    ]
    assert len(servers) == 2, servers
    for pid in servers:
        os.kill(pid, signal.SIGSTOP)
    try:
        for alert in ("VolagentMountStalled", "VolagentMountNotHealthy"):
            firing = wait_for_alerting(
                lambda alert=alert: firing_on(prom, alert, set(racks.addresses["r1"])),
                f"{alert} firing for r1's hosts",
            )
            assert {a["rack"] for a in firing} == {"r1"}
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
