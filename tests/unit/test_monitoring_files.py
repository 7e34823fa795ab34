"""The shipped Prometheus rules and Grafana dashboard: the rules pass `promtool check rules`
and their unit tests (`promtool test rules`, two racks), also with another target selector;
every alert has a summary, a description saying what to do and a runbook link to a README
heading; recording rules are named level:metric:operations and each is used; the dashboard
provisions from a file (a datasource variable, rack and host variables, no import inputs);
every metric name a rule or a panel uses is one volagent exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.unit import markdown_doc

from volagent import __version__
from volagent.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "volagent-rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "volagent-rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "volagent-rack.json"
README = DEPLOY.parent / "README.md"
SELECTOR = 'job="volagent"'
RUNBOOK_BASE = "file:///opt/volagent/README.md"  # the README every host has (install.sh)
RECORD_NAME = re.compile(r"^(?P<level>[a-z_]+):(?P<metric>[a-z_]+):(?P<ops>[a-z0-9_]+)$")
# a metric selector of an expression: a name followed by its label matchers, or bare
SELECTORS = re.compile(r"\b(?P<name>volagent_[a-z_]+|up)\b(?P<matchers>\{[^}]*\})?")
METRIC_NAME = re.compile(r"(?<![\w:])volagent_[a-z_]+\b(?!:)")  # not inside a recorded name
ALERTS = {
    "VolagentDown",
    "VolagentMountNotHealthy",
    "VolagentMountStalled",
    "VolagentMountLocal",
    "VolagentConfigReloadRefused",
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
    anchors = markdown_doc.anchors(README.read_text(encoding="utf-8"))
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        notes = rule["annotations"]
        assert set(notes) == {"summary", "description", "runbook_url"}, name
        assert "\n" not in notes["summary"] and len(notes["summary"]) <= 120, name
        assert "`" in notes["description"], f"{name}: the description names no command"
        base, _, anchor = notes["runbook_url"].partition("#")
        assert base == RUNBOOK_BASE, name
        assert anchor in anchors, f"{name}: its runbook_url names no heading of README.md"
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == ALERTS, "every alert has a promtool unit test"


def test_every_alert_aggregates_by_rack() -> None:
    # alerts keep the target's labels (rack among them) or aggregate by rack
    for rule in rules():
        for by in re.findall(r"\bby \(([^)]*)\)", str(rule["expr"])):
            if "le" in by.split(", "):
                continue  # a histogram's buckets
            assert "rack" in by.split(", "), f"{rule.get('alert') or rule.get('record')}: by ({by})"


def test_every_metric_selector_of_the_rules_names_the_configurable_selector() -> None:
    for rule in rules():
        for match in SELECTORS.finditer(str(rule["expr"])):
            assert SELECTOR in (match["matchers"] or ""), (
                f"{rule.get('alert') or rule.get('record')}: {match[0]} lacks {SELECTOR}"
            )


def test_the_rules_and_their_tests_pass_with_another_selector(tmp_path: Path) -> None:
    # what the rules file's header tells an operator to do for another selector
    tool = promtool()
    rules_copy = tmp_path / RULES.name
    rules_copy.write_text(RULES.read_text().replace(SELECTOR, 'job="nodes",role="rack"'))
    checked = subprocess.run(
        [tool, "check", "rules", str(rules_copy)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # another job name carries over to the tests as well
    for source in (RULES, RULE_TESTS):
        text = source.read_text().replace(SELECTOR, 'job="nodes"')
        (tmp_path / source.name).write_text(text.replace("job: volagent", "job: nodes"))
    out = subprocess.run(
        [tool, "test", "rules", str(tmp_path / RULE_TESTS.name)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_recording_rules_are_named_by_level_metric_operations_and_all_used() -> None:
    used = " ".join(expr for _, expr in dashboard_queries())
    used += " ".join(str(r["expr"]) for r in rules() if "alert" in r)
    for rule in rules():
        if "record" not in rule:
            continue
        name = rule["record"]
        match = RECORD_NAME.match(name)
        assert match, f"{name} is not level:metric:operations"
        assert "rack" in match["level"].split("_"), f"{name}: aggregated by rack"
        # a ratio is named a_per_b: a is the metric it divides
        measured = match["metric"].split("_per_")[0]
        assert measured in str(rule["expr"]), f"{name}: names a metric it does not use"
        assert re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", used), f"{name} is not used"


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


def test_the_dashboard_provisions_from_a_file_with_datasource_rack_and_host_variables() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "volagent-rack"
    # file provisioning substitutes nothing: no import inputs, no ${DS_...} placeholders
    assert "__inputs" not in doc and "__requires" not in doc
    assert "${DS_" not in DASHBOARD.read_text()
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("rack", "instance"):
        assert variables[name]["type"] == "query", name
        assert variables[name]["datasource"]["uid"] == "${datasource}", name
        assert variables[name]["includeAll"] and variables[name]["multi"], name
    panels = [p for p in doc["panels"] if p["type"] != "row"]
    assert len(panels) >= 12
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            # every query follows the rack chosen above
            assert 'rack=~"$rack"' in target["expr"], f"{panel['title']}: {target['expr']}"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]


def test_metrics_carry_the_version_the_process_and_the_refused_reloads_from_the_start() -> None:
    text = Metrics().render().decode()
    samples = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert samples[f'volagent_build_info{{version="{__version__}"}}'] == "1.0"
    # the alert on refused reloads sees a series at 0 before the first one
    assert samples['volagent_config_reloads_total{result="refused"}'] == "0.0"
    assert float(samples["process_resident_memory_bytes"]) > 0
    assert float(samples["process_open_fds"]) > 0
    assert float(samples["process_start_time_seconds"]) > 0


def schema_drops(doc: dict[str, Any]) -> list[str]:
    """What of `doc` Grafana's dashboard schema does not hold: the paths a decode and encode
    with the Grafana Foundation SDK (generated from Grafana's schemas, panel plugins
    included) loses or changes."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    again = json.loads(json.dumps(Dashboard.from_json(doc), cls=JSONEncoder))
    lost: list[str] = []

    def compare(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key, value in a.items():
                if key in b:
                    compare(value, b[key], f"{path}/{key}")
                else:
                    lost.append(f"{path}/{key}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                compare(x, y, f"{path}[{i}]")
        elif a != b:
            lost.append(f"{path}: {a!r} became {b!r}")

    compare(doc, again, "")
    return lost


def test_the_dashboard_fits_grafanas_schema() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert schema_drops(doc) == []
    # the check sees what the schema does not know
    doc["panels"][1]["colour"] = "red"
    doc["templating"]["list"][0]["definition"] = "prometheus"
    assert schema_drops(doc) == ["/templating/list[0]/definition", "/panels[1]/colour"]
