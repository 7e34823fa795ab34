"""The start guard behind its HTTP server on a real Unix socket: keep-alive, malformed and
oversized requests answered with an error while the guard stays up, and a stop that still
answers the request in progress."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.unit.factories import directory_timeout, make_state

from volagent.guard.plugin import Guard
from volagent.httpserver import HttpServer
from volagent.volumes.preparer import Preparer
from volagent.worker import TimedWorker

# tests marked `root` have the guard prepare a directory: volagent makes its parents
# root 0755 (rule 2)


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Served:
    """A guard serving on a socket from a loop in a thread of its own."""

    def __init__(self, tmp: Path) -> None:
        self.mp = tmp / "mp"
        self.mp.mkdir()
        self.socket = str(tmp / "guard.sock")
        self.state = make_state(self.mp, docker_state=None, guard={"enabled": True})
        self.worker = TimedWorker("test-guard", max_threads=1)
        self.guard = Guard(self.state, Preparer(self.state, self.worker))
        self.server: HttpServer = self.guard.server()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.server.start_unix(self.socket))

    def call(self, coro: object, timeout: float = 30) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.worker.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path)
    yield s
    s.close()


def authz(uri: str, body: object = None, method: str = "POST") -> bytes:
    doc: dict[str, object] = {"RequestMethod": method, "RequestUri": uri}
    if body is not None:
        doc["RequestBody"] = base64.b64encode(json.dumps(body).encode()).decode()
    return json.dumps(doc).encode()


def post(
    conn: http.client.HTTPConnection, path: str, body: bytes
) -> tuple[int, dict[str, object], str]:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read()), resp.getheader("Connection") or ""


def raw_exchange(path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.root
def test_keep_alive_serves_many_requests_on_one_connection(served: Served) -> None:
    conn = UnixConnection(served.socket)
    try:
        assert post(conn, "/Plugin.Activate", b"")[:2] == (200, {"Implements": ["authz"]})
        for _ in range(50):
            assert post(conn, "/AuthZPlugin.AuthZReq", authz("/v1.41/info", method="GET"))[1] == {
                "Allow": True
            }
        body = {"Labels": {"convox.app": "a", "convox.service": "web"}}
        body["HostConfig"] = {"Binds": [f"{served.mp}/r1-a/web/data:/data"]}
        status, doc, _ = post(conn, "/AuthZPlugin.AuthZReq", authz("/containers/create", body))
        assert (status, doc) == (200, {"Allow": True})
    finally:
        conn.close()
    assert (served.mp / "r1-a/web/data").is_dir()


@pytest.mark.root
def test_malformed_and_oversized_requests_get_errors(served: Served) -> None:
    answer = raw_exchange(served.socket, b"\x00\x01garbage\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    huge = (
        b"POST /AuthZPlugin.AuthZReq HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 1000000000\r\nContent-Type: application/json\r\n\r\n"
    )
    assert raw_exchange(served.socket, huge).startswith(b"HTTP/1.1 413")
    conn = UnixConnection(served.socket)
    try:
        status, doc, _ = post(conn, "/AuthZPlugin.AuthZReq", b"{broken")
        assert status == 400 and doc["Allow"] is False and "not JSON" in str(doc["Err"])
        # the guard is still there, on the same connection too
        assert post(conn, "/Plugin.Activate", b"")[0] == 200
    finally:
        conn.close()


@pytest.mark.root
def test_stop_answers_the_request_in_progress(served: Served) -> None:
    # the worker's only thread is stuck, so a create waits for its timeout before the deny
    release = threading.Event()
    served.worker.submit(release.wait)
    body = {
        "Labels": {"convox.app": "a", "convox.service": "web"},
        "HostConfig": {"Binds": [f"{served.mp}/r1-a/web/data:/data"]},
    }
    conn = UnixConnection(served.socket)
    result: dict[str, object] = {}

    def ask() -> None:
        result["answer"] = post(conn, "/AuthZPlugin.AuthZReq", authz("/containers/create", body))

    try:
        with directory_timeout(served.state, 0.5):
            asker = threading.Thread(target=ask)
            asker.start()
            # the stop begins while the request is being decided
            while not served.server.busy:
                threading.Event().wait(0.01)
            served.call(served.server.close(grace=10))
            asker.join(30)
    finally:
        release.set()
        conn.close()
    status, doc, connection = result["answer"]  # type: ignore[misc]
    assert status == 200 and doc["Allow"] is False
    assert "did not finish" in str(doc["Msg"])
    assert connection.lower() == "close"
    assert not os.path.exists(served.socket)


@pytest.mark.root
def test_stop_lets_an_idle_connection_be_used_once_more(served: Served) -> None:
    # dockerd keeps idle connections to its plugin and may send on one at any moment:
    # closing it under dockerd's feet would cut that request off
    conn = UnixConnection(served.socket)
    try:
        assert post(conn, "/Plugin.Activate", b"")[0] == 200  # now idle, kept alive
        closing = asyncio.run_coroutine_threadsafe(served.server.close(grace=10), served.loop)
        threading.Event().wait(0.3)
        assert not closing.done()
        status, doc, connection = post(conn, "/AuthZPlugin.AuthZReq", authz("/info", method="GET"))
        assert (status, doc, connection.lower()) == (200, {"Allow": True}, "close")
        closing.result(30)
    finally:
        conn.close()
