"""What one client may take of a socket it shares with others, and the bookkeeping for it.

The status socket is open to every member of the `volagent` group and shares one event loop
with the start guard, which every Docker call on the host waits for. So no client may hold
more than its share of that socket, and the socket's work must come in small pieces:
- `PeerLimits`: the caps, per server (the guard's socket, root only, has none);
- `ConnectionLedger`: connections per peer uid, with slots only root may take;
- `ByteBudget`: request bytes all connections together may hold beyond their heads;
- `Turnstile`: lets a server start on at most one request per turn of the event loop, root's
  first, and within its share of the loop's time, so whatever else is ready (a guard
  decision) never waits behind more than one of them, and mostly behind none.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
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
    loop_share: float = 0.2
    """the most of the event loop's CPU time the server's work may take while other work
    (the start guard's) waits"""

    def __post_init__(self) -> None:
        for name in ("per_uid_connections", "max_pipelined", "buffered_total"):
            if getattr(self, name) < 1:
                raise ValueError(f"PeerLimits.{name} must be at least 1")
        if self.root_reserved < 0:
            raise ValueError("PeerLimits.root_reserved must not be negative")
        if not 0 < self.loop_share <= 1:
            raise ValueError("PeerLimits.loop_share must be in (0, 1]")


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
    """Passes for a server's work on the event loop: one per turn of the loop, root's first,
    and within `share` of the loop's time.

    A pass is a promise to do one piece of work (a request, a batch of accepts) before the
    next await; `charge` says how much CPU time it took (the thread's, so that time the
    process spent preempted by others is not held against the server), and no pass is given
    again until the loop has had `1/share - 1` times as long for everything else (the start
    guard's decisions). A charge is counted up to `max_charge` seconds: a piece of work that
    awaited something (the rack's hosts) gave the loop to others meanwhile."""

    def __init__(self, share: float = 0.2, max_charge: float = 0.005) -> None:
        if not 0 < share <= 1:
            raise ValueError("Turnstile.share must be in (0, 1]")
        self.share = share
        self.max_charge = max_charge
        self.free_at = 0.0  # loop time before which no pass is given
        self._root: deque[asyncio.Future[None]] = deque()
        self._others: deque[asyncio.Future[None]] = deque()
        # listeners waiting to accept: every other pass is theirs while requests wait too,
        # so a queue of requests cannot keep root's next connection out
        self._acceptors: deque[Callable[[], None]] = deque()
        self._accepted_last = False
        self._spent = False  # a pass has been given in this turn of the loop
        self._handle: asyncio.Handle | None = None  # the next pass, when scheduled

    @property
    def waiting(self) -> int:
        return len(self._root) + len(self._others) + len(self._acceptors)

    def call_in_turn(self, work: Callable[[], None]) -> None:
        """Runs `work` (which charges its time itself) with a pass of its own: now, when
        one is free, else when its turn comes."""
        loop = asyncio.get_running_loop()
        if not self._spent and not self.waiting and loop.time() >= self.free_at:
            self._spent = True
            self._accepted_last = True
            loop.call_soon(self._turn_over)
            work()
            return
        self._acceptors.append(work)
        self._schedule(loop)

    async def wait_turn(self, *, root: bool = False) -> None:
        loop = asyncio.get_running_loop()
        if not self._spent and not self.waiting and loop.time() >= self.free_at:
            self._spent = True
            loop.call_soon(self._turn_over)
            return
        fut: asyncio.Future[None] = loop.create_future()
        (self._root if root else self._others).append(fut)
        self._schedule(loop)
        await fut

    def charge(self, seconds: float) -> None:
        """`seconds` of the server's work were just done on the loop."""
        rest = min(seconds, self.max_charge) * (1 - self.share) / self.share
        self.free_at = max(self.free_at, asyncio.get_running_loop().time()) + rest

    def _turn_over(self) -> None:
        self._spent = False
        self._schedule(asyncio.get_running_loop())

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._handle is not None or self._spent or not self.waiting:
            return
        if loop.time() < self.free_at:
            self._handle = loop.call_at(self.free_at, self._next)
        else:
            self._handle = loop.call_soon(self._next)

    def _next(self) -> None:
        self._handle = None
        loop = asyncio.get_running_loop()
        if self._spent or loop.time() < self.free_at:  # charged again meanwhile
            self._schedule(loop)
            return
        requests = self._root or self._others
        if self._acceptors and (not requests or not self._accepted_last):
            self._spent = self._accepted_last = True
            loop.call_soon(self._turn_over)
            self._acceptors.popleft()()
            return
        while self._root or self._others:
            fut = (self._root or self._others).popleft()
            if not fut.done():  # a cancelled waiter gives up its place
                fut.set_result(None)
                self._spent = True
                self._accepted_last = False
                # the pass is used in the next turn; the one after it, a turn later
                loop.call_soon(self._turn_over)
                return
