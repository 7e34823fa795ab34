"""The local socket end to end: a real Unix socket served by HttpServer + StatusApi on a real
AgentState in a loop thread, driven by raw clients, another uid, and the `volagent` CLI."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from tests.unit.factories import make_state
from volagent import __version__
from volagent.api import client
from volagent.api.server import StatusApi
from volagent.daemon.socket_access import access_for
from volagent.state import AgentState, ContainerRecord, VolumeRecord, now_iso

T = TypeVar("T")
NOBODY = 65534


class ServedApi:
    """An AgentState behind a real socket, its loop in a thread; `on_loop` runs a function
    there, since the state belongs to the loop."""

    def __init__(self) -> None:
        # not under pytest's 0700 tmp dir: another uid must reach the socket
        self.dir = tempfile.mkdtemp(prefix="volagent-api-")
        os.chmod(self.dir, 0o755)  # noqa: S103 - traversable by the other uid on purpose
        self.socket = os.path.join(self.dir, "api.sock")
        self.actions: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        # as the agent starts: no host id yet (the CLI's first line names none), nothing known
        self.state = self.on_loop(lambda: make_state(host="", mount_state=None, docker_state=None))
        api = StatusApi(self.state, self._reconcile, self._remount, hosts=self._hosts)
        self.server = api.server()
        # as the daemon makes it, for a group every Debian host has (nobody's own)
        access = access_for("nogroup")
        self._wait(self.server.start_unix(self.socket, mode=access.mode, group=access.gid))

    async def _reconcile(self) -> dict[str, Any]:
        self.actions.append("reconcile")
        return {"reconciled": True}

    async def _remount(self) -> dict[str, Any]:
        self.actions.append("remount")
        return {"remount": "requested"}

    async def _hosts(self) -> list[dict[str, Any]]:
        return [{"host": "h1", "instance_id": "i-1", "status": "ok", "last_seen": now_iso()}]

    def _wait(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def on_loop(self, fn: Callable[[], T]) -> T:
        async def call() -> T:
            return fn()

        result: T = self._wait(call())
        return result

    def close(self) -> None:
        try:
            self._wait(self.server.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def served() -> Iterator[ServedApi]:
    api = ServedApi()
    try:
        yield api
    finally:
        api.close()


def _healthy(state: AgentState) -> None:
    state.set_mount_state("mounted")
    state.set_docker_state("connected")


def _raw(path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(path)
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLAGENT_")}
    env["NO_COLOR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "volagent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_health_follows_the_state(served: ServedApi) -> None:
    status, doc = client.get_json(served.socket, "/v1/health")
    assert (status, doc) == (503, {"healthy": False, "status": "critical"})
    served.on_loop(lambda: _healthy(served.state))
    status, doc = client.get_json(served.socket, "/v1/health")
    assert (status, doc) == (200, {"healthy": True, "status": "ok"})


def test_root_may_post_and_the_socket_is_for_its_group(served: ServedApi) -> None:
    st = os.stat(served.socket)
    assert (st.st_mode & 0o777, st.st_gid) == (0o660, NOBODY)
    status, _, body = client.request(served.socket, "POST", "/v1/reconcile", b"{}")
    if os.geteuid() == 0:
        assert (status, json.loads(body)) == (200, {"reconciled": True})
        assert served.actions == ["reconcile"]
    else:
        assert status == 403


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
def test_non_root_post_gets_403(served: ServedApi) -> None:
    # fork and drop to nobody: the interpreter's own files may be unreadable to that uid
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            answers = [
                client.request(served.socket, "POST", path, b"{}")
                for path in ("/v1/reconcile", "/v1/remount")
            ]
            health = client.request(served.socket, "GET", "/v1/health")
            os.write(write_end, json.dumps([a[0] for a in [*answers, health]]).encode())
            os.write(write_end, b"\n" + answers[0][2])
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        out = pipe.read()
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0
    codes, body = out.split(b"\n", 1)
    assert json.loads(codes) == [403, 403, 503]
    assert "root only" in json.loads(body)["error"]
    assert f"uid {NOBODY}" in json.loads(body)["error"]
    assert served.actions == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
def test_a_user_outside_the_group_is_told_permission_denied(served: ServedApi) -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.setgroups([])
            os.setgid(4321)
            os.setuid(4321)
            try:
                client.request(served.socket, "GET", "/v1/health")
                os.write(write_end, b"answered")
            except client.Unreachable as exc:
                os.write(write_end, str(exc).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        out = pipe.read().decode()
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0
    assert out.startswith(f"permission denied on {served.socket}"), out


def test_garbage_gets_400_oversized_413_and_serving_goes_on(served: ServedApi) -> None:
    served.on_loop(lambda: _healthy(served.state))
    garbage = _raw(served.socket, os.urandom(512) + b"\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400 ")
    assert _raw(served.socket, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n").startswith(
        b"HTTP/1.1 400 "
    )
    big = b"POST /v1/reconcile HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000
    assert _raw(served.socket, big).startswith(b"HTTP/1.1 413 ")
    head = b"GET /v1/status HTTP/1.1\r\n" + b"X-Pad: " + b"p" * 70000 + b"\r\n\r\n"
    assert _raw(served.socket, head).startswith(b"HTTP/1.1 431 ")
    # a half-open client holds its connection while others are served
    with socket.socket(socket.AF_UNIX) as stuck:
        stuck.connect(served.socket)
        stuck.sendall(b"GET /v1/status HTTP/1.1\r\nHost")
        status, doc = client.get_json(served.socket, "/v1/health")
        assert (status, doc["status"]) == (200, "ok")
    assert client.get_json(served.socket, "/v1/nothing")[0] == 404
    assert client.request(served.socket, "DELETE", "/v1/status")[0] == 405


def test_metrics_over_the_socket(served: ServedApi) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    served.on_loop(lambda: _healthy(served.state))
    status, headers, body = client.request(served.socket, "GET", "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"volagent_mount_up", "volagent_docker_connected"} <= names


def test_cli_status_exit_codes_against_a_real_socket(served: ServedApi) -> None:
    sock = served.socket
    out = _cli("status", "--socket", sock)
    assert out.returncode == 2, out.stderr
    assert out.stdout.startswith(f"volagent {__version__}: CRITICAL")

    served.on_loop(lambda: _healthy(served.state))
    out = _cli("status", "--socket", sock, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert (doc["status"], doc["healthy"], doc["mount"]["state"]) == ("ok", True, "mounted")
    assert "hosts" not in doc

    def add_late() -> None:
        vol = VolumeRecord("/volumes/r-a/web/data", "/data", False)
        served.state.upsert_container(ContainerRecord("c1", "web-1", "r", "a", "web", [vol]))
        served.state.set_volume_state(vol, "late")

    served.on_loop(add_late)
    out = _cli("status", "--socket", sock)
    assert out.returncode == 1, out.stderr
    assert out.stdout.startswith(f"volagent {__version__}: DEGRADED")
    assert "x late      web-1 /data -> /volumes/r-a/web/data" in out.stdout

    out = _cli("status", "--rack", "--json", "--socket", sock)
    assert out.returncode == 1
    assert [h["host"] for h in json.loads(out.stdout)["hosts"]] == ["h1"]
    out = _cli("status", "--rack", "--socket", sock)
    assert "Rack hosts 1 sharing this filesystem" in out.stdout

    served.on_loop(lambda: served.state.set_mount_state("stalled", "probe timed out"))
    assert _cli("status", "--socket", sock).returncode == 2


def test_cli_status_finds_the_socket_by_config_and_env(served: ServedApi) -> None:
    served.on_loop(lambda: _healthy(served.state))
    cfg = os.path.join(served.dir, "volagent.toml")
    with open(cfg, "w") as f:
        f.write(f'rack = "r"\n[api]\nsocket = "{served.socket}"\n')
    assert _cli("status", "--config", cfg).returncode == 0
    env = {**os.environ, "VOLAGENT_SOCKET": served.socket, "NO_COLOR": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "volagent", "status", "--json"],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0


def test_cli_status_unreachable_says_which_socket(served: ServedApi) -> None:
    missing = os.path.join(served.dir, "missing.sock")
    out = _cli("status", "--socket", missing)
    assert out.returncode == 3
    assert missing in out.stderr
    assert "systemctl status volagent" in out.stderr
    # a socket file nobody listens on any more
    dead = os.path.join(served.dir, "dead.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(dead)
    out = _cli("status", "--json", "--socket", dead)
    assert out.returncode == 3
    assert f"nothing listens on {dead}" in out.stderr
    assert out.stdout == ""


def test_status_render_path_stays_light(served: ServedApi) -> None:
    served.on_loop(lambda: _healthy(served.state))
    probe = (
        "import sys\n"
        "from volagent import cli\n"
        "rc = cli.main(['status', '--socket', sys.argv[1]])\n"
        "print(rc, ' '.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, served.socket],
        # not measured for coverage: the measuring would bring in modules of its own
        env={k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rc, modules = out.stdout.splitlines()[-1].split(" ", 1)
    assert rc == "0"
    loaded = set(modules.split())
    assert "volagent.api.client" in loaded
    heavy = {"docker", "boto3", "botocore", "structlog", "prometheus_client", "asyncio"}
    heavy |= {"argparse", "json", "re", "tomllib", "volagent.config", "volagent.api.render"}
    assert not heavy & loaded
