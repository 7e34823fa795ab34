"""What one client may take of a socket it shares with others, and the bookkeeping for it.

The status socket is open to every member of the `volagent` group and shares one event loop
with the start guard, which every Docker call on the host waits for. So no client may hold
more than its share of that socket, and the socket's work must come in small pieces:
- `PeerLimits`: the caps, per server (the guard's socket, root only, has none);
- `ConnectionLedger`: connections per peer uid, with slots only root may take;
- `ByteBudget`: request bytes all connections together may hold beyond their heads;
- `Turnstile`: lets a server start on at most one request per turn of the event loop, so
  whatever else is ready (a guard decision) never waits behind more than one of them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

# the key of peers without credentials (TCP): they share one set of slots
UNKNOWN_PEER = -1


@dataclass(frozen=True)
class PeerLimits:
    """Caps for one server. Counts are per server; sizes are bytes."""

    per_uid_connections: int = 16
    """connections one non-root uid (or all TCP peers together) may hold at once"""
    root_reserved: int = 64
    """of the server's `max_connections`, slots only root (uid 0) may take"""
    max_pipelined: int = 16
    """requests a client may send ahead of the answers it has not waited for"""
    buffered_total: int = 4 << 20
    """request bytes all connections together may hold in memory beyond their request heads
    (partial bodies, pipelined requests)"""

    def __post_init__(self) -> None:
        for name in ("per_uid_connections", "max_pipelined", "buffered_total"):
            if getattr(self, name) < 1:
                raise ValueError(f"PeerLimits.{name} must be at least 1")
        if self.root_reserved < 0:
            raise ValueError("PeerLimits.root_reserved must not be negative")


class ConnectionLedger:
    """Who holds how many connections. `admit` says why a new one is refused, or None."""

    def __init__(self, max_connections: int, limits: PeerLimits | None) -> None:
        if limits is not None and limits.root_reserved >= max_connections:
            raise ValueError("root_reserved must leave slots for other peers")
        self.max_connections = max_connections
        self.limits = limits
        self.total = 0
        self.by_uid: dict[int, int] = {}

    def admit(self, uid: int | None) -> str | None:
        """Takes a slot for a peer (`uid` None: no credentials), or says why not."""
        key = UNKNOWN_PEER if uid is None else uid
        if self.total >= self.max_connections:
            return f"too many connections ({self.max_connections})"
        if self.limits is not None and key != 0:
            held = self.by_uid.get(key, 0)
            if held >= self.limits.per_uid_connections:
                who = "peers without credentials" if key == UNKNOWN_PEER else f"uid {key}"
                return f"{who} already hold {held} connections, the most one peer may"
            if (
                self.total - self.by_uid.get(0, 0)
                >= self.max_connections - self.limits.root_reserved
            ):
                return "the connections not kept for root are all taken"
        self.total += 1
        self.by_uid[key] = self.by_uid.get(key, 0) + 1
        return None

    def release(self, uid: int | None) -> None:
        key = UNKNOWN_PEER if uid is None else uid
        self.total -= 1
        left = self.by_uid.get(key, 0) - 1
        if left > 0:
            self.by_uid[key] = left
        else:
            self.by_uid.pop(key, None)


class BudgetExceeded(Exception):
    """Taking these bytes would go over the server's budget."""


class ByteBudget:
    """A count of bytes held by all connections, against a limit (None: unlimited)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0

    def change(self, delta: int) -> None:
        """Adds `delta` (negative: gives back); raises BudgetExceeded, taking nothing, when a
        positive change would go over the limit."""
        if delta > 0 and self.limit is not None and self.used + delta > self.limit:
            raise BudgetExceeded(f"{self.used + delta} bytes over the budget of {self.limit}")
        self.used += delta


class Turnstile:
    """At most one pass per turn of the event loop, in order of arrival.

    A pass is a promise to do one request's work before the next await; the callbacks that
    became ready meanwhile (another server's requests) run before the next pass is given."""

    def __init__(self) -> None:
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._spent = False  # a pass has been given in this turn of the loop

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def wait_turn(self) -> None:
        loop = asyncio.get_running_loop()
        if not self._spent and not self._waiting:
            self._spent = True
            loop.call_soon(self._next)
            return
        fut: asyncio.Future[None] = loop.create_future()
        self._waiting.append(fut)
        await fut

    def _next(self) -> None:
        # runs once per loop turn while anyone waits; the pass it gives is used next turn
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():  # a cancelled waiter gives up its place
                fut.set_result(None)
                asyncio.get_running_loop().call_soon(self._next)
                return
        self._spent = False
