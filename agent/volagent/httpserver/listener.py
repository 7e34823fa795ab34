"""Accepting connections on a listening socket, a few per turn of the event loop.

asyncio's own servers accept up to their backlog at once and make a transport, streams and
a task for each connection before anyone can look at it: a client reconnecting as fast as it
can costs the event loop, and so every other server on it, milliseconds per turn. Here the
peer is judged first (`accepted` may refuse it with a few system calls: see HttpServer), at
most `batch` connections are taken per turn, and with a `Turnstile` accepting waits, like
requests do, for the share of the loop the server may use.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable

from volagent.httpserver.limits import Turnstile


class Listener:
    """Calls `accepted(sock)` for every connection taken from `sock` (listening, non-blocking)."""

    def __init__(
        self,
        sock: socket.socket,
        accepted: Callable[[socket.socket], None],
        *,
        batch: int,
        turnstile: Turnstile | None = None,
    ) -> None:
        self.sock = sock
        self.accepted = accepted
        self.batch = batch
        self.turnstile = turnstile
        self._loop = asyncio.get_running_loop()
        self._reading = False
        self._resume: asyncio.TimerHandle | None = None
        self._closed = False

    def start(self) -> None:
        self.sock.setblocking(False)
        self._read()

    def _read(self) -> None:
        self._resume = None
        if not self._closed and not self._reading:
            self._loop.add_reader(self.sock.fileno(), self._ready)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self.sock.fileno())
            self._reading = False

    def _ready(self) -> None:
        if self.turnstile is None:
            self._accept()
            return
        # not readable again until the turnstile gives this listener its pass
        self._stop_reading()
        self.turnstile.call_in_turn(self._accept_in_turn)

    def _accept_in_turn(self) -> None:
        if self._closed:
            return
        started = time.thread_time()
        self._accept()
        if self.turnstile is not None:
            self.turnstile.charge(time.thread_time() - started)
        if self._resume is None:
            self._read()

    def _accept(self) -> None:
        for _ in range(self.batch):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # out of descriptors or the like: try again a little later, not in a loop
                self._stop_reading()
                if self._resume is None:
                    self._resume = self._loop.call_later(0.1, self._read)
                break
            conn.setblocking(False)
            self.accepted(conn)

    @property
    def address(self) -> str:
        with contextlib.suppress(OSError):
            return str(self.sock.getsockname())
        return ""

    def close(self) -> None:
        self._closed = True
        self._stop_reading()
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self.sock.close()
