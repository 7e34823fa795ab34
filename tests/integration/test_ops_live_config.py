"""Issue 5 acceptance: the config file edited while the agent runs. A valid edit applies
without a restart (owner and mode of new directories, labels, log level); a broken edit is
refused, shown in the status warnings, and the agent keeps running on the previous config;
SIGHUP reloads too."""

from __future__ import annotations

import os
import signal

import docker.errors
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.testbed import (
    AgentProcess,
    Containers,
    app_labels,
    ensure_image,
    unixhttp,
)
from tests.testbed.agent import all_in, toml_text
from tests.testbed.disk import owner_mode
from tests.testbed.plugin_home import PluginHome
from tests.testbed.waiting import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.mount]


def reloads(agent: AgentProcess, result: str) -> float:
    status, body = unixhttp.request(agent.socket_path, "GET", "/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name == "volagent_config_reloads_total" and s.labels.get("result") == result:
                return float(s.value)
    return 0.0


def edit(agent: AgentProcess, text: str) -> None:
    """As an editor saves: a new file renamed over the old one."""
    tmp = agent.config_path + ".new"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.rename(tmp, agent.config_path)


def prepared(agent: AgentProcess, containers: Containers, path: str, **labels: str) -> str:
    cid = containers.create([f"{path}:/d"], labels=labels or app_labels("live", "web"))
    agent.wait_for(lambda d: all_in(d, [cid], ["ready"]), what=f"{path} ready")
    return cid


def test_edits_apply_live_and_a_broken_one_is_refused(
    agent: AgentProcess, containers: Containers
) -> None:
    prepared(agent, containers, agent.ns("live", "web", "one"))
    assert owner_mode(agent.ns("live", "web", "one")) == (0, 0, 0o755)

    # a valid edit: new directories get the new owner and mode, no restart
    agent.config["directories"] = {"owner": "4321:4321", "mode": "0750"}
    edit(agent, toml_text(agent.config))
    wait_until(lambda: reloads(agent, "applied") >= 1, "the edit to be applied")
    prepared(agent, containers, agent.ns("live", "web", "two"))
    assert owner_mode(agent.ns("live", "web", "two")) == (4321, 4321, 0o750)

    # a broken edit: refused, reported, the previous config stays in force
    edit(agent, toml_text(agent.config) + "\n[directories]\nownr = 1\n")
    doc = agent.wait_for(
        lambda d: any("refused" in w for w in d["warnings"]), what="the refusal in the warnings"
    )
    assert any("directories" in w for w in doc["warnings"] if "refused" in w)
    assert reloads(agent, "refused") >= 1
    assert any(e.get("event") == "config_reload_refused" for e in agent.log_events())
    prepared(agent, containers, agent.ns("live", "web", "three"))
    assert owner_mode(agent.ns("live", "web", "three")) == (4321, 4321, 0o750)
    assert agent.running

    # fixed again, with other labels: the refusal goes away and the new label names the app
    agent.config["docker"] = {**agent.config["docker"], "app_label": "example.app"}
    edit(agent, toml_text(agent.config))
    agent.wait_for(
        lambda d: not any("refused" in w for w in d["warnings"]), what="the warning to clear"
    )
    path = agent.ns("relabeled", "web", "x")
    prepared(
        agent,
        containers,
        path,
        **{"example.app": "relabeled", "convox.service": "web"},
    )
    assert owner_mode(path) == (4321, 4321, 0o750)

    # SIGHUP reloads the same file even though it did not change
    applied = reloads(agent, "applied")
    os.kill(agent.pid, signal.SIGHUP)
    wait_until(lambda: reloads(agent, "applied") > applied, "the SIGHUP reload")

    # the log level applies to loggers made long before the edit
    agent.config["log_level"] = "warning"
    applied = reloads(agent, "applied")
    edit(agent, toml_text(agent.config))
    wait_until(lambda: reloads(agent, "applied") > applied, "the log level edit")
    quiet = agent.ns("relabeled", "web", "quiet")
    prepared(agent, containers, quiet, **{"example.app": "relabeled", "convox.service": "web"})
    assert owner_mode(quiet)[:2] == (4321, 4321)
    infos = [e for e in agent.log_events() if e.get("path") == quiet]
    assert infos == [], "info lines logged after the level became warning"
    assert agent.running


def test_guard_policy_applies_live(busybox_rootfs: str) -> None:
    """`[guard] violations` edited from deny to warn: the same cross-app bind that was
    denied is let through, without a restart."""
    home = PluginHome()
    engine = home.dockerd("--authorization-plugin=volagent")
    agent = home.agent(engine.url)
    made: Containers | None = None
    try:
        agent.start()  # dockerd activates its plugin at start: the agent must answer
        engine.start()
        ensure_image(engine.client(), busybox_rootfs)
        made = Containers(engine.url)
        cross_app = f"{agent.ns('other', 'web', 'data')}:/d"
        with pytest.raises(docker.errors.APIError, match="authorization denied by plugin"):
            made.create([cross_app], labels=app_labels("evil", "web"))
        agent.config["guard"] = {**agent.config["guard"], "violations": "warn"}
        edit(agent, toml_text(agent.config))
        wait_until(lambda: reloads(agent, "applied") >= 1, "the edit to be applied")
        cid = made.create([cross_app], labels=app_labels("evil", "web"))
        doc = agent.wait_for(lambda d: all_in(d, [cid], ["violation"]), what="the violation")
        assert doc["guard"]["denied"] >= 1
        assert not os.path.exists(agent.ns("other"))  # let through, yet nothing created
    finally:
        try:
            if made is not None:
                made.cleanup()  # removals go through the guard: before the agent stops
                made.close()
        finally:
            engine.stop()
            agent.close()
            home.close()
