"""A stdlib HTTP/1.1 client over a Unix socket, for talking to the agent's local API.

The test bed keeps its own client so it never depends on the product's: what it checks is
the wire protocol itself.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTPConnection whose transport is a Unix stream socket."""

    def __init__(self, socket_path: str, timeout: float = 5.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def request(
    socket_path: str,
    method: str,
    path: str,
    body: bytes | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """One request on a fresh connection; (status, body). Raises OSError when nobody answers."""
    conn = UnixHTTPConnection(socket_path, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def get_json(socket_path: str, path: str, timeout: float = 5.0) -> tuple[int, Any]:
    """GET `path` and decode the JSON body; (status, document)."""
    status, body = request(socket_path, "GET", path, timeout=timeout)
    return status, json.loads(body)


def raw_exchange(socket_path: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Sends raw bytes, half-closes, and returns everything the server answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)
