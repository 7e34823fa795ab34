"""One client's connection to the HTTP server: its lifecycle around the wire codec.

An asyncio protocol, as uvicorn's are: bytes the socket gives go straight to the connection's
`RequestParser`; each whole request goes to the server's handler, and its answer is written
before the next request is looked at (answers go out in order). A handler that answers at
once (the start guard's decision on most Docker calls) is served within the callback that
brought the request: no task, no extra turn of the event loop. One that has to wait runs in
a task, and the connection reads no further requests meanwhile.

Around that, the lifecycle: deadlines (a whole head, a whole body, idle between requests, a
slow reader), the memory the connection's unparsed bytes hold of the server's budget,
requests sent ahead of their answers (each lets the rest of the loop run first; too many are
a 429), the turnstile some servers share the loop through, the peer's credentials on every
request, and the close: a connection whose client has gone stops, and one whose answer says
`Connection: close` closes after it.
"""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, Protocol, cast

from volagent.httpserver.flow import FlowControl
from volagent.httpserver.limits import (
    BudgetExceeded,
    ByteBudget,
    ConnectionLedger,
    PeerLimits,
    Turnstile,
)
from volagent.httpserver.wire import (
    BODY,
    IDLE,
    BadRequest,
    Phase,
    Request,
    RequestParser,
    Response,
    encode_head,
    encode_response,
    error_response,
)


class Host(Protocol):
    """What a connection needs of the server that accepted it (server.py's HttpServer)."""

    handler: Callable[[Request], Response | Awaitable[Response]]
    max_body: int
    max_header_bytes: int
    max_headers: int
    header_timeout: float
    body_timeout: float
    idle_timeout: float
    write_timeout: float
    peer_limits: PeerLimits | None
    ledger: ConnectionLedger
    budget: ByteBudget
    turnstile: Turnstile | None
    busy: set[Connection]
    draining: bool
    read_buffer: memoryview  # what every read of its connections lands in first
    log: Any

    def idle(self, conn: Connection) -> None: ...

    def forget(self, conn: Connection) -> None: ...


# a larger body is written after its head instead of being copied behind it
COPY_LIMIT = 16 << 10
# unparsed bytes a connection reads ahead while a request of it is being served
READ_AHEAD = 64 << 10
# after a refusal, what the client still sends is read and dropped for at most this long
# and this much, so that it reads the answer instead of a reset
LINGER_S = 2.0
LINGER_BYTES = 16 << 20


class State(StrEnum):
    """Where a connection is in its life. Its one deadline, when it has one, follows from it:
    READING, the parser's phase (idle, head, body); DRAINING and CLOSING, the slow reader's;
    LINGERING, the refused client's last bytes."""

    OPENING = "opening"  # the accepted socket is being made a transport
    READING = "reading"  # parsing: between requests, or inside a head or a body
    SERVING = "serving"  # a request is with its handler in a task (or waits for its turn)
    YIELDING = "yielding"  # a request sent ahead of an answer waits for the loop's next turn
    DRAINING = "draining"  # answered to a slow reader: the next request waits for it to read
    LINGERING = "lingering"  # refused: our side has ended; what the client still sends is dropped
    CLOSING = "closing"  # the transport is closing (what was written still goes out)
    CLOSED = "closed"  # the transport is gone; a handler of it may still run
    RELEASED = "released"  # its share of the server is given back: the end


# the states as module globals: looking a member up on its enum class costs about 140 ns on
# Python 3.11, a global about 15, and the connection looks at its state a few times a request
OPENING, READING, SERVING, YIELDING, DRAINING, LINGERING, CLOSING, CLOSED, RELEASED = State
# the moves a connection makes (one not here is a bug, raised as RuntimeError): bytes read
# are parsed in READING, held in SERVING, YIELDING and DRAINING, dropped in LINGERING
_MOVES = {
    OPENING: {READING},
    READING: {SERVING, YIELDING, DRAINING, LINGERING},
    SERVING: {READING, YIELDING, DRAINING},
    YIELDING: {READING},
    DRAINING: {READING, YIELDING},
    LINGERING: set(),
}
TRANSITIONS: dict[State, frozenset[State]] = {
    # every state before CLOSING may close, and lose its transport
    **{s: frozenset(moves | {CLOSING, CLOSED}) for s, moves in _MOVES.items()},
    CLOSING: frozenset({CLOSED}),
    CLOSED: frozenset({RELEASED}),
    RELEASED: frozenset(),
}
_BUFFERING = frozenset({SERVING, YIELDING, DRAINING})
_ENDING = frozenset({CLOSING, CLOSED, RELEASED})


class Connection(asyncio.BufferedProtocol):
    """Serves one accepted socket for `server`; `creds` are the peer's (pid, uid, gid) on a
    Unix socket. `closed` is done once the transport is gone and no handler of it runs."""

    def __init__(
        self, server: Host, sock: socket.socket, creds: tuple[int, int, int] | None
    ) -> None:
        self.server = server
        self.sock = sock
        self.creds = creds
        self.uid = creds[1] if creds is not None else None
        self.tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        self.parser = RequestParser(
            max_body=server.max_body,
            max_header_bytes=server.max_header_bytes,
            max_headers=server.max_headers,
        )
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.state = OPENING
        self.flow = FlowControl()
        self.charged = 0  # bytes of the server's budget the parser's buffer holds
        self.ahead = 0  # requests in a row that were here before the previous answer went out
        self._dropped = 0  # LINGERING: the bytes read and dropped
        self._task: asyncio.Task[None] | None = None  # a request being served, or the setup
        self._peer_ended = False  # the client has sent all it will (its half of the state)
        self._timed_phase: Phase | None = None  # READING: the parser phase of the deadline
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def _become(self, state: State) -> None:
        if state not in TRANSITIONS[self.state]:
            raise RuntimeError(f"a connection does not go from {self.state} to {state}")
        self.state = state

    # --- setup and teardown -------------------------------------------------------------
    def start(self) -> None:
        """Makes the transport (connection_made follows); the socket is ours until then."""
        self._task = asyncio.ensure_future(self._setup())

    async def _setup(self) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: self, self.sock)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self.server.log.error("http_connection_error", error=repr(exc))
            self.sock.close()
            self._task = None
            self._transport_gone()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        if self._task is asyncio.current_task():
            self._task = None
            if self.state is CLOSED:
                self._release()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self.flow.transport = cast(asyncio.Transport, transport)
        if self.state is OPENING:  # else closed while the transport was being made
            self._become(READING)
            self._wait_for_data()

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport_gone()

    def _transport_gone(self) -> None:
        if self.state is not CLOSED and self.state is not RELEASED:
            self._become(CLOSED)
        if self._task is None:
            self._release()

    def _release(self) -> None:
        """Gives back what the connection held of the server: once, when its transport is
        gone and no request of it is being served."""
        if self.state is RELEASED:
            return
        self._become(RELEASED)
        server = self.server
        server.ledger.release(self.uid)
        server.budget.change(-self.charged)
        self.charged = 0
        server.forget(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def shutdown(self) -> None:
        """Stops serving (the server is closing): a request being served is cancelled, the
        transport closed once what was written has gone out."""
        if self._task is not None:
            self._task.cancel()
        self._close()

    def abort(self) -> None:
        if self.state not in _ENDING:
            self._become(CLOSING)
        if self.transport is not None:
            self.transport.abort()

    def _close(self) -> None:
        if self.state in _ENDING:
            return
        self._become(CLOSING)
        self._deadline = None
        if self.transport is not None:
            self.transport.close()

    # --- reading ------------------------------------------------------------------------
    def get_buffer(self, sizehint: int) -> memoryview:
        # the server's one read buffer: asyncio's plain protocols get a fresh 256 KiB bytes
        # object for every read (an mmap, page faults and an munmap each), which cost the
        # guard about 50 us a plugin request pair (`make bench`, http bench)
        return self.server.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        state = self.state
        if state is READING:
            # copied out at once: the next read, of any connection, reuses the buffer
            self.parser.feed(self.server.read_buffer[:nbytes])
            self._process()
        elif state in _BUFFERING:
            # sent ahead of an answer still to come: charged, and refused if over the
            # budget, when its turn comes (answers go out in order)
            self.parser.feed(self.server.read_buffer[:nbytes])
            if len(self.parser.buf) >= READ_AHEAD:
                self.flow.pause_reading()
        elif state is LINGERING:
            self._dropped += nbytes
            if self._dropped >= LINGER_BYTES:
                self._close()

    def eof_received(self) -> bool:
        self._peer_ended = True
        if self.state is LINGERING:
            self._close()
        elif self.state is READING:
            self._process()
        return True  # the answers to what was sent still go out

    def _process(self) -> None:
        """Parses on from the buffer: serves the next request, or waits for more bytes."""
        try:
            try:
                self._account()
            except BadRequest as exc:
                self._fail(exc)
                return
            while self.state is READING:
                try:
                    event = self.parser.next_event()
                except BadRequest as exc:
                    self._fail(exc)
                    return
                if event is None:
                    self._wait_for_data()
                    return
                if isinstance(event, bytes):  # 100 Continue
                    self._write(event)
                    continue
                self._serve(event)
        except Exception as exc:  # the server must outlive any one connection
            self.server.log.error("http_connection_error", error=repr(exc))
            self.abort()

    def _wait_for_data(self) -> None:
        if self._peer_ended:
            self._close()  # the client has gone (or reads no more than it has asked for)
            return
        server = self.server
        phase = self.parser.phase
        if phase is IDLE and not self.parser.buf:
            server.idle(self)
            self._timed_phase = IDLE
            self._arm(server.idle_timeout)
        elif self._timed_phase is not phase:
            # a request has begun: its head within header_timeout, its body within
            # body_timeout of the end of its head
            server.busy.add(self)
            self._timed_phase = phase
            self._arm(server.body_timeout if phase is BODY else server.header_timeout)
        self.flow.resume_reading()

    def _account(self) -> None:
        """Brings the server's byte budget up to date with what the buffer holds beyond a
        request head's worth."""
        charge = max(0, len(self.parser.buf) - self.server.max_header_bytes)
        if charge == self.charged:
            return
        try:
            self.server.budget.change(charge - self.charged)
        except BudgetExceeded:
            raise BadRequest(
                503,
                "the server holds as much unfinished request data as it may; try again later",
            ) from None
        self.charged = charge

    # --- deadlines ----------------------------------------------------------------------
    def _arm(self, timeout: float) -> None:
        """Sets the one deadline the connection has now (what it is for follows from the
        state). Its timer is moved only when the deadline comes earlier: a timer that fires
        early is set again for the later one, so a request on a kept-alive connection costs
        no timer."""
        when = self.loop.time() + max(timeout, 0.0)
        self._deadline = when
        if self._timer is None or self._timer_at > when:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(when, self._expired)
            self._timer_at = when

    def _expired(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self.state is CLOSED or self.state is RELEASED:
            return
        if self.loop.time() < deadline:
            self._timer = self.loop.call_at(deadline, self._expired)
            self._timer_at = deadline
            return
        self._deadline = None
        state = self.state
        if state is DRAINING or state is CLOSING:
            self.abort()  # a client that reads nothing is not waited for
        elif state is LINGERING:
            self._close()
        elif state is READING and self._timed_phase is IDLE:
            self._close()  # an idle kept-alive connection closes without a word
        elif state is READING:
            self._fail(BadRequest(408, f"timed out reading the request {self._timed_phase}"))

    # --- serving ------------------------------------------------------------------------
    def _serve(self, req: Request) -> None:
        self._account()  # what the request took is given back
        self._deadline = None
        self._timed_phase = None
        if self.creds is not None:
            req.peer_pid, req.peer_uid, req.peer_gid = self.creds
        if self.tcp:
            req.transport = "tcp"
        self.server.busy.add(self)
        if self.server.turnstile is not None:
            self._become(SERVING)
            self._task = asyncio.ensure_future(self._respond(req, None))
            return
        result = self._dispatch(req)
        if isinstance(result, Response):
            self._answer(req, result)
            return
        self._become(SERVING)
        self._task = asyncio.ensure_future(self._respond(req, result))

    def _dispatch(self, req: Request) -> Response | Awaitable[Response]:
        try:
            return self.server.handler(req)
        except Exception as exc:
            return self._handler_failed(req, exc)

    def _handler_failed(self, req: Request, exc: Exception) -> Response:
        self.server.log.exception(
            "http_handler_error", method=req.method, path=req.path, error=repr(exc)
        )
        return error_response(500, f"internal error: {type(exc).__name__}")

    async def _respond(self, req: Request, pending: Awaitable[Response] | None) -> None:
        """Serves `req` in a task: the answer `pending` is awaited, or (None) the request
        waits for its turn on the server's turnstile and is handed to the handler then."""
        turnstile = self.server.turnstile
        resp: Response | None = None
        started = 0.0
        try:
            if pending is None and turnstile is not None:
                await turnstile.wait_turn(root=req.peer_uid == 0)
                if self._gone(ahead_only=True):
                    self._close()
                    return
                started = time.thread_time()
                result = self._dispatch(req)
            else:
                result = pending if pending is not None else self._dispatch(req)
            if isinstance(result, Response):
                resp = result
            else:
                try:
                    resp = await result
                except Exception as exc:
                    resp = self._handler_failed(req, exc)
        finally:
            self._task = None
            if resp is None and self.state is CLOSED:
                self._release()
        self._answer(req, resp)
        if pending is None and turnstile is not None:
            turnstile.charge(time.thread_time() - started)

    def _answer(self, req: Request, resp: Response) -> None:
        """Writes the answer; then on to the next request, if the connection goes on."""
        if self.state in _ENDING:
            if self.state is CLOSED:
                self._release()
            return
        if req.method == "HEAD":
            resp = Response(resp.status, b"", resp.content_type, resp.headers)
        keep_alive = req.keep_alive and not self.server.draining
        if len(resp.body) > COPY_LIMIT:  # sent as it is rather than copied behind the head
            self._write(encode_head(resp, not keep_alive))
            self._write(resp.body)
        else:
            self._write(encode_response(resp, not keep_alive))
        if not keep_alive:
            self._close_after_write()
        elif self.flow.write_paused:  # a slow reader: its answer goes out before the next
            self._become(DRAINING)
            self._arm(self.server.write_timeout)
        else:
            self._next()

    def _next(self) -> None:
        self.server.idle(self)
        if not self.parser.pending():
            self.ahead = 0
            if self.state is not READING:
                self._become(READING)
            self._process()
            return
        # pipelined: the client sent it before reading the previous answer. Let the rest of
        # the loop run first, and drop the work of a client that has gone.
        self.ahead += 1
        if self.server.turnstile is None:
            self._become(YIELDING)
            self.loop.call_soon(self._take_ahead)
        else:
            self._take_ahead()  # the request waits for its turn on the turnstile

    def _take_ahead(self) -> None:
        if self.state in _ENDING:
            return
        if self.state is not READING:
            self._become(READING)
        if self._gone():
            self._close()
            return
        limits = self.server.peer_limits
        if limits is not None and self.ahead > limits.max_pipelined:
            message = (
                f"more than {limits.max_pipelined} requests sent ahead of their "
                "answers; read each answer before sending more"
            )
            # debug: a flood would otherwise write a log line per connection
            self.server.log.debug("http_bad_request", status=429, error=message)
            self._refuse(error_response(429, message))
            return
        self._process()

    def _fail(self, exc: BadRequest) -> None:
        self.server.log.info("http_bad_request", status=exc.status, error=exc.message)
        self._refuse(error_response(exc.status, exc.message))

    def _refuse(self, resp: Response) -> None:
        """Answers `resp` and ends the connection: nothing more the client sent is parsed.

        Closed with bytes of the client's still unread, a socket is reset, and the client
        would meet the reset before the answer (a body too large is refused at its head,
        with the body still coming). So the answer is followed by the end of our side, and
        what the client still sends is dropped until it ends its side, or for `LINGER_S`."""
        self._write(encode_response(resp, True))
        transport = self.transport
        if (
            self.flow.write_paused
            or self._peer_ended
            or transport is None
            or transport.is_closing()
        ):
            self._close_after_write()
            return
        transport.write_eof()
        self._become(LINGERING)
        self.parser.buf.clear()
        self._account()
        self.flow.resume_reading()
        self._arm(LINGER_S)

    def _close_after_write(self) -> None:
        paused = self.flow.write_paused
        self._close()
        if paused:  # what is written goes out first, within the write timeout
            self._arm(self.server.write_timeout)

    # --- writing ------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()
        if self.state is DRAINING:
            self._deadline = None
            self._next()

    def _gone(self, *, ahead_only: bool = False) -> bool:
        """Whether the client has gone: its connection is closing here, or (a poll of the
        socket) the peer has hung up, which a Unix socket shows at once even while requests
        it sent are still unread. With `ahead_only`, the socket is polled only for a
        request that was sent ahead of the previous answer."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return True
        if ahead_only and not self.ahead:
            return False
        poller = select.poll()
        try:
            poller.register(self.sock.fileno(), select.POLLIN)
            events = poller.poll(0)
        except (OSError, ValueError):
            return True
        return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in events)
