"""Watching one mount: the mount table at once, a probe every `probe_interval_s`.

`Supervisor.watch()` returns when the mount must be let go, with the reason (a LetGo).
The probe runs in a worker thread; at most one is outstanding, and one that outlives
`probe_timeout_s` makes the state `stalled` while it is still left to finish (its answer,
when it comes, makes the mount healthy again at once).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from volagent.config import REMOUNT, Config, keys_applying, value_of
from volagent.mount import probe, table
from volagent.mount.report import Reporter
from volagent.mount.target import Target
from volagent.worker import TimedWorker


class LetGo(StrEnum):
    """Why a mount is let go, as `reason` of the mount.lost and mount.remount log events."""

    GONE = "gone"  # it left the mount table, or something else was mounted over it
    DEAD = "dead"  # a probe failed the way dead mounts fail (ENOTCONN, ESTALE, EIO)
    STALLED = "stalled"  # probes stayed hung for `stalled_remount_after` probes in a row
    REQUESTED = "requested"  # a remount was asked for
    CONFIG = "config"  # the mount configuration changed


ASKED = frozenset({LetGo.REQUESTED, LetGo.CONFIG})  # not lost: let go on purpose


@dataclass
class Current:
    """The mount being supervised."""

    target: Target
    mount_point: str
    entry: table.MountEntry
    config: Config


class Signals:
    """Wake-ups of the mount side's one task: table changes, remount requests, probe ends."""

    def __init__(self) -> None:
        self.wakeup = asyncio.Event()
        self.table_dirty = False
        self.remount_requested = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def table_changed(self) -> None:
        self.table_dirty = True
        self.wakeup.set()

    def request_remount(self) -> None:
        self.remount_requested = True
        self.wakeup.set()

    def config_changed(self) -> None:
        # looked at now: a change that needs a remount, or a shorter probe interval, need
        # not wait for the next probe
        self.wakeup.set()

    def wake_threadsafe(self, _: object = None) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(self.wakeup.set)

    async def sleep(self, seconds: float, relevant: Callable[[], bool]) -> None:
        """Sleeps `seconds`, or less when a wake-up for which `relevant()` holds comes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, seconds)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the event is set, and the task would never stop
            try:
                async with asyncio.timeout(remaining):
                    await self.wakeup.wait()
            except TimeoutError:
                return
            self.wakeup.clear()
            if relevant():
                return


@dataclass
class _Probe:
    future: concurrent.futures.Future[probe.ProbeResult]
    started: float
    overdue_at: float | None = None


class Supervisor:
    def __init__(self, report: Reporter, signals: Signals, config: Callable[[], Config]) -> None:
        self._report = report
        self._signals = signals
        self._config = config
        self._worker = TimedWorker("mount-probe", max_threads=4)
        self._canary = probe.canary_name()
        self._probe: _Probe | None = None
        self._stalled = 0

    def close(self) -> None:
        self._worker.close()

    async def watch(self, cur: Current) -> tuple[LetGo, str]:
        """Watches and probes `cur` until it must be let go; returns (reason, error)."""
        loop = asyncio.get_running_loop()
        self._probe = None  # a hung probe of an earlier mount is left to its thread
        self._stalled = 0
        next_tick = loop.time()
        while True:
            mcfg = cur.config.mount
            wake_at = next_tick
            p = self._pending()
            if p is not None and p.overdue_at is None:
                wake_at = min(wake_at, p.started + mcfg.probe_timeout_s)
            await self._signals.sleep(wake_at - loop.time(), lambda: True)
            self._signals.table_dirty = False
            if self._signals.remount_requested:
                return LetGo.REQUESTED, "remount requested"
            interval = mcfg.probe_interval_s
            changed = self._config_change(cur)
            if changed:
                return LetGo.CONFIG, changed
            if cur.config.mount.probe_interval_s < interval:
                next_tick = min(next_tick, loop.time() + cur.config.mount.probe_interval_s)
            entry = table.find_mount(cur.mount_point)
            if entry is None or entry.mount_id != cur.entry.mount_id:
                what = "unmounted" if entry is None else f"covered by {entry.source}"
                return LetGo.GONE, f"{cur.mount_point} was {what} by someone else"
            now = loop.time()
            p = self._pending()
            if p is not None and p.future.done():
                self._probe = None
                verdict = self._probe_done(cur, p.future)
                if verdict is not None:
                    return verdict
            elif p is not None and p.overdue_at is None and now >= p.started + mcfg.probe_timeout_s:
                p.overdue_at = now
                self._mark_stalled(cur)
            if now >= next_tick:
                next_tick = now + mcfg.probe_interval_s
                p = self._pending()
                if p is None:
                    self._start_probe(cur)
                elif p.overdue_at is not None and p.overdue_at < now:
                    self._mark_stalled(cur)  # still hung an interval later: one more
            if self._stalled >= mcfg.stalled_remount_after:
                return LetGo.STALLED, f"stalled for {self._stalled} probes in a row: remounting"

    def _pending(self) -> _Probe | None:
        # a method, not the attribute, so the checker does not narrow it across awaits
        return self._probe

    def _config_change(self, cur: Current) -> str:
        cfg = self._config()
        if cfg is cur.config:
            return ""
        if _target(cfg) != _target(cur.config):
            return "the mount configuration changed"
        cur.config = cfg  # other sections changed: keep the mount, use the new intervals
        return ""

    def _start_probe(self, cur: Current) -> None:
        fut = self._worker.submit(functools.partial(probe.probe, cur.mount_point, self._canary))
        fut.add_done_callback(self._signals.wake_threadsafe)
        self._probe = _Probe(future=fut, started=asyncio.get_running_loop().time())

    def _probe_done(
        self, cur: Current, fut: concurrent.futures.Future[probe.ProbeResult]
    ) -> tuple[LetGo, str] | None:
        exc = fut.exception()
        if exc is None:
            result = fut.result()
            if result.dev != cur.entry.dev:
                return LetGo.GONE, f"{cur.mount_point} is not the mounted filesystem any more"
            self._stalled = 0
            self._report.healthy(cur.target, cur.mount_point, result.dev, result.seconds)
            return None
        self._report.state.metrics.probe_failures.inc()
        if probe.is_dead(exc):
            return LetGo.DEAD, f"the mount is dead ({_describe(exc)}): remounting"
        # it answers, but the canary failed (full, read-only, permissions): keep it, say so
        self._stalled = 0
        problem = f"probe failed: {_describe(exc)}"
        self._report.healthy(cur.target, cur.mount_point, cur.entry.dev, None, problem)
        return None

    def _mark_stalled(self, cur: Current) -> None:
        self._stalled += 1
        self._report.stalled(cur.mount_point, cur.config.mount.probe_timeout_s, self._stalled)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _target(cfg: Config) -> tuple[object, ...]:
    """What is mounted where: the keys declared to need a remount (probe timing and the
    like apply live, without pulling the filesystem from under running containers), and
    the mount point, which the mount follows while the sockets wait for a restart."""
    return (cfg.mount_point, *(value_of(cfg, k) for k in keys_applying(REMOUNT)))
