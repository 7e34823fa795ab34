"""The mount side inside the real daemon, against the EFS stand-in: a hung mount leaves the
socket and `volagent status` answering, and while nothing is mounted `docker run` cannot
write to local disk under the mount point.

The agent mounts type nfs from the stand-in's address, so no name is resolved and no AWS API
is asked (discovery has its own tests in test_mount_efs.py).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from tests.integration.aws_fixtures import NfsPorts, nfs_ports
from tests.integration.conftest import AgentFactory
from tests.integration.efs_standin import Scratch, stop_agent_on_standin
from tests.integration.testbed import AgentProcess, Containers
from tests.integration.testbed.agent import container, volagent_cli
from tests.integration.testbed.containers import app_labels
from tests.integration.testbed.waiting import wait_until

pytestmark = [pytest.mark.mount, pytest.mark.docker]
_FIXTURES = (nfs_ports,)


@dataclass
class StandinAgent:
    agent: AgentProcess
    scratch: Scratch
    host: str

    def mount_state(self) -> str:
        return str(self.agent.status()["mount"]["state"])


@pytest.fixture
def standin_agent(
    agent_factory: AgentFactory, tmp_path: Path, nfs_ports: NfsPorts
) -> Iterator[StandinAgent]:
    scratch = Scratch(tmp_path)
    host = nfs_ports.open_ip
    agent = agent_factory(
        config={
            "mount": {
                "type": "nfs",
                "source": f"{host}:/",
                "mount_program": scratch.mount_program,
                "probe_interval_s": 0.2,
                "probe_timeout_s": 0.5,
                "stalled_remount_after": 1000,
            }
        }
    )
    try:
        yield StandinAgent(agent, scratch, host)
    finally:
        stop_agent_on_standin(agent, scratch)


def test_a_hung_mount_is_stalled_and_status_still_answers(standin_agent: StandinAgent) -> None:
    s = standin_agent
    s.scratch.export(s.host)
    s.agent.start()
    s.agent.wait_for(lambda d: d["mount"]["state"] == "mounted", what="mounted")
    pid = s.scratch.server_pid(s.agent.mount_point)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        doc = s.agent.wait_for(lambda d: d["mount"]["state"] == "stalled", what="stalled")
        assert doc["status"] == "critical" and "not answering" in doc["mount"]["error"]
        status, health = s.agent.health()
        assert status == 503 and health["healthy"] is False
        cli = volagent_cli(["status", "--json", "--socket", s.agent.socket_path])
        assert cli.returncode == 2, cli.stderr
        assert json.loads(cli.stdout)["mount"]["state"] == "stalled"
    finally:
        os.kill(pid, signal.SIGCONT)
    s.agent.wait_for(lambda d: d["mount"]["state"] == "mounted", what="mounted again")


def _start_refused(s: StandinAgent) -> None:
    """The agent started while the server refuses it: the mount keeps failing."""
    s.scratch.refuse(s.host, "access denied by server while mounting")
    s.agent.start()
    s.agent.wait_for(
        lambda d: "access denied" in (d["mount"]["error"] or ""), what="the mount failing"
    )


def _let_in(s: StandinAgent) -> None:
    """The server lets the agent in: mounted."""
    s.scratch.export(s.host)
    s.scratch.refuse(s.host, None)
    s.agent.wait_for(lambda d: d["mount"]["state"] == "mounted", what="mounted")


def test_docker_run_while_unmounted_writes_nothing_locally(
    standin_agent: StandinAgent, containers: Containers
) -> None:
    s = standin_agent
    _start_refused(s)
    assert s.mount_state() == "mounting"
    bind = f"{s.agent.ns('a', 's', 'x')}:/x"
    cid = containers.create([bind], labels=app_labels("a", "s"), command=("true",))
    with pytest.raises(docker.errors.APIError):
        containers.start(cid)  # Docker's own mkdir of the bind source is refused
    assert os.listdir(s.agent.mount_point) == []
    doc = s.agent.wait_for(lambda d: container(d, cid) is not None, what="the container")
    entry = container(doc, cid)
    assert entry is not None and entry["volumes"][0]["state"] != "ready"
    # the server lets us in: mounted, and the directory is made on the shared filesystem
    _let_in(s)
    s.agent.wait_for(
        lambda d: (c := container(d, cid)) is not None and c["volumes"][0]["state"] == "ready",
        what="the volume ready",
    )
    assert Path(s.scratch.exports, s.host, "r1-a", "s", "x").is_dir()


def test_a_restart_always_container_refused_while_unmounted_starts_once_mounted(
    standin_agent: StandinAgent, containers: Containers
) -> None:
    # as at boot with the server away: Docker's start of a `--restart always` container
    # fails on the locked mount point, and Docker never tries again by itself
    s = standin_agent
    _start_refused(s)
    bind = f"{s.agent.ns('a', 's', 'held')}:/x"
    cid = containers.create([bind], labels=app_labels("a", "s"), command=("sleep", "300"))
    containers.api.update_container(cid, restart_policy={"Name": "always"})
    with pytest.raises(docker.errors.APIError):
        containers.start(cid)
    assert s.agent.mount_point in containers.api.inspect_container(cid)["State"]["Error"]
    assert os.listdir(s.agent.mount_point) == []
    _let_in(s)
    wait_until(
        lambda: containers.api.inspect_container(cid)["State"]["Running"],
        what="the held container started",
    )
    assert Path(s.scratch.exports, s.host, "r1-a", "s", "held").is_dir()
    # Docker reports it running as soon as volagent's start call lands, a moment before
    # volagent logs that it made that call
    wait_until(
        lambda: any(e.get("event") == "held_container_started" for e in s.agent.log_events()),
        what="volagent's log of the held start",
    )
