"""MountManager: keeps the shared filesystem mounted at the mount point and knows its health.

The life of a mount, round and round until the daemon stops:
  establish  find what belongs at the mount point, adopt it if it is already there, else mount
             it (retrying with backoff and jitter while the status shows `mounting` and the
             last error); a different filesystem already there is refused, never covered;
  supervise  watch the mount table and probe (supervise.py);
  let go     when the mount vanished, died, stalled too long, or a remount was asked for:
             lazily unmount what is ours, lock the directory underneath, establish again.
Nothing here blocks the event loop: filesystem calls run in worker threads that a hung mount
may keep, the mount program runs as a subprocess with a timeout. volagent never unmounts on
stop: containers keep using the mount.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from volagent import log
from volagent.aws.discovery import Resolver, resolve_host
from volagent.config import Config
from volagent.errors import EfsUnavailable, FilesystemHung, ForeignMount, MountError, PermanentError
from volagent.mount import child, kernel, remembered, shared, table, underlay
from volagent.mount.report import Reporter
from volagent.mount.supervise import ASKED, Current, LetGo, Signals, Supervisor
from volagent.mount.target import Target, local_target
from volagent.retrying import exponential_jitter
from volagent.state import AgentState
from volagent.vocabulary import MountState, MountType
from volagent.worker import TimedWorker

T = TypeVar("T")
SHORT_LIVED_S = 10.0  # a mount lost sooner than this counts towards the backoff
MountProgram = Callable[[Config, Target, str], Awaitable[None]]


class MountManager:
    """Owns the mount point. `run()` until cancelled; `request_remount()` from the API."""

    def __init__(
        self,
        state: AgentState,
        on_healthy: Callable[[], None],
        *,
        resolve: Resolver = resolve_host,
        mount_program: MountProgram = shared.run_mount_program,
    ) -> None:
        self.state = state
        self._log = log.get("mount")
        self._report = Reporter(state, on_healthy, self._log)
        self._signals = Signals()
        self._supervisor = Supervisor(self._report, self._signals, lambda: self.state.config)
        self._fs = TimedWorker("mount-fs", max_threads=4)
        self._resolve = resolve
        self._mount_program = mount_program
        self._fallback = False
        self._mounts_made = 0

    def request_remount(self) -> None:
        """Lazily unmount and mount again (also retries EFS after a local fallback)."""
        self._signals.request_remount()

    def config_changed(self) -> None:
        """The daemon's config was replaced: the watch looks at it now."""
        self._signals.config_changed()

    async def run(self) -> None:
        self._signals.bind(asyncio.get_running_loop())
        watch = table.TableWatch(self._signals.table_changed)
        try:
            watch.start()
        except OSError as exc:
            # without it, table changes are still seen at the next probe tick
            self._log.warning("mount.table_watch_unavailable", error=str(exc))
        loop = asyncio.get_running_loop()
        short_lived = 0
        try:
            while True:
                try:
                    current = await self._establish()
                    began = loop.time()
                    reason, error = await self._supervisor.watch(current)
                    await self._let_go(current, reason, error)
                    # A mount that dies as soon as it is made (a dead server behind a mount
                    # that still succeeds) must not spin: back off like a failed attempt.
                    lived = loop.time() - began
                    if reason in ASKED or lived > SHORT_LIVED_S:
                        short_lived = 0
                    else:
                        short_lived += 1
                        await self._backoff(_short_lived_delay(short_lived))
                except Exception as exc:
                    # a bug must not leave the mount unwatched: say so, then start over
                    self._log.exception("mount.crashed", error=repr(exc))
                    self._report.unhealthy(MountState.UNMOUNTED, f"internal error: {exc!r}")
                    await self._signals.sleep(
                        self.state.config.mount.probe_interval_s, lambda: False
                    )
        finally:
            watch.close()
            self._fs.close()
            self._supervisor.close()

    async def _blocking(self, fn: Callable[[], T], what: str) -> T:
        timeout = max(5.0, self.state.config.mount.probe_timeout_s)
        return await self._fs.run(fn, timeout, what)

    # --- establish ---------------------------------------------------------------------
    async def _establish(self) -> Current:
        if self.state.mount.state != MountState.MOUNTING:
            self._report.mounting()
        while True:
            mcfg = self.state.config.mount
            initial = min(1.0, mcfg.probe_interval_s)
            retrying = AsyncRetrying(
                # everything but a PermanentError is worth another try (an unexpected OSError
                # too); cancellation is a BaseException and is never retried
                retry=retry_if_exception(
                    lambda e: isinstance(e, Exception) and not isinstance(e, PermanentError)
                ),
                wait=exponential_jitter(
                    initial, cap=min(60.0, max(2.0, 4 * mcfg.probe_interval_s)), jitter=initial
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
                self._report.unhealthy(MountState.UNMOUNTED, str(exc))
                self._log.error("mount.refused", error=str(exc))
                # a foreign mount stays until an operator acts: look again when the table
                # changes, a remount is asked for, or now and then
                self._signals.table_dirty = False
                await self._signals.sleep(
                    max(10.0, 2 * mcfg.probe_interval_s),
                    lambda: self._signals.table_dirty or self._signals.remount_requested,
                )

    async def _backoff(self, seconds: float) -> None:
        await self._signals.sleep(seconds, lambda: self._signals.remount_requested)

    def _attempt_failed(self, retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        error = str(exc) if exc else "unknown error"
        self._report.mounting(error)
        self._log.warning(
            "mount.attempt_failed",
            error=error,
            kind=type(exc).__name__,
            attempt=retry_state.attempt_number,
            retry_in_s=round(wait, 2),
        )

    async def _attempt(self) -> Current:
        cfg = self.state.config
        if self._signals.remount_requested:
            self._signals.remount_requested = False
            self._fallback = False
        self._report.show(cfg, None)
        try:
            mp = await self._blocking(
                functools.partial(underlay.canonical_mount_point, cfg.mount_point),
                "preparing the mount point",
            )
        except OSError as exc:
            raise MountError(
                f"cannot prepare the mount point {cfg.mount_point}: {exc.strerror} "
                f"({exc.filename}); fix: make its parent a directory volagent can create in"
            ) from None
        entry = table.find_mount(mp)
        if entry is None:
            await self._lock(mp)
            target = await self._target(cfg)
        else:
            target = await self._adoptable(cfg, mp, entry) or await self._target(cfg)
        self._report.show(cfg, target)
        if entry is not None:
            if not await self._is_same(cfg, target, entry, mp):
                raise ForeignMount(
                    f"{mp} already has {entry.fstype} {entry.source} mounted, not "
                    f"{target.source}: volagent never mounts on top of another filesystem; "
                    f"fix: unmount it (umount {mp}) or point mount_point elsewhere"
                )
            self._log.info("mount.adopted", mount_point=mp, source=entry.source, type=target.type)
        else:
            entry = await self._mount(cfg, target, mp)
        return Current(target=target, mount_point=mp, entry=entry, config=cfg)

    async def _target(self, cfg: Config) -> Target:
        if cfg.mount.type == MountType.LOCAL:
            return local_target(cfg)
        if self._fallback:
            return local_target(cfg, fallback=True)
        try:
            target = await shared.discover_target(cfg, self._resolve)
        except EfsUnavailable as exc:
            if not cfg.mount.allow_local_fallback:
                raise
            self._fallback = True
            self._log.warning("mount.local_fallback", reason=str(exc), path=cfg.mount.local_path)
            return local_target(cfg, fallback=True)
        self._log.info(
            "mount.discovered", type=target.type, source=target.source, **dict(target.details)
        )
        return target

    async def _adoptable(self, cfg: Config, mp: str, entry: table.MountEntry) -> Target | None:
        """The Target of a mount this agent made earlier (this boot), without discovery."""
        if cfg.mount.type == MountType.LOCAL or self._fallback:
            return None
        return await self._blocking(
            functools.partial(remembered.recorded_target, cfg, mp, entry),
            "reading the mount record",
        )

    async def _is_same(self, cfg: Config, target: Target, entry: table.MountEntry, mp: str) -> bool:
        if target.is_local:
            await self._blocking(functools.partial(_ensure_dir, target.source), "local_path")
            return await self._blocking(
                functools.partial(os.path.samefile, mp, target.source),
                "comparing the mount point with local_path",
            )
        if target.matches_source(entry):
            return True
        mine = await self._adoptable(cfg, mp, entry)
        return mine is not None and mine.source == target.source

    async def _mount(self, cfg: Config, target: Target, mp: str) -> table.MountEntry:
        self._report.mounting()
        if target.is_local:
            await self._blocking(functools.partial(_ensure_dir, target.source), "local_path")
        self._log.info("mount.mounting", mount_point=mp, type=target.type, source=target.source)
        # mounted onto the locked directory as it is: the kernel mounts on an immutable
        # directory, and unlocking it for the mount would let anything that creates a bind
        # source meanwhile (Docker starting a container) write to the local disk
        try:
            if target.is_local:
                await self._blocking(
                    functools.partial(kernel.bind_mount, target.source, mp), "bind mount"
                )
            else:
                await self._mount_program(cfg, target, mp)
        except OSError as exc:
            raise MountError(f"mounting {target.source} on {mp} failed: {exc.strerror}") from None
        entry = table.find_mount(mp)
        if entry is None:
            raise MountError(f"mounting {target.source} reported success, but {mp} is empty")
        self._mounts_made += 1
        if self._mounts_made > 1:
            self.state.metrics.remounts.inc()
        self._log.info("mount.mounted", mount_point=mp, type=target.type, source=target.source)
        if not target.is_local:
            try:
                await self._blocking(
                    functools.partial(remembered.save, cfg, mp, entry, target), "saving the record"
                )
            except (OSError, FilesystemHung) as exc:
                self._log.warning("mount.record_failed", error=str(exc))
        return entry

    async def _lock(self, mp: str) -> None:
        """Makes the unmounted mount point immutable; warns where that is not possible."""
        try:
            changed = await self._blocking(
                functools.partial(underlay.lock, mp), "locking the mount point"
            )
        except underlay.NoImmutableFlag as exc:
            self._report.immutable_unsupported(mp, str(exc))
            return
        except (OSError, FilesystemHung) as exc:
            self._log.warning("mount.lock_failed", mount_point=mp, error=str(exc))
            return
        self._report.immutable_ok()
        if changed:
            self._log.info("mount.locked", mount_point=mp)

    # --- let go ------------------------------------------------------------------------
    async def _let_go(self, cur: Current, reason: LetGo, error: str) -> None:
        if reason in ASKED:
            self._report.mounting(error, keep_error=False)
        else:
            self._report.unhealthy(MountState.UNMOUNTED, error)
        event = "mount.remount" if reason in ASKED else "mount.lost"
        self._log.warning(event, reason=reason, error=error, mount_point=cur.mount_point)
        new_mp = os.path.normpath(self.state.config.mount_point)
        moved = reason == LetGo.CONFIG and new_mp != os.path.normpath(cur.config.mount_point)
        entry = table.find_mount(cur.mount_point)
        if entry is not None and entry.mount_id == cur.entry.mount_id and not moved:
            await self._detach(cur.mount_point)
        if table.find_mount(cur.mount_point) is None:
            await self._lock(cur.mount_point)
        if reason in ASKED:
            self._fallback = False
        if reason == LetGo.REQUESTED:
            self._signals.remount_requested = False

    async def _detach(self, mp: str) -> None:
        # in a child process: on a dead server the unmount itself may hang for minutes
        timeout = max(5.0, self.state.config.mount.probe_timeout_s)
        try:
            await child.lazy_unmount(mp, timeout)
            self._log.info("mount.detached", mount_point=mp)
        except (OSError, child.ChildHung) as exc:
            self._log.error("mount.detach_failed", mount_point=mp, error=str(exc))


def _ensure_dir(path: str) -> None:
    try:
        os.makedirs(path, mode=0o755, exist_ok=True)
    except FileExistsError:
        # makedirs saw no directory, yet the name exists: a dead mount or a non-directory
        try:
            os.stat(path)
        except OSError as exc:
            raise MountError(f"{path} is not accessible: {exc.strerror}") from None
        raise MountError(f"{path} exists and is not a directory") from None


def _short_lived_delay(times: int) -> float:
    """0.25 s, 0.5 s, 1 s ... up to 30 s, with up to 25 % jitter."""
    base = min(30.0, 0.25 * 2.0 ** min(times - 1, 8))
    return base * (1 + random.random() / 4)  # noqa: S311 (jitter, not cryptography)
