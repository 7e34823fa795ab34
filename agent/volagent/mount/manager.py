"""MountManager: keeps the shared filesystem mounted at the mount point and knows its health.

The life of a mount, round and round until the daemon stops:
  establish  find what belongs at the mount point, adopt it if it is already there, else mount
             it (retrying with backoff while the status shows `mounting` and the last error);
  supervise  watch the mount table (pollable, so changes are seen at once) and probe every
             `probe_interval_s`; a probe that outlives `probe_timeout_s` makes it `stalled`;
  let go     when the mount vanished, died, stalled too long, or a remount was asked for:
             lazily unmount what is ours, lock the directory underneath, and establish again.
Nothing here blocks the event loop: filesystem calls run in worker threads that a hung mount
may keep, the mount program runs as a subprocess with a timeout. volagent never unmounts on
stop: containers keep using the mount.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.wait import wait_exponential_jitter

from volagent import log
from volagent.config import Config
from volagent.errors import (
    EfsUnavailable,
    FilesystemHung,
    ForeignMount,
    MountError,
    PermanentError,
    TemporaryError,
)
from volagent.mount import kernel, probe, table, underlay
from volagent.mount.target import Target, local_target
from volagent.state import AgentState
from volagent.worker import TimedWorker

T = TypeVar("T")
Discover = Callable[[Config], Awaitable[Target]]
MountProgram = Callable[[Config, Target, str], Awaitable[None]]
LOCAL_WARNING = "mount.local"
PROBE_WARNING = "mount.probe"
IMMUTABLE_WARNING = "mount.immutable"


@dataclass
class Current:
    """The mount being supervised."""

    target: Target
    mount_point: str
    entry: table.MountEntry
    config: Config


@dataclass
class _Probe:
    future: concurrent.futures.Future[probe.ProbeResult]
    started: float
    overdue_at: float | None = None


class MountManager:
    """Owns the mount point. `run()` until cancelled; `request_remount()` from the API."""

    def __init__(
        self,
        state: AgentState,
        on_healthy: Callable[[], None],
        *,
        discover: Discover | None = None,
        mount_program: MountProgram | None = None,
    ) -> None:
        self.state = state
        self._on_healthy = on_healthy
        self._discover = discover
        self._mount_program = mount_program
        self._log = log.get("mount")
        self._fs = TimedWorker("mount-fs", max_threads=4)
        self._prober = TimedWorker("mount-probe", max_threads=4)
        self._canary = probe.canary_name()
        self._wakeup = asyncio.Event()
        self._table_dirty = False
        self._remount_requested = False
        self._fallback = False
        self._mounts_made = 0
        self._probe: _Probe | None = None
        self._stalled = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- the interface ---------------------------------------------------------------
    def request_remount(self) -> None:
        """Lazily unmount and mount again (also retries EFS after a local fallback)."""
        self._remount_requested = True
        self._wakeup.set()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        watch = table.TableWatch(self._on_table_change)
        try:
            watch.start()
        except OSError as exc:
            # without it, table changes are still seen at the next probe tick
            self._log.warning("mount.table_watch_unavailable", error=str(exc))
        try:
            while True:
                current = await self._establish()
                reason, error = await self._supervise(current)
                await self._let_go(current, reason, error)
        finally:
            watch.close()
            self._fs.close()
            self._prober.close()

    # --- helpers -----------------------------------------------------------------------
    def _on_table_change(self) -> None:
        self._table_dirty = True
        self._wakeup.set()

    def _wake_threadsafe(self, _: object = None) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(self._wakeup.set)

    async def _sleep(self, seconds: float, relevant: Callable[[], bool]) -> None:
        """Sleeps `seconds`, or less when a wake-up for which `relevant()` holds comes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, seconds)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return
            self._wakeup.clear()
            if relevant():
                return

    async def _blocking(self, fn: Callable[[], T], what: str) -> T:
        timeout = max(5.0, self.state.config.mount.probe_timeout_s)
        return await self._fs.run(fn, timeout, what)

    def _show(self, cfg: Config, target: Target | None) -> None:
        m = self.state.mount
        m.mount_point = cfg.mount_point
        if target is not None:
            m.type = target.type
            m.source = target.source
            m.file_system_id = target.file_system_id

    def _unhealthy(self, state: str, error: str | None) -> None:
        self.state.mount_dev = None
        self.state.set_mount_state(state, error)

    # --- establish ---------------------------------------------------------------------
    async def _establish(self) -> Current:
        while True:
            mcfg = self.state.config.mount
            if self.state.mount.state not in ("mounting", "unmounted"):
                self._unhealthy("mounting", self.state.mount.error)
            initial = min(1.0, mcfg.probe_interval_s)
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(TemporaryError),
                wait=wait_exponential_jitter(
                    initial=initial,
                    max=min(60.0, max(2.0, 4 * mcfg.probe_interval_s)),
                    jitter=initial,
                ),
                sleep=self._backoff,
                before_sleep=self._attempt_failed,
                reraise=True,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        return await self._attempt()
            except PermanentError as exc:
                self._unhealthy("unmounted", str(exc))
                self._log.error("mount.refused", error=str(exc))
                # a foreign mount stays until an operator acts: look again when the table
                # changes, a remount is asked for, or now and then
                self._table_dirty = False
                wait = max(10.0, 2 * mcfg.probe_interval_s)
                await self._sleep(wait, lambda: self._table_dirty or self._remount_requested)

    async def _backoff(self, seconds: float) -> None:
        await self._sleep(seconds, lambda: self._remount_requested)

    def _attempt_failed(self, retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        error = str(exc) if exc else "unknown error"
        self._unhealthy("mounting", error)
        self._log.warning(
            "mount.attempt_failed",
            error=error,
            kind=type(exc).__name__,
            attempt=retry_state.attempt_number,
            retry_in_s=round(wait, 2),
        )

    async def _attempt(self) -> Current:
        cfg = self.state.config
        if self._remount_requested:
            self._remount_requested = False
            self._fallback = False
        self._show(cfg, None)
        mp = await self._blocking(
            functools.partial(underlay.canonical_mount_point, cfg.mount_point),
            "preparing the mount point",
        )
        entry = table.find_mount(mp)
        if entry is None:
            await self._lock(mp)
        target = await self._target(cfg)
        self._show(cfg, target)
        if entry is not None:
            if not await self._is_same(target, entry, mp):
                raise ForeignMount(
                    f"{mp} already has {entry.fstype} {entry.source} mounted, not "
                    f"{target.source}: volagent never mounts on top of another filesystem; "
                    f"fix: unmount it (umount {mp}) or point mount_point elsewhere"
                )
            self._log.info("mount.adopted", mount_point=mp, source=entry.source, type=target.type)
        else:
            await self._mount(cfg, target, mp)
            entry = table.find_mount(mp)
            if entry is None:
                raise MountError(f"mounting {target.source} reported success, but {mp} is empty")
            self._mounts_made += 1
            if self._mounts_made > 1:
                self.state.metrics.remounts.inc()
            self._log.info("mount.mounted", mount_point=mp, source=target.source, type=target.type)
        return Current(target=target, mount_point=mp, entry=entry, config=cfg)

    async def _target(self, cfg: Config) -> Target:
        if cfg.mount.type == "local":
            return local_target(cfg)
        if self._fallback:
            return local_target(cfg, fallback=True)
        try:
            return await self._shared_target(cfg)
        except EfsUnavailable as exc:
            if not cfg.mount.allow_local_fallback:
                raise
            self._fallback = True
            self._log.warning("mount.local_fallback", reason=str(exc), path=cfg.mount.local_path)
            return local_target(cfg, fallback=True)

    async def _shared_target(self, cfg: Config) -> Target:
        if self._discover is None:
            raise MountError(f"mount type {cfg.mount.type} is not available in this build")
        return await self._discover(cfg)

    async def _is_same(self, target: Target, entry: table.MountEntry, mp: str) -> bool:
        if target.is_local:
            await self._blocking(functools.partial(_ensure_dir, target.source), "local_path")
            return await self._blocking(
                functools.partial(_same_directory, mp, target.source),
                "comparing the mount point with local_path",
            )
        return target.matches_source(entry)

    async def _mount(self, cfg: Config, target: Target, mp: str) -> None:
        if self.state.mount.state != "mounting":
            self._unhealthy("mounting", self.state.mount.error)
        if target.is_local:
            await self._blocking(functools.partial(_ensure_dir, target.source), "local_path")
        lifted = await self._blocking(
            functools.partial(underlay.lift, mp), "unlocking the mount point"
        )
        try:
            if target.is_local:
                await self._blocking(
                    functools.partial(kernel.bind_mount, target.source, mp), "bind mount"
                )
            elif self._mount_program is not None:
                await self._mount_program(cfg, target, mp)
            else:
                raise MountError(f"mount type {target.type} is not available in this build")
        except OSError as exc:
            raise MountError(f"mounting {target.source} on {mp} failed: {exc.strerror}") from None
        finally:
            await self._blocking(
                functools.partial(underlay.relock, lifted), "locking the directory underneath"
            )

    async def _lock(self, mp: str) -> None:
        """Makes the unmounted mount point immutable; warns where that is not possible."""
        try:
            changed = await self._blocking(
                functools.partial(underlay.lock, mp), "locking the mount point"
            )
        except underlay.NoImmutableFlag as exc:
            self.state.warn(
                IMMUTABLE_WARNING,
                f"{mp} cannot be made immutable ({exc}): while unmounted, writes under it "
                "would land on local disk",
            )
            return
        except (OSError, FilesystemHung) as exc:
            self._log.warning("mount.lock_failed", mount_point=mp, error=str(exc))
            return
        self.state.clear_warning(IMMUTABLE_WARNING)
        if changed:
            self._log.info("mount.locked", mount_point=mp)

    # --- supervise ---------------------------------------------------------------------
    async def _supervise(self, cur: Current) -> tuple[str, str]:
        """Watches and probes `cur` until it must be let go; returns (reason, error)."""
        loop = asyncio.get_running_loop()
        self._probe = None
        self._stalled = 0
        next_tick = loop.time()
        while True:
            mcfg = cur.config.mount
            wake_at = next_tick
            p = self._pending()
            if p is not None and p.overdue_at is None:
                wake_at = min(wake_at, p.started + mcfg.probe_timeout_s)
            await self._sleep(wake_at - loop.time(), lambda: True)
            self._table_dirty = False
            if self._remount_requested:
                return "requested", "remount requested"
            changed = self._config_change(cur)
            if changed:
                return "config", changed
            entry = table.find_mount(cur.mount_point)
            if entry is None or entry.mount_id != cur.entry.mount_id:
                what = "unmounted" if entry is None else f"covered by {entry.source}"
                return "gone", f"{cur.mount_point} was {what} by someone else"
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
                    self._mark_stalled(cur)  # still hung one interval later: one more
            if self._stalled >= mcfg.stalled_remount_after:
                return "stalled", (f"stalled for {self._stalled} probes in a row: remounting")

    def _pending(self) -> _Probe | None:
        # a method, not the attribute, so the checker does not narrow it across awaits
        return self._probe

    def _config_change(self, cur: Current) -> str:
        cfg = self.state.config
        if cfg is cur.config:
            return ""
        old = cur.config
        if cfg.mount != old.mount or cfg.mount_point != old.mount_point:
            return "the mount configuration changed"
        cur.config = cfg  # other sections changed: keep the mount, use the new intervals
        return ""

    def _start_probe(self, cur: Current) -> None:
        fut = self._prober.submit(functools.partial(probe.probe, cur.mount_point, self._canary))
        fut.add_done_callback(self._wake_threadsafe)
        self._probe = _Probe(future=fut, started=asyncio.get_running_loop().time())

    def _probe_done(
        self, cur: Current, fut: concurrent.futures.Future[probe.ProbeResult]
    ) -> tuple[str, str] | None:
        exc = fut.exception()
        if exc is None:
            result = fut.result()
            if result.dev != cur.entry.dev:
                return "gone", f"{cur.mount_point} is not the mounted filesystem any more"
            self._healthy(cur, result.dev, result.seconds, None)
            return None
        self.state.metrics.probe_failures.inc()
        if probe.is_dead(exc):
            return "dead", f"the mount is dead ({_describe(exc)}): remounting"
        # the filesystem answers but the canary failed (full, read-only, permissions): keep
        # it mounted and say so
        self._healthy(cur, cur.entry.dev, None, f"probe failed: {_describe(exc)}")
        return None

    def _healthy(self, cur: Current, dev: int, seconds: float | None, problem: str | None) -> None:
        st = self.state
        target = cur.target
        was = st.mount.state == target.healthy_state
        if seconds is not None:
            st.metrics.probe_seconds.observe(seconds)
            st.mount.last_probe_ms = round(seconds * 1000, 3)
        self._stalled = 0
        st.mount_dev = dev
        st.set_mount_state(target.healthy_state, problem)
        if problem:
            st.warn(PROBE_WARNING, f"{cur.mount_point}: {problem}")
        else:
            st.clear_warning(PROBE_WARNING)
        if target.is_local:
            why = "EFS could not be had" if target.fallback else "mount type is local"
            st.warn(
                LOCAL_WARNING,
                f"data is not shared: {cur.mount_point} is local directory {target.source} ({why})",
            )
        else:
            st.clear_warning(LOCAL_WARNING)
        if not was:
            self._log.info(
                "mount.healthy",
                state=target.healthy_state,
                mount_point=cur.mount_point,
                source=target.source,
                probe_ms=st.mount.last_probe_ms,
            )
            try:
                self._on_healthy()
            except Exception as exc:
                self._log.error("mount.on_healthy_failed", error=repr(exc))

    def _mark_stalled(self, cur: Current) -> None:
        self._stalled += 1
        self.state.metrics.probe_failures.inc()
        timeout = cur.config.mount.probe_timeout_s
        error = f"probe did not finish within {timeout:g}s: the filesystem is not answering"
        if self.state.mount.state != "stalled":
            self._log.warning("mount.stalled", mount_point=cur.mount_point, error=error)
        self._unhealthy("stalled", error)

    # --- let go ------------------------------------------------------------------------
    async def _let_go(self, cur: Current, reason: str, error: str) -> None:
        self._probe = None  # a hung probe is abandoned to its thread
        state = "mounting" if reason in ("requested", "config") else "unmounted"
        self._unhealthy(state, error)
        self._log.warning(
            "mount.lost" if state == "unmounted" else "mount.remount",
            reason=reason,
            error=error,
            mount_point=cur.mount_point,
        )
        new_mp = os.path.normpath(self.state.config.mount_point)
        moved = reason == "config" and new_mp != os.path.normpath(cur.config.mount_point)
        entry = table.find_mount(cur.mount_point)
        if entry is not None and entry.mount_id == cur.entry.mount_id and not moved:
            await self._detach(cur.mount_point)
        if table.find_mount(cur.mount_point) is None:
            await self._lock(cur.mount_point)
        if reason in ("requested", "config"):
            self._fallback = False
        if reason == "requested":
            self._remount_requested = False

    async def _detach(self, mp: str) -> None:
        try:
            await self._blocking(functools.partial(kernel.lazy_unmount, mp), "lazy unmount")
            self._log.info("mount.detached", mount_point=mp)
        except (OSError, FilesystemHung) as exc:
            self._log.error("mount.detach_failed", mount_point=mp, error=str(exc))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _ensure_dir(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)


def _same_directory(a: str, b: str) -> bool:
    sa, sb = os.stat(a), os.stat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
