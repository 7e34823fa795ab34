"""A Docker Engine API stand-in for agents the benches start by the dozen: an engine on a
Unix socket that runs no containers. It answers what volagent's Docker watch asks to
connect, subscribe and list (`/_ping`, `/version`, `/containers/json`, `/events`, held
open with no event), so the watch finishes its listing and the guard judges creates (it
refuses them until then). Anything else is a 404, as Docker answers an unknown route.

Where a container really runs, the tests start a real dockerd (tests/testbed/dockerd.py).
"""

from __future__ import annotations

import json
import os
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import TracebackType

API_VERSION = "1.41"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def address_string(self) -> str:  # a Unix socket's peer has no host to name
        return "unix"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        route = self.path.split("?", 1)[0]
        if route.startswith("/v1."):
            route = "/" + route.split("/", 2)[2]
        if route == "/_ping":
            self._send(200, b"OK", "text/plain")
        elif route == "/version":
            doc = {"ApiVersion": API_VERSION, "MinAPIVersion": "1.12", "Version": "24.0.0"}
            self._send(200, json.dumps(doc).encode())
        elif route == "/containers/json":
            self._send(200, b"[]")
        elif route == "/events":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            self.server.stopped.wait()  # no event, ever: the stream stays open
        else:
            self._send(404, json.dumps({"message": f"page not found: {self.path}"}).encode())

    def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    stopped: threading.Event


class EmptyDocker:
    """The stand-in, serving at `url` (`unix://...`) from `start` to `stop` (or for a
    `with` block)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "docker.sock"
        self.url = f"unix://{self.path}"
        self._server: _Server | None = None

    def __enter__(self) -> EmptyDocker:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self.path.exists():
            os.unlink(self.path)
        server = _Server(str(self.path), _Handler)
        server.stopped = threading.Event()
        threading.Thread(target=server.serve_forever, name="empty-docker", daemon=True).start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stopped.set()
            self._server.shutdown()
            self._server.server_close()
        self.path.unlink(missing_ok=True)
