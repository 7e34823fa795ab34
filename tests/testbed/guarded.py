"""An engine started with `--authorization-plugin=volagent` in a private plugin home, and
the agent serving its guard: one agent at a time answers the socket the home holds."""

from __future__ import annotations

from typing import Any

import docker.errors
import pytest

from tests.testbed.agent import AgentProcess
from tests.testbed.containers import Containers, app_labels
from tests.testbed.dockerd import Dockerd
from tests.testbed.plugin_home import PluginHome

# the secret another app keeps, for the attacks on the guard to reach for
VICTIM_SECRET = "other app's data"


def denied(excinfo: pytest.ExceptionInfo[docker.errors.APIError]) -> str:
    """The text of a Docker error that volagent's start guard caused; fails on any other."""
    text = str(excinfo.value)
    assert "authorization denied by plugin volagent" in text, text
    return text


class Guarded:
    """The module's engine and plugin home; one agent at a time serves the held socket."""

    def __init__(self, home: PluginHome, engine: Dockerd) -> None:
        self.home = home
        self.engine = engine
        self.agent: AgentProcess | None = None

    def start_agent(self, **kwargs: Any) -> AgentProcess:
        return self.use(self.home.agent(self.engine.url, **kwargs))

    def use(self, agent: AgentProcess) -> AgentProcess:
        """Replaces the serving agent by `agent`, started, its mount established (until
        then the mount point is the locked directory underneath)."""
        self.stop_agent()
        self.agent = agent
        agent.start()
        agent.wait_for(lambda d: d["mount"]["state"] in ("mounted", "local"), what="the mount")
        return agent

    def stop_agent(self, graceful: bool = True) -> None:
        """Ends the serving agent. `graceful=False` kills it, for a test's clean-up: a
        graceful stop waits out the guard's linger (2 s) for dockerd's idle connections,
        most of a short guard test's time; the tests of the stop itself stop gracefully."""
        if self.agent is not None:
            if not graceful and self.agent.running:
                self.agent.kill()
            self.agent.close()
            self.agent = None


def still_serving(bed: Guarded, containers: Containers, owner: str = "33:33") -> None:
    """After whatever was refused, a legitimate run of app evil works, its directory
    prepared with its owner before it started."""
    agent = bed.agent
    assert agent is not None
    cid = containers.run(
        [agent.ns("evil", "web", "ok") + ":/data"],
        labels=app_labels("evil", "web", owner=owner, **{"volagent.test": "1"}),
        command=["stat", "-c", "%u:%g", "/data"],
    )
    assert containers.wait(cid) == 0
    assert containers.logs(cid).strip() == owner
