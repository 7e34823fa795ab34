"""The daemon under systemd's protocol, with this test standing in for systemd: it binds the
status and guard sockets itself (as the socket units do), hands them over at fd 3 and 4
with LISTEN_FDS/LISTEN_FDNAMES, and listens on a NOTIFY_SOCKET.

The daemon must serve the sockets it was given, send READY with its status once it serves,
WATCHDOG from its loop and STOPPING on SIGTERM; and a request made while no daemon runs
waits in the held socket's backlog and is answered by the next one, so a restart refuses
nobody."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.testbed import unixhttp
from tests.testbed.agent import AgentProcess, agent_env

READY_DEADLINE_S = 60.0
WATCHDOG_USEC = 2_000_000  # the daemon pings at least every second

# What systemd does between fork and exec: the sockets to fd 3, 4, ... and LISTEN_PID (and
# WATCHDOG_PID) set to the pid the service keeps across exec.
LAUNCHER = textwrap.dedent(
    """
    import fcntl, os, sys
    fds = [fcntl.fcntl(int(x), fcntl.F_DUPFD, 100) for x in sys.argv[1].split(",")]
    for target, fd in enumerate(fds, start=3):
        os.dup2(fd, target, inheritable=True)
        os.close(fd)
    os.environ["LISTEN_PID"] = os.environ["WATCHDOG_PID"] = str(os.getpid())
    os.environ["LISTEN_FDS"] = str(len(fds))
    os.execv(sys.executable, [sys.executable, "-m", "volagent", *sys.argv[2:]])
    """
)

pytestmark = pytest.mark.root  # the agent mounts


class SystemdStandIn:
    """The listening sockets and the notify socket of one service."""

    def __init__(self, base: Path, sockets: dict[str, str]) -> None:
        self.listeners: dict[str, socket.socket] = {}
        for name, path in sockets.items():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path)
            sock.listen(64)
            self.listeners[name] = sock
        self.notify_path = str(base / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.messages: list[str] = []

    def launch(self, agent: AgentProcess) -> subprocess.Popen[bytes]:
        fds = [s.fileno() for s in self.listeners.values()]
        env = agent_env(
            {
                "NOTIFY_SOCKET": self.notify_path,
                "WATCHDOG_USEC": str(WATCHDOG_USEC),
                "LISTEN_FDNAMES": ":".join(self.listeners),
            }
        )
        with open(agent.log_path, "ab") as out, open(agent.err_path, "ab") as err:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    LAUNCHER,
                    ",".join(map(str, fds)),
                    "--config",
                    agent.config_path,
                    "run",
                ],
                env=env,
                pass_fds=fds,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=agent.base,
            )
        agent.proc = proc  # the test bed's finalizer stops it like any agent
        return proc

    def wait_for(self, prefix: str, agent: AgentProcess, deadline_s: float) -> str:
        """The next notify message starting with `prefix` (others are kept in messages)."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            self.notify.settimeout(max(0.05, min(1.0, deadline - time.monotonic())))
            try:
                message = self.notify.recv(4096).decode()
            except TimeoutError:
                if not agent.running:
                    break
                continue
            self.messages.append(message)
            if message.startswith(prefix):
                return message
        raise AssertionError(
            f"no {prefix} from the daemon; got {self.messages[-5:]}\n{agent.diagnostics()}"
        )

    def close(self) -> None:
        for sock in self.listeners.values():
            sock.close()
        self.notify.close()


@pytest.fixture
def standin_agent(
    agent_factory: Callable[..., AgentProcess],
) -> Iterator[tuple[AgentProcess, SystemdStandIn]]:
    agent = agent_factory(config={"guard": {"enabled": True}})
    guard_path = agent.config["guard"]["plugin_socket"]
    systemd = SystemdStandIn(Path(agent.base), {"api": agent.socket_path, "guard": guard_path})
    try:
        yield agent, systemd
    finally:
        if agent.running:
            agent.stop()
        systemd.close()


@pytest.mark.docker
def test_daemon_speaks_systemd_and_restarts_without_refusing_anyone(
    standin_agent: tuple[AgentProcess, SystemdStandIn],
) -> None:
    agent, systemd = standin_agent
    socket_inode = os.stat(agent.socket_path).st_ino

    systemd.launch(agent)
    ready = systemd.wait_for("READY=1", agent, READY_DEADLINE_S)
    status_line = dict(line.split("=", 1) for line in ready.splitlines())["STATUS"]
    assert "mount local" in status_line and "docker connected" in status_line
    # it serves the socket it was handed, not one it bound itself
    assert os.stat(agent.socket_path).st_ino == socket_inode
    code, health = unixhttp.get_json(agent.socket_path, "/v1/health")
    assert code in (200, 503) and "status" in health
    code, body = unixhttp.request(
        agent.config["guard"]["plugin_socket"], "POST", "/Plugin.Activate", b"{}"
    )
    assert (code, json.loads(body)) == (200, {"Implements": ["authz"]})

    systemd.wait_for("WATCHDOG=1", agent, READY_DEADLINE_S)
    systemd.wait_for("WATCHDOG=1", agent, READY_DEADLINE_S)
    assert any(m.startswith("STATUS=") for m in systemd.messages)

    os.kill(agent.pid, signal.SIGTERM)
    systemd.wait_for("STOPPING=1", agent, READY_DEADLINE_S)
    assert agent.wait_exit() == 0

    # between two daemons: the request is accepted into the held socket's backlog ...
    pending = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    pending.settimeout(READY_DEADLINE_S)
    try:
        pending.connect(agent.socket_path)
        pending.sendall(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        # ... and answered by the next daemon
        systemd.launch(agent)
        systemd.wait_for("READY=1", agent, READY_DEADLINE_S)
        answer = b""
        while chunk := pending.recv(65536):
            answer += chunk
    finally:
        pending.close()
    assert answer.split(b"\r\n", 1)[0] in (b"HTTP/1.1 200 OK", b"HTTP/1.1 503 Service Unavailable")
    assert os.stat(agent.socket_path).st_ino == socket_inode
