"""A local user flooding the status socket, as an attacker without root would.

`Flood(socket_path).start()` forks a child that drops to `nobody` (keeping the group the
socket is for, as a member of the `volagent` group would) and, until `stop()`, keeps
`connections` connections busy, reconnecting whenever the server ends one:
- "pipeline": GET /v1/status sent as fast as the socket takes it, answers read and dropped;
- "silent": the same requests, answers never read;
- "partial": a POST whose body never comes to its announced length;
- "idle": connected and nothing sent.
`stop()` ends the reconnecting, lets each open connection go on until the server ends it
(or `linger` seconds pass), and returns what the flooder saw: how many connections it made,
how the server answered (status codes), how many the server ended and how many it did not.
"""

from __future__ import annotations

import errno
import json
import os
import re
import selectors
import signal
import socket
import time
import traceback
from dataclasses import dataclass, field

NOBODY = 65534
KINDS = ("pipeline", "silent", "partial", "idle")
_REQUEST = b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n"
_BATCH = _REQUEST * 64
_PARTIAL = b"POST /v1/reconcile HTTP/1.1\r\nContent-Length: 65536\r\n\r\n" + b"x" * 32768
_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


@dataclass
class _Link:
    kind: str
    sock: socket.socket
    sent_partial: bool = False
    tail: bytes = b""  # the end of what was read, for a status line split across reads


@dataclass
class FloodReport:
    connects: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    ended_by_server: int = 0
    left_open: int = 0
    bytes_sent: int = 0
    most_open: int = 0
    backlog_full: int = 0
    errors: list[str] = field(default_factory=list)


class Flood:
    def __init__(
        self,
        socket_path: str,
        *,
        connections: int = 48,
        kinds: tuple[str, ...] = KINDS,
        group: int = NOBODY,
        linger: float = 60.0,
    ) -> None:
        self.socket_path = socket_path
        self.connections = connections
        self.kinds = kinds
        self.group = group
        self.linger = linger
        self.pid = 0
        self._control = -1
        self._report = -1

    def start(self) -> Flood:
        control_r, control_w = os.pipe()
        report_r, report_w = os.pipe()
        started_r, started_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            code = 1
            try:
                os.close(control_w)
                os.close(report_r)
                os.close(started_r)
                os.setgroups([self.group])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                report = _flood(self, control_r, started_w)
                data = json.dumps(report.__dict__).encode()
                with os.fdopen(report_w, "wb") as out:
                    out.write(data)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(control_r)
        os.close(report_w)
        os.close(started_w)
        self.pid, self._control, self._report = pid, control_w, report_r
        with os.fdopen(started_r, "rb") as started:  # the first connections are flooding
            if started.read(1) != b"1":
                self.stop()
                raise RuntimeError("the flooder did not start")
        return self

    def stop(self) -> FloodReport:
        os.close(self._control)
        with os.fdopen(self._report, "rb") as pipe:
            raw = pipe.read()
        os.waitpid(self.pid, 0)
        return FloodReport(**json.loads(raw)) if raw else FloodReport(errors=["no report"])


def _connect(flood: Flood, kind: str, report: FloodReport) -> _Link | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.connect(flood.socket_path)
    except BlockingIOError:
        # the server's backlog is full: a Unix socket does not wait in line, try again later
        sock.close()
        report.backlog_full += 1
        return None
    except OSError as exc:
        sock.close()
        if len(report.errors) < 20:
            report.errors.append(f"connect: {exc}")
        return None
    report.connects += 1
    return _Link(kind, sock)


def _events(link: _Link) -> int:
    if link.kind == "idle" or (link.kind == "partial" and link.sent_partial):
        return selectors.EVENT_READ
    if link.kind == "silent":
        return selectors.EVENT_WRITE
    return selectors.EVENT_READ | selectors.EVENT_WRITE


def _flood(flood: Flood, control: int, started: int) -> FloodReport:
    report = FloodReport()
    sel = selectors.DefaultSelector()
    sel.register(control, selectors.EVENT_READ, None)
    links: set[int] = set()

    def open_one(n: int) -> bool:
        link = _connect(flood, flood.kinds[n % len(flood.kinds)], report)
        if link is None:
            return False
        sel.register(link.sock, _events(link), link)
        links.add(link.sock.fileno())
        return True

    def end(link: _Link, by_server: bool) -> None:
        sel.unregister(link.sock)
        links.discard(link.sock.fileno())
        link.sock.close()
        if by_server:
            report.ended_by_server += 1

    made = 0
    while made < flood.connections and open_one(made):
        made += 1
    os.write(started, b"1")
    os.close(started)
    stopping_at: float | None = None
    while True:
        if stopping_at is not None and (not links or time.monotonic() > stopping_at):
            break
        # every connection the server ended is made again, as soon as it takes one
        while stopping_at is None and len(links) < flood.connections and open_one(made):
            made += 1
        report.most_open = max(report.most_open, len(links))
        wait = 0.01 if stopping_at is None and len(links) < flood.connections else 1.0
        for key, mask in sel.select(wait):
            link = key.data
            if link is None:  # the control pipe: closed means stop
                sel.unregister(control)
                stopping_at = time.monotonic() + flood.linger
                continue
            if not _serve_link(link, mask, report):
                end(link, by_server=True)
            elif key.events != _events(link):
                sel.modify(link.sock, _events(link), link)
    report.left_open = len(links)
    return report


def _serve_link(link: _Link, mask: int, report: FloodReport) -> bool:
    """One readiness event of a connection; False when the server has ended it."""
    try:
        if mask & selectors.EVENT_READ:
            data = link.sock.recv(1 << 20)
            if not data:
                return False
            seen = link.tail + data
            for code in _STATUS.findall(seen):
                report.codes[code.decode()] = report.codes.get(code.decode(), 0) + 1
            link.tail = seen[-16:]
        if mask & selectors.EVENT_WRITE:
            payload = _PARTIAL if link.kind == "partial" else _BATCH
            report.bytes_sent += link.sock.send(payload)
            if link.kind == "partial":
                link.sent_partial = True
                return True
    except BlockingIOError:
        return True
    except OSError as exc:
        if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EINVAL):
            return False
        raise
    return True


def flood_report_text(report: FloodReport) -> str:
    codes = ", ".join(f"{n}x {c}" for c, n in sorted(report.codes.items()))
    return (
        f"{report.connects} connections made, at most {report.most_open} open at once, "
        f"{report.bytes_sent / 1e6:.1f} MB sent; answers: {codes or 'none'}; "
        f"{report.ended_by_server} ended by the server, {report.left_open} left open, "
        f"{report.backlog_full} connects found the backlog full"
    )


class Burn:
    """The control for a flood: a child as `nobody` that burns CPU as the flooder does
    (sending as fast as it can, into a socket pair of its own) without touching volagent."""

    def __init__(self) -> None:
        self.pid = 0

    def start(self) -> Burn:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - ends by SIGTERM
            try:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                left, right = socket.socketpair()
                while True:
                    left.sendall(_BATCH)
                    right.recv(1 << 20)
            finally:
                os._exit(0)
        self.pid = pid
        return self

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGTERM)
        os.waitpid(self.pid, 0)
