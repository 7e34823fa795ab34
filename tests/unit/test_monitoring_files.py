"""The shipped Prometheus rules and Grafana dashboard: the rules pass `promtool check rules`
and their unit tests (`promtool test rules`), every alert says what to do, and every metric
name a rule or a panel uses is one volagent exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from volagent.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "volagent-rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "volagent-rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "volagent-rack.json"
METRIC_NAME = re.compile(r"\bvolagent_[a-z_]+\b")
ALERTS = {
    "VolagentDown",
    "VolagentMountNotHealthy",
    "VolagentMountStalled",
    "VolagentRemountLoop",
    "VolagentDockerStreamDown",
    "VolagentGuardDenying",
    "VolagentGuardFailing",
    "VolagentLateVolumes",
    "VolagentNamespaceViolations",
    "VolagentPrepareFailures",
    "VolagentHeartbeatMissing",
    "VolagentHostStale",
    "VolagentOverQuota",
    "VolagentUsageNotMeasured",
}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian package prometheus: make testbed-deps)")
    return found


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def exported_names() -> set[str]:
    """Every sample name /metrics can carry."""
    names = set()
    for family in Metrics().registry.collect():
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_count", "_sum"),
        }.get(family.type, ("",))
        names.update(family.name + s for s in suffixes)
    return names


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every query of the dashboard."""
    doc = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in doc["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    tool = promtool()
    for argv in ([tool, "check", "rules", str(RULES)], [tool, "test", "rules", str(RULE_TESTS)]):
        out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_is_there_and_says_what_to_do() -> None:
    alerts = {r["alert"]: r for r in rules() if "alert" in r}
    assert set(alerts) == ALERTS
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        summary = rule["annotations"]["summary"]
        assert len(summary) > 60 and "`" in summary, f"{name}: the summary names no command"
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == ALERTS, "every alert has a promtool unit test"


def test_rules_and_panels_use_only_exported_metrics() -> None:
    exported = exported_names()
    used = {(f"rule {r.get('alert') or r.get('record')}", str(r["expr"])) for r in rules()}
    used |= {(f"panel {title}", expr) for title, expr in dashboard_queries()}
    unknown = sorted(
        f"{where}: {name}"
        for where, expr in used
        for name in METRIC_NAME.findall(expr)
        if name not in exported
    )
    assert not unknown, unknown


def test_every_panel_has_a_query_and_the_dashboard_imports_with_a_datasource_input() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "volagent-rack"
    assert doc["__inputs"][0]["name"] == "DS_PROMETHEUS"
    panels = [p for p in doc["panels"] if p["type"] != "row"]
    assert len(panels) >= 12
    assert all(p["targets"] and all(t["expr"].strip() for t in p["targets"]) for p in panels)
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
