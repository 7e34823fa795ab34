"""A small HTTP/1.1 server on asyncio for volagent's local sockets.

It serves a Unix socket (bound to a path, or handed over already listening by systemd) and
optionally TCP. It parses requests itself, with hard limits, so that one slow, huge or
garbled connection is answered (400, 408, 413, 431) and closed without hurting the others.
On a Unix socket the peer's credentials (SO_PEERCRED) travel with the request, which is
what the API checks before any state-changing call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote

from volagent import log
from volagent.httpserver.limits import (
    BudgetExceeded,
    ByteBudget,
    ConnectionLedger,
    PeerLimits,
    Turnstile,
)
from volagent.httpserver.listener import Listener

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token, ASCII only
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_TARGET_BAD = re.compile(r"[\x00-\x20\x7f]")  # controls and space
# str.isprintable() is False for every character this looks for and costs a fraction of a
# regex search, so the search runs only on the rare value that is not printable (the start
# guard parses a request head for every Docker API call).
_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls but tab
_REASONS = {s.value: s.phrase for s in HTTPStatus}
# a larger body is written after its head instead of being copied behind it
_COPY_LIMIT = 16 << 10
# a refused connection is answered this long after it came, at most so many at once
REFUSE_DELAY_S = 0.25
REFUSING_MAX = 64


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes = b""
    peer_uid: int | None = None
    peer_pid: int | None = None
    peer_gid: int | None = None
    transport: str = "unix"  # "unix" or "tcp": what the request came through


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response]]


def json_response(status: int, obj: object) -> Response:
    return Response(status, json.dumps(obj, separators=(",", ":")).encode() + b"\n")


def error_response(status: int, message: str) -> Response:
    return json_response(status, {"error": message, "status": status})


class BadRequest(Exception):
    """The request cannot be served; `status` is the answer, after which the connection closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _ClientGone(Exception):
    """The peer closed or went silent; nothing more to say to it."""


def peer_credentials(sock: socket.socket | None) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of a Unix socket's peer, None for other sockets."""
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return None
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


class HttpServer:
    """Serves `handler` on one or more listeners. Limits are per request; time limits are in
    seconds: `header_timeout` for a whole request head, `body_timeout` for a whole body,
    `idle_timeout` between keep-alive requests, `write_timeout` for a slow reader.
    `linger_idle`: on close, idle kept-alive connections stay open up to that many seconds
    (within the grace) too, until their client sends one more request (answered with
    `Connection: close`) or hangs up: closing one from this side races with the client
    sending on it.

    `peer_limits` shares the server out among its clients (see httpserver.limits): connections
    per uid with slots kept for root, requests sent ahead of their answers, request bytes
    held in memory, and one request started per turn of the event loop within a share of
    the loop's time, so that a server sharing the loop with this one never waits behind
    more than one of its requests. `backlog` is the listening queue's length (of the sockets
    it binds), `accept_batch` how many connections are accepted per turn of the loop."""

    def __init__(
        self,
        name: str,
        handler: Handler,
        *,
        max_body: int = 1 << 20,
        max_header_bytes: int = 16 << 10,
        max_headers: int = 64,
        header_timeout: float = 10.0,
        body_timeout: float = 30.0,
        idle_timeout: float = 60.0,
        write_timeout: float = 30.0,
        max_connections: int = 256,
        linger_idle: float = 0.0,
        peer_limits: PeerLimits | None = None,
        backlog: int = 512,
        accept_batch: int = 100,
    ) -> None:
        self.name = name
        self.handler = handler
        self.max_body = max_body
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.max_connections = max_connections
        self.linger_idle = linger_idle
        self.peer_limits = peer_limits
        self.backlog = backlog
        self.accept_batch = accept_batch
        self._ledger = ConnectionLedger(max_connections, peer_limits)
        self._budget = ByteBudget(peer_limits.buffered_total if peer_limits else None)
        self._turnstile = Turnstile(peer_limits.loop_share) if peer_limits else None
        self._listeners: list[Listener] = []
        self._refusing: dict[int, Callable[[], None]] = {}  # fd -> what ends its refusal
        self._connections: set[asyncio.Task[None]] = set()
        # connections between the first byte of a request and the end of its answer
        self._busy: set[asyncio.Task[None]] = set()
        self._fds: dict[asyncio.Task[None], int] = {}  # each connection's descriptor
        self._draining = False
        self._unix_paths: list[tuple[str, int, int]] = []  # path, st_dev, st_ino we bound
        self._log = log.get("http", server=name)

    # --- listeners ---------------------------------------------------------------------
    async def start_unix(
        self,
        path: str | None = None,
        *,
        sock: socket.socket | None = None,
        mode: int = 0o666,
        group: int | None = None,
    ) -> None:
        """Listens on a Unix socket: `sock` when given (already bound and listening, e.g.
        handed over by systemd), else bound at `path` (a stale socket file there is replaced,
        a live one or anything else is an error) with `mode`, and the group `group` (a gid)
        when given."""
        if path is None and sock is None:
            raise ValueError("start_unix needs a path or a listening socket")
        if sock is not None:
            self._listen(sock)
        elif path is not None:
            _clear_stale_socket(path)
            os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
            listener = _bind_private(path)
            try:
                if group is not None:
                    os.chown(path, -1, group)
                os.chmod(path, mode)
                listener.listen(self.backlog)
            except BaseException:
                listener.close()
                with contextlib.suppress(OSError):
                    os.unlink(path)
                raise
            self._listen(listener)
            st = os.stat(path)
            self._unix_paths.append((path, st.st_dev, st.st_ino))
        self._log.info("http_listening", address=path or self._listeners[-1].address)

    async def start_tcp(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=self.backlog)
        self._listen(sock)
        self._log.info("http_listening", address=f"{host}:{self.tcp_port or port}")

    def _listen(self, sock: socket.socket) -> None:
        listener = Listener(
            sock, self._accepted, batch=self.accept_batch, turnstile=self._turnstile
        )
        listener.start()
        self._listeners.append(listener)

    @property
    def tcp_port(self) -> int | None:
        """The port of the first TCP listener (useful after binding port 0)."""
        for listener in self._listeners:
            if listener.sock.family in (socket.AF_INET, socket.AF_INET6):
                return int(listener.sock.getsockname()[1])
        return None

    async def close(self, grace: float = 0.0) -> None:
        """Stops listening, drops open connections and removes the socket files it made.

        With `grace`, requests already begun get up to that many seconds to be answered
        first, each answer saying `Connection: close`: a client whose request is cut off
        cannot know whether it was acted on (dockerd fails the API call it was asking about).
        A listening socket handed over by systemd stays open in systemd, so new connections
        wait in its backlog for the next process instead of being refused."""
        self._draining = True
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        for finish in list(self._refusing.values()):
            finish()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        linger_until = loop.time() + min(grace, self.linger_idle)
        while loop.time() < deadline and (
            self._busy or self._unread_input() or (self._connections and loop.time() < linger_until)
        ):
            await asyncio.sleep(0.01)
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        for path, dev, ino in self._unix_paths:
            # only our own socket file: a successor may already have bound a new one there
            with contextlib.suppress(OSError):
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == (dev, ino):
                    os.unlink(path)
        self._unix_paths.clear()

    def _unread_input(self) -> bool:
        """Whether a kept-alive connection has bytes the server has not read yet: a request
        the client already sent, which the connection's task picks up at the next turn of
        the loop. Closing the connection now would cut that request off."""
        poller = select.poll()
        for fd in self._fds.values():
            poller.register(fd, select.POLLIN)
        try:
            return bool(poller.poll(0))
        except OSError:
            return False

    # --- connections -------------------------------------------------------------------
    def _accepted(self, sock: socket.socket) -> None:
        """A new connection: refused at once, with a 503 saying why, when its peer has had
        its share; else served by a task of its own."""
        creds = peer_credentials(sock)
        uid = creds[1] if creds is not None else None
        refused = self._ledger.admit(uid)
        if refused is not None:
            self._refuse(sock, refused)
            return
        task = asyncio.ensure_future(self._connection(sock, creds))
        self._connections.add(task)
        self._fds[task] = sock.fileno()

    def _refuse(self, sock: socket.socket, why: str) -> None:
        """Answers 503 and closes, without a task or streams, `REFUSE_DELAY_S` later: a
        client refused for holding its share comes back no faster than that (a flood that
        reconnects at once costs a few refusals per delay, not one per connection), and
        its request has come by then, so it reads the answer after sending the request.
        Beyond `REFUSING_MAX` refusals waiting, the answer goes at once."""
        answer = encode_response(error_response(503, why), True)
        if len(self._refusing) >= REFUSING_MAX:
            _answer_and_close(sock, answer)
            return
        fd = sock.fileno()

        def finish() -> None:
            timer.cancel()
            self._refusing.pop(fd, None)
            _answer_and_close(sock, answer)

        timer = asyncio.get_running_loop().call_later(REFUSE_DELAY_S, finish)
        self._refusing[fd] = finish

    async def _connection(self, sock: socket.socket, creds: tuple[int, int, int] | None) -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        writer: asyncio.StreamWriter | None = None
        conn: _Conn | None = None
        try:
            reader = asyncio.StreamReader(loop=loop)
            protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            conn = _Conn(reader, self._budget, self.max_header_bytes)
            await self._serve(conn, writer, creds)
        except (_ClientGone, ConnectionError, asyncio.CancelledError):
            pass
        except Exception as exc:  # the server must outlive any one connection
            self._log.error("http_connection_error", error=repr(exc))
        finally:
            self._ledger.release(creds[1] if creds is not None else None)
            if conn is not None:
                conn.release()
            if task is not None:
                self._connections.discard(task)
                self._busy.discard(task)
                self._fds.pop(task, None)
            if writer is None:
                sock.close()
            else:
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(
        self, conn: _Conn, writer: asyncio.StreamWriter, creds: tuple[int, int, int] | None
    ) -> None:
        sock = writer.get_extra_info("socket")
        tcp = sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6)
        ahead = 0  # requests in a row that were here before the previous answer went out
        while True:
            if _holds_request(conn.buf):
                # pipelined: the client sent it before reading the previous answer. Let the
                # rest of the loop run first, and drop the work of a client that has gone.
                ahead += 1
                if self._turnstile is None:
                    await asyncio.sleep(0)
                if _gone(writer, sock):
                    return
                limits = self.peer_limits
                if limits is not None and ahead > limits.max_pipelined:
                    message = (
                        f"more than {limits.max_pipelined} requests sent ahead of their "
                        "answers; read each answer before sending more"
                    )
                    # debug: a flood would otherwise write a log line per connection
                    self._log.debug("http_bad_request", status=429, error=message)
                    await self._send_quietly(writer, error_response(429, message), True)
                    return
            else:
                ahead = 0
            try:
                req, keep_alive = await self._read_request(conn, writer)
            except BadRequest as exc:
                self._log.info("http_bad_request", status=exc.status, error=exc.message)
                await self._send_quietly(writer, error_response(exc.status, exc.message), True)
                return
            if creds is not None:
                req.peer_pid, req.peer_uid, req.peer_gid = creds
            if tcp:
                req.transport = "tcp"
            if self._turnstile is not None:
                await self._turnstile.wait_turn(root=req.peer_uid == 0)
                if _gone(writer, sock if ahead else None):
                    return
            started = time.thread_time()
            resp = await self._dispatch(req)
            if req.method == "HEAD":
                resp = Response(resp.status, b"", resp.content_type, resp.headers)
            keep_alive = keep_alive and not self._draining
            if len(resp.body) > _COPY_LIMIT:  # sent as it is rather than copied behind the head
                writer.write(encode_head(resp, not keep_alive))
                writer.write(resp.body)
            else:
                writer.write(encode_response(resp, not keep_alive))
            if self._turnstile is not None:
                self._turnstile.charge(time.thread_time() - started)
            await self._drain(writer, always=not keep_alive)
            self._busy.discard(asyncio.current_task())
            if not keep_alive:
                return

    async def _dispatch(self, req: Request) -> Response:
        try:
            return await self.handler(req)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log.exception(
                "http_handler_error", method=req.method, path=req.path, error=repr(exc)
            )
            return error_response(500, f"internal error: {type(exc).__name__}")

    async def _read_request(
        self, conn: _Conn, writer: asyncio.StreamWriter
    ) -> tuple[Request, bool]:
        # Idle keep-alive connections close quietly; a started but unfinished head gets 408.
        # Empty lines before a request line are tolerated, as RFC 9112 asks.
        while not _holds_request(conn.buf):
            conn.buf.clear()
            await conn.fill(self.idle_timeout, quiet=True)
        if conn.buf[0] in b"\r\n":
            del conn.buf[: len(conn.buf) - len(conn.buf.lstrip(b"\r\n"))]
        task = asyncio.current_task()
        if task is not None:
            self._busy.add(task)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.header_timeout
        while (end := conn.buf.find(b"\r\n\r\n")) < 0:
            if len(conn.buf) > self.max_header_bytes:
                raise BadRequest(431, f"request head larger than {self.max_header_bytes} bytes")
            await conn.fill_until(deadline, "request head")
        if end > self.max_header_bytes:
            raise BadRequest(431, f"request head larger than {self.max_header_bytes} bytes")
        head = bytes(conn.buf[:end])
        del conn.buf[: end + 4]
        method, target, version, headers = parse_head(head, self.max_headers)
        path, _, qs = target.partition("?")
        query = dict(parse_qsl(qs, keep_blank_values=True))
        keep_alive = _wants_keep_alive(version, headers.get("connection", ""))
        body = await self._read_body(conn, writer, headers, loop.time() + self.body_timeout)
        conn.account()  # what the request took is given back
        return Request(method, unquote(path), query, headers, body), keep_alive

    async def _read_body(
        self, conn: _Conn, writer: asyncio.StreamWriter, headers: dict[str, str], deadline: float
    ) -> bytes:
        te = headers.get("transfer-encoding")
        cl = headers.get("content-length")
        if te is not None and cl is not None:
            raise BadRequest(400, "both Transfer-Encoding and Content-Length")
        if te is not None:
            if te.strip().lower() != "chunked":
                raise BadRequest(501, f"transfer-encoding {te!r} is not supported")
            await self._continue(writer, headers)
            return await self._read_chunked(conn, deadline)
        if cl is None:
            return b""
        if not cl.isdigit() or not cl.isascii():
            raise BadRequest(400, f"bad Content-Length {cl!r}")
        length = int(cl)
        if length > self.max_body:
            raise BadRequest(413, f"body of {length} bytes is larger than {self.max_body}")
        await self._continue(writer, headers)
        while len(conn.buf) < length:
            await conn.fill_until(deadline, "request body")
        body = bytes(conn.buf[:length])
        del conn.buf[:length]
        return body

    async def _read_chunked(self, conn: _Conn, deadline: float) -> bytes:
        body = bytearray()
        while True:
            line = await conn.read_line(deadline, 1024)
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadRequest(400, f"bad chunk size {size_text[:20]!r}") from None
            if size < 0:
                raise BadRequest(400, "bad chunk size")
            if size == 0:
                break
            if len(body) + size > self.max_body:
                raise BadRequest(413, f"chunked body larger than {self.max_body} bytes")
            while len(conn.buf) < size + 2:
                await conn.fill_until(deadline, "request body")
            if conn.buf[size : size + 2] != b"\r\n":
                raise BadRequest(400, "chunk not followed by CRLF")
            body += conn.buf[:size]
            del conn.buf[: size + 2]
        for _ in range(self.max_headers + 1):  # trailers, ignored
            if not await conn.read_line(deadline, self.max_header_bytes):
                return bytes(body)
        raise BadRequest(431, "too many trailer fields")

    async def _continue(self, writer: asyncio.StreamWriter, headers: dict[str, str]) -> None:
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await self._drain(writer)

    async def _send(self, writer: asyncio.StreamWriter, resp: Response, close: bool) -> None:
        writer.write(encode_response(resp, close))
        await self._drain(writer, always=close)

    async def _send_quietly(
        self, writer: asyncio.StreamWriter, resp: Response, close: bool
    ) -> None:
        with contextlib.suppress(Exception):
            await self._send(writer, resp, close)

    async def _drain(self, writer: asyncio.StreamWriter, *, always: bool = True) -> None:
        # On a kept-alive connection most answers leave in the write call itself: only a
        # slow reader needs waiting on, and asyncio.timeout costs no task per call (the
        # start guard answers every Docker API call through here).
        if not always:
            if writer.transport.get_write_buffer_size() == 0:
                return
            try:
                async with asyncio.timeout(self.write_timeout):
                    await writer.drain()
            except TimeoutError:
                raise _ClientGone from None
            return
        try:
            await asyncio.wait_for(writer.drain(), self.write_timeout)
        except TimeoutError:
            raise _ClientGone from None


class _Conn:
    """The read side of one connection: a buffer filled from the stream under deadlines.

    What the buffer holds beyond `free` bytes (a request head's worth) is charged to the
    server's byte budget; over budget, the request is refused with 503."""

    def __init__(self, reader: asyncio.StreamReader, budget: ByteBudget, free: int) -> None:
        self.reader = reader
        self.buf = bytearray()
        self.budget = budget
        self.free = free
        self.charged = 0

    async def fill(self, timeout: float, *, quiet: bool = False, what: str = "request") -> None:
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                data = await self.reader.read(65536)
        except TimeoutError:
            if quiet:
                raise _ClientGone from None
            raise BadRequest(408, f"timed out reading the {what}") from None
        if not data:
            raise _ClientGone
        self.buf += data
        self.account()

    def account(self) -> None:
        """Brings the budget up to date with what the buffer holds now."""
        charge = max(0, len(self.buf) - self.free)
        if charge == self.charged:
            return
        try:
            self.budget.change(charge - self.charged)
        except BudgetExceeded:
            raise BadRequest(
                503,
                "the server holds as much unfinished request data as it may; try again later",
            ) from None
        self.charged = charge

    def release(self) -> None:
        self.budget.change(-self.charged)
        self.charged = 0

    async def fill_until(self, deadline: float, what: str) -> None:
        await self.fill(deadline - asyncio.get_running_loop().time(), what=what)

    async def read_line(self, deadline: float, limit: int) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            if len(self.buf) > limit:
                raise BadRequest(400, "line too long")
            await self.fill_until(deadline, "request body")
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line


def parse_head(head: bytes, max_headers: int) -> tuple[str, str, str, dict[str, str]]:
    """The request line and header fields of a request head; raises BadRequest(400/431)."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest(400, "request head is not ASCII") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise BadRequest(400, "malformed method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(
            400 if not version.startswith("HTTP/") else 505, "unsupported HTTP version"
        )
    if not target.startswith("/") or _TARGET_BAD.search(target):
        raise BadRequest(400, "malformed request target")
    if len(lines) - 1 > max_headers:
        raise BadRequest(431, f"more than {max_headers} header fields")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise BadRequest(400, "malformed header field")
        name = name.lower()
        value = value.strip(" \t")
        if not value.isprintable() and _VALUE_BAD.search(value):
            raise BadRequest(400, f"control character in header {name}")
        if name in headers:
            if name in ("content-length", "host", "transfer-encoding"):
                raise BadRequest(400, f"repeated header {name}")
            headers[name] += ", " + value
        else:
            headers[name] = value
    return method, target, version, headers


def _wants_keep_alive(version: str, connection: str) -> bool:
    tokens = {t.strip().lower() for t in connection.split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


def encode_response(resp: Response, close: bool) -> bytes:
    return encode_head(resp, close) + resp.body


def encode_head(resp: Response, close: bool) -> bytes:
    """The status line and header fields of `resp`, up to the blank line."""
    lines = [f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Unknown')}"]
    if resp.status not in (204, 304):
        lines.append(f"Content-Type: {resp.content_type}")
        lines.append(f"Content-Length: {len(resp.body)}")
    for name, value in resp.headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            continue
        lines.append(f"{name}: {value}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _answer_and_close(sock: socket.socket, answer: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.recv(65536)  # the request (some of it): read, so the answer is not reset away
    with contextlib.suppress(OSError):
        sock.send(answer)
    sock.close()


def _holds_request(buf: bytearray) -> bool:
    """Whether the buffer holds the start of a request, not just the empty lines a client
    may send between requests (without copying a large buffer to find out)."""
    return bool(buf) and (buf[0] not in b"\r\n" or bool(buf.lstrip(b"\r\n")))


def _gone(writer: asyncio.StreamWriter, sock: socket.socket | None) -> bool:
    """Whether the client has gone: its connection is closing here, or (with `sock`, a poll
    of it) the peer has hung up, which a Unix socket shows at once even while requests it
    sent are still unread."""
    if writer.transport.is_closing():
        return True
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    try:
        events = poller.poll(0)
    except OSError:
        return True
    return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in events)


def _bind_private(path: str) -> socket.socket:
    """A Unix socket bound at `path` whose file only root can connect to until it is given
    its mode: on Linux the file takes the socket's own mode, set here before bind."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.fchmod(sock.fileno(), 0o600)
        sock.bind(path)
    except BaseException:
        sock.close()
        raise
    return sock


def _clear_stale_socket(path: str) -> None:
    """Removes a socket file nobody listens on; refuses to touch a live socket or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(
            f"{path} exists and is not a socket; remove it or choose another [api] socket"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale: left behind by a process that is gone
        return
    except OSError as exc:
        raise OSError(f"cannot tell whether {path} is in use ({exc}); remove it if stale") from None
    finally:
        probe.close()
    raise OSError(f"another process is already serving {path}; stop it first")
