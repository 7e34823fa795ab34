"""A minimal HTTP/1.1 client for volagent's local Unix socket, for the command line.

Standard library only and light to import: `volagent status` runs in about the time of a
bare interpreter start. It uses the `_socket` extension directly because the `socket`
module pulls in `enum` and costs more to import than the whole request takes; for the same
reason `json` is imported only by the one function that decodes.
"""

from __future__ import annotations

import _socket
import time

TYPE_CHECKING = False  # typing costs an import on the fast path; annotations stay lazy
if TYPE_CHECKING:
    from typing import Any

DEFAULT_TIMEOUT_S = 5.0
MAX_RESPONSE_BYTES = 64 << 20
CONNECT_RETRY_S = 0.005


class Unreachable(Exception):
    """The daemon could not be asked; the message says which socket and what to check."""


def request(
    socket_path: str,
    method: str,
    path: str,
    body: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> tuple[int, dict[str, str], bytes]:
    """Sends one request and returns (status, lower-cased headers, body)."""
    deadline = time.monotonic() + timeout
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        _connect(sock, socket_path, deadline)
        head = f"{method} {path} HTTP/1.1\r\nHost: volagent\r\nConnection: close\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        try:
            try:  # noqa: SIM105 - contextlib is an import the fast path does without
                sock.sendall(head.encode("ascii") + b"\r\n" + (body or b""))
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused before it read the request: its answer may still be there
            raw = _read_all(sock, deadline)
        except TimeoutError:
            raise Unreachable(
                f"{socket_path} did not answer within {timeout:g} s: the daemon may be hung; "
                "check `journalctl -u volagent` and `systemctl status volagent`"
            ) from None
        except OSError as exc:
            raise Unreachable(f"{socket_path}: connection failed: {exc.strerror or exc}") from None
    finally:
        sock.close()
    return parse_response(socket_path, raw)


def _connect(sock: Any, socket_path: str, deadline: float) -> None:
    # A Unix socket whose listening queue is full refuses at once (EAGAIN) instead of
    # waiting in line: the daemon takes new connections a few at a time, so try again.
    while True:
        try:
            sock.connect(socket_path)
            return
        except BlockingIOError as exc:
            if time.monotonic() + CONNECT_RETRY_S >= deadline:
                raise Unreachable(_connect_problem(socket_path, exc)) from None
            time.sleep(CONNECT_RETRY_S)
        except OSError as exc:
            raise Unreachable(_connect_problem(socket_path, exc)) from None


def get_json(socket_path: str, path: str, timeout: float = DEFAULT_TIMEOUT_S) -> tuple[int, Any]:
    """GETs `path` and decodes the JSON answer; (status, document)."""
    import json  # noqa: PLC0415 - only here: `volagent status` itself never parses JSON

    status, _, body = request(socket_path, "GET", path, timeout=timeout)
    try:
        return status, json.loads(body)
    except ValueError:
        raise Unreachable(f"{socket_path} answered {status} without a JSON body") from None


def _read_all(sock: Any, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            if not chunks:
                raise
            chunk = b""  # after an answer: parse_response tells whether it came whole
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise OSError(f"response larger than {MAX_RESPONSE_BYTES} bytes")


def parse_response(socket_path: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        what = "nothing" if not raw else "something that is not HTTP"
        raise Unreachable(
            f"{socket_path} answered {what}: is it volagent's socket? check [api] socket "
            "in the config and --socket / VOLAGENT_SOCKET"
        )
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length", "")
    if length.isdigit():
        if len(body) < int(length):
            raise Unreachable(f"{socket_path}: the answer was cut short")
        body = body[: int(length)]
    return int(parts[1]), headers, body


def _connect_problem(socket_path: str, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return (
            f"no socket at {socket_path}: volagent is not running or uses another socket; "
            "check `systemctl status volagent`, [api] socket in the config, "
            "--socket / VOLAGENT_SOCKET"
        )
    if isinstance(exc, ConnectionRefusedError):
        return (
            f"nothing listens on {socket_path}: volagent has stopped or crashed; "
            "check `systemctl status volagent` and `journalctl -u volagent`"
        )
    if isinstance(exc, PermissionError):
        return (
            f"permission denied on {socket_path}: run as root, or as a member of its group "
            "(`usermod -aG volagent USER`, then log in again)"
        )
    if isinstance(exc, TimeoutError):
        return f"{socket_path} did not accept the connection: the daemon may be hung"
    if isinstance(exc, BlockingIOError):
        return (
            f"{socket_path} has more connections waiting than it takes: the daemon may be hung "
            "or flooded; check `journalctl -u volagent`"
        )
    return f"cannot connect to {socket_path}: {exc.strerror or exc}"
