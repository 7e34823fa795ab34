"""sd_notify and socket hand-over against real sockets: a datagram socket standing in for
systemd's notify socket, and listening sockets inherited by a child process at fd 3 and up,
placed there the way systemd does it (dup2, then exec with LISTEN_PID = the child's pid)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from volagent.daemon import systemd

AGENT_DIR = str(Path(systemd.__file__).resolve().parents[2])


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_without_systemd_every_helper_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    assert systemd.ready("x") is False
    assert systemd.watchdog() is False
    assert systemd.stopping() is False
    assert systemd.status("x") is False


def test_ready_carries_the_status_line(notify_socket: socket.socket) -> None:
    assert systemd.ready("mount mounted, docker connected") is True
    assert received(notify_socket) == "READY=1\nSTATUS=mount mounted, docker connected"


def test_each_message_names_its_event(notify_socket: socket.socket) -> None:
    assert systemd.watchdog()
    assert systemd.stopping()
    assert systemd.status("mount stalled\nsince 3 s")
    assert received(notify_socket) == "WATCHDOG=1"
    assert received(notify_socket) == "STOPPING=1"
    # a newline would smuggle in another assignment: the status stays one line
    assert received(notify_socket) == "STATUS=mount stalled since 3 s"


def test_abstract_namespace_address(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"volagent-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1")
        assert received(sock) == "READY=1"


def test_a_vanished_notify_socket_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert systemd.notify("WATCHDOG=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert systemd.notify("WATCHDOG=1") is False


def test_a_full_queue_drops_the_message_instead_of_blocking(
    notify_socket: socket.socket,
) -> None:
    sent = 0
    for _ in range(10_000):  # bounded: the receiver's queue fills long before this
        if not systemd.watchdog():
            break
        sent += 1
    assert 0 < sent < 10_000


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", "self", 15.0),
        ("30000000", "", 15.0),
        ("30000000", "1", None),
        ("", "self", None),
        ("0", "self", None),
        ("thirty", "self", None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    monkeypatch: pytest.MonkeyPatch, usec: str, pid: str, expected: float | None
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert systemd.watchdog_interval() == expected


def test_listen_fds_for_another_process_are_ignored_and_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LISTEN_PID", "1")
    monkeypatch.setenv("LISTEN_FDS", "2")
    monkeypatch.setenv("LISTEN_FDNAMES", "api:guard")
    assert systemd.listen_fds() == {}
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        assert var not in os.environ


def test_listen_fds_absent_or_garbled(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(var, raising=False)
    assert systemd.listen_fds() == {}
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "lots")
    assert systemd.listen_fds() == {}


# The launcher does what systemd does before exec: move the sockets to 3, 4, ... and set
# LISTEN_PID to the pid the service will have (exec keeps it).
LAUNCHER = textwrap.dedent(
    """
    import os, sys
    fds = [int(x) for x in sys.argv[1].split(",")]
    for target, fd in enumerate(fds, start=3):
        os.dup2(fd, target, inheritable=True)
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.environ["LISTEN_FDS"] = str(len(fds))
    os.execv(sys.executable, [sys.executable, "-c", sys.argv[2]])
    """
)

# The service: takes the sockets, reports what it got, then serves one request on each
# through asyncio, the way the daemon's servers use a handed-over socket.
SERVICE = textwrap.dedent(
    """
    import asyncio, json, os, socket, sys
    sys.path.insert(0, os.environ["AGENT_DIR"])
    from volagent.daemon import systemd

    got = systemd.listen_fds()
    report = {
        "names": sorted(got),
        "env_left": [v for v in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES") if v in os.environ],
        "fds": {k: s.fileno() for k, s in got.items()},
        "inheritable": {k: os.get_inheritable(s.fileno()) for k, s in got.items()},
        "types": {k: [int(s.family), int(s.type)] for k, s in got.items()},
    }
    print(json.dumps(report), flush=True)

    async def main():
        done = asyncio.Event()
        served = set()

        def handler(name):
            async def handle(reader, writer):
                await reader.readline()
                writer.write(f"{name}\\n".encode())
                await writer.drain()
                writer.close()
                served.add(name)
                if served == set(got):
                    done.set()
            return handle

        servers = [await asyncio.start_unix_server(handler(n), sock=s) for n, s in got.items()]
        await asyncio.wait_for(done.wait(), 20)
        for server in servers:
            server.close()

    asyncio.run(main())
    """
)


def ask(path: Path) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(str(path))
        client.sendall(b"who\n")
        return client.recv(100).decode().strip()


def test_inherited_sockets_arrive_by_name_and_serve(tmp_path: Path) -> None:
    paths = {"api": tmp_path / "api.sock", "guard": tmp_path / "guard.sock"}
    listeners = []
    for path in paths.values():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.listen(8)
        listeners.append(sock)
    env = {
        **os.environ,
        "AGENT_DIR": AGENT_DIR,
        "LISTEN_FDNAMES": "api:guard",
    }
    fds = ",".join(str(s.fileno()) for s in listeners)
    child = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, fds, SERVICE],
        env=env,
        pass_fds=[s.fileno() for s in listeners],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # the listening sockets stay open here too: like systemd, we keep holding them
        assert child.stdout is not None
        report = json.loads(child.stdout.readline())
        assert report["names"] == ["api", "guard"]
        assert report["env_left"] == []
        assert report["fds"] == {"api": 3, "guard": 4}
        assert report["inheritable"] == {"api": False, "guard": False}
        expected_type = [int(socket.AF_UNIX), int(socket.SOCK_STREAM)]
        assert report["types"] == {"api": expected_type, "guard": expected_type}
        assert ask(paths["api"]) == "api"
        assert ask(paths["guard"]) == "guard"
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()  # type: ignore[union-attr]
        for sock in listeners:
            sock.close()


def test_unnamed_and_repeated_names(tmp_path: Path) -> None:
    listeners = []
    for i in range(3):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(tmp_path / f"s{i}.sock"))
        sock.listen(1)
        listeners.append(sock)
    service = textwrap.dedent(
        """
        import json, os, sys
        sys.path.insert(0, os.environ["AGENT_DIR"])
        from volagent.daemon import systemd
        print(json.dumps(sorted(systemd.listen_fds())))
        """
    )
    env = {**os.environ, "AGENT_DIR": AGENT_DIR, "LISTEN_FDNAMES": "api:api"}
    try:
        out = subprocess.run(
            [sys.executable, "-c", LAUNCHER, ",".join(str(s.fileno()) for s in listeners), service],
            env=env,
            pass_fds=[s.fileno() for s in listeners],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    finally:
        for sock in listeners:
            sock.close()
    assert json.loads(out) == ["api", "api:1", "fd5"]
