"""The README's emergency procedure, proven: with the start guard configured in Docker's
daemon.json and volagent wedged (stopped, its socket still there, as when systemd holds it
for a broken agent), every Docker call hangs; taking the plugin out of daemon.json and
reloading dockerd (SIGHUP, what `systemctl reload docker` sends) brings Docker back at once,
without restarting dockerd or its containers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from tests.testbed import Dockerd
from tests.testbed.agent import AgentProcess

PLUGIN_DIR = Path("/run/docker/plugins")  # where dockerd looks a plugin up by name
README = Path(__file__).resolve().parents[2] / "README.md"
RECOVERY_DEADLINE_S = 60.0

pytestmark = [
    pytest.mark.docker,
    pytest.mark.root,  # dockerd and its plugin directory
]


def containers_listed(engine: Dockerd, timeout: int) -> bool:
    client = docker.DockerClient(base_url=engine.url, version="1.41", timeout=timeout)
    try:
        client.containers.list(all=True)
        return True
    except (requests.exceptions.RequestException, docker.errors.APIError):
        return False
    finally:
        client.close()


def readme_guard_off_snippet(daemon_json: Path) -> str:
    """The README's `python3 -c '...'` that takes the plugin out of daemon.json, aimed at
    the test's file: the documented command itself is what runs."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Turning the guard off") :]
    match = re.search(r"python3 -c '([^']+)'", section)
    assert match, "README.md lost its guard-off command"
    code = match.group(1)
    assert "/etc/docker/daemon.json" in code
    return code.replace("/etc/docker/daemon.json", str(daemon_json))


def test_guard_off_by_daemon_json_and_reload_while_volagent_is_broken(
    agent_factory: Callable[..., AgentProcess],
    dockerd_factory: Callable[..., Dockerd],
    tmp_path: Path,
) -> None:
    name = f"vt-{uuid.uuid4().hex[:12]}"
    PLUGIN_DIR.mkdir(parents=True, exist_ok=True)
    plugin_socket = PLUGIN_DIR / f"{name}.sock"
    agent = agent_factory(config={"guard": {"enabled": True, "plugin_socket": str(plugin_socket)}})
    agent.start()
    daemon_json = tmp_path / "daemon.json"
    settings: dict[str, Any] = {"authorization-plugins": [name], "debug": False}
    daemon_json.write_text(json.dumps(settings))
    try:
        engine = dockerd_factory("--config-file", str(daemon_json), with_image=False)
        assert containers_listed(engine, timeout=30), "Docker calls fail with the guard working"
        engine_pid = engine.proc.pid if engine.proc else 0

        # volagent wedged: dockerd's calls go to a socket nobody answers
        os.kill(agent.pid, signal.SIGSTOP)
        try:
            assert not containers_listed(engine, timeout=3), "a call passed a wedged guard"

            # the procedure: the plugin out of daemon.json (other settings kept), reload
            guard_off = readme_guard_off_snippet(daemon_json).replace('"volagent"', repr(name))
            subprocess.run([sys.executable, "-c", guard_off], check=True, timeout=30)
            assert json.loads(daemon_json.read_text()) == {"debug": False}
            os.kill(engine_pid, signal.SIGHUP)  # what `systemctl reload docker` sends
            deadline = time.monotonic() + RECOVERY_DEADLINE_S
            while not containers_listed(engine, timeout=5):
                assert time.monotonic() < deadline, f"Docker still blocked:\n{engine.log_tail()}"
                time.sleep(0.5)
            assert engine.running and engine.proc is not None and engine.proc.pid == engine_pid
        finally:
            os.kill(agent.pid, signal.SIGCONT)
    finally:
        with contextlib.suppress(FileNotFoundError):
            plugin_socket.unlink()
