"""A small HTTP/1.1 server on asyncio for volagent's local sockets.

It serves a Unix socket (bound to a path, or handed over already listening by systemd) and
optionally TCP. It parses requests itself (see wire), with hard limits, so that one slow,
huge or garbled connection is answered (400, 408, 413, 431) and closed without hurting the
others. On a Unix socket the peer's credentials (SO_PEERCRED) travel with the request, which
is what the API checks before any state-changing call. This module is the server's side of
the lifecycle: listening, admitting or refusing connections, and stopping; each connection's
own lifecycle is in connection.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import stat
import struct
from collections.abc import Awaitable, Callable

from volagent import log
from volagent.httpserver.connection import Connection
from volagent.httpserver.limits import ByteBudget, ConnectionLedger, PeerLimits, Turnstile
from volagent.httpserver.listener import Listener
from volagent.httpserver.wire import Request, Response, encode_response, error_response

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
# a refused connection is answered this long after it came, at most so many at once
REFUSE_DELAY_S = 0.25
REFUSING_MAX = 64
# bytes taken from a socket per read, into the one buffer the server's connections share
READ_SIZE = 256 << 10  # what asyncio's transports read at once
# how long a closing server waits for its connections' transports to close, twice: once
# after closing them, once after aborting those still open
CLOSE_WAIT_S = 1.0

# Answers a request: at once (a Response), or with an awaitable of one when it must wait
# (the connection then serves it in a task of its own).
Handler = Callable[[Request], Response | Awaitable[Response]]


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
        # what the connections share (see connection.py)
        self.ledger = ConnectionLedger(max_connections, peer_limits)
        self.budget = ByteBudget(peer_limits.buffered_total if peer_limits else None)
        self.turnstile = Turnstile(peer_limits.loop_share) if peer_limits else None
        self.connections: set[Connection] = set()
        # connections between the first byte of a request and the end of its answer
        self.busy: set[Connection] = set()
        self.draining = False  # closing: answers say `Connection: close`
        self.read_buffer = memoryview(bytearray(READ_SIZE))
        self._settled = asyncio.Event()  # a connection went idle or ended: close() looks again
        self.log = log.get("http", server=name)
        self._fds: dict[Connection, int] = {}  # each connection's descriptor
        self._listeners: list[Listener] = []
        self._refusing: dict[int, Callable[[], None]] = {}  # fd -> what ends its refusal
        self._unix_paths: list[tuple[str, int, int]] = []  # path, st_dev, st_ino we bound

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
        self.log.info("http_listening", address=path or self._listeners[-1].address)

    async def start_tcp(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=self.backlog)
        self._listen(sock)
        self.log.info("http_listening", address=f"{host}:{self.tcp_port or port}")

    def _listen(self, sock: socket.socket) -> None:
        listener = Listener(sock, self._accepted, batch=self.accept_batch, turnstile=self.turnstile)
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
        self.draining = True
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        for finish in list(self._refusing.values()):
            finish()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        linger_until = loop.time() + min(grace, self.linger_idle)
        while True:
            working = bool(self.busy) or self._unread_input()
            lingering = bool(self.connections) and loop.time() < linger_until
            if loop.time() >= deadline or not (working or lingering):
                break
            # woken when a connection goes idle or ends, or at the deadline that applies
            self._settled.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline if working else linger_until):
                    await self._settled.wait()
        await self._close_connections()
        for path, dev, ino in self._unix_paths:
            # only our own socket file: a successor may already have bound a new one there
            with contextlib.suppress(OSError):
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == (dev, ino):
                    os.unlink(path)
        self._unix_paths.clear()

    async def _close_connections(self) -> None:
        """Closes every connection (a request being served is cancelled) and waits, a
        little, for their transports to close; those still open after that are aborted."""
        connections = list(self.connections)
        for conn in connections:
            conn.shutdown()
        for abort in (True, False):
            pending = [c.closed for c in connections if not c.closed.done()]
            if not pending:
                return
            await asyncio.wait(pending, timeout=CLOSE_WAIT_S)
            if abort:
                for conn in connections:
                    if not conn.closed.done():
                        conn.abort()

    def _unread_input(self) -> bool:
        """Whether a kept-alive connection has bytes the server has not read yet: a request
        the client already sent, which the connection picks up at a next turn of the
        loop. Closing the connection now would cut that request off."""
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
        its share; else served by a Connection of its own."""
        creds = peer_credentials(sock)
        uid = creds[1] if creds is not None else None
        refused = self.ledger.admit(uid)
        if refused is not None:
            self._refuse(sock, refused)
            return
        conn = Connection(self, sock, creds)
        self.connections.add(conn)
        self._fds[conn] = sock.fileno()
        conn.start()

    def idle(self, conn: Connection) -> None:
        """A connection has answered its requests and waits for the next."""
        self.busy.discard(conn)
        self._settled.set()

    def forget(self, conn: Connection) -> None:
        """A connection has ended."""
        self.connections.discard(conn)
        self.busy.discard(conn)
        self._fds.pop(conn, None)
        self._settled.set()

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


def _answer_and_close(sock: socket.socket, answer: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.recv(65536)  # the request (some of it): read, so the answer is not reset away
    with contextlib.suppress(OSError):
        sock.send(answer)
    sock.close()


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
