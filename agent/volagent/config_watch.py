"""Live config: the config file is watched, and a change is handed to the daemon's reload.

A watchdog observer watches the file's directory (editors replace files by rename, and a
file that is a symlink changes by its target being swapped), so the file may be rewritten,
replaced, removed and created again. Events are debounced: a burst of them (an editor's
save) becomes one reload once the directory has been quiet for DEBOUNCE_S, and only when the
file's content really changed. The reload itself (validate, refuse or apply, report) is the
daemon's, the same one SIGHUP runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Callable
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from volagent import log

DEBOUNCE_S = 0.3
# events that may change the content; opens and reads (the reload's own) are not among them
_CHANGES = ("created", "modified", "moved", "deleted", "closed")


def digest(path: str) -> str | None:
    """A hash of the file's content; None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


class _Handler(FileSystemEventHandler):
    """Runs in the observer's thread: only tells the loop that something happened."""

    def __init__(self, watch: ConfigWatch, loop: asyncio.AbstractEventLoop) -> None:
        self.watch = watch
        self.loop = loop

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _CHANGES or not self.watch.concerns(event):
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the daemon is stopping
            self.loop.call_soon_threadsafe(self.watch.changed.set)


class ConfigWatch:
    """The root task: `on_change()` is called on the loop after each real change."""

    def __init__(self, path: str, on_change: Callable[[], Any], debounce_s: float = DEBOUNCE_S):
        self.path = os.path.abspath(path)
        self.directory = os.path.dirname(self.path)
        self.name = os.path.basename(self.path)
        self.on_change = on_change
        self.debounce_s = debounce_s
        self.changed = asyncio.Event()
        self.log = log.get("config_watch", path=self.path)
        self._seen: str | None = None

    def concerns(self, event: FileSystemEvent) -> bool:
        if os.path.islink(self.path):
            return True  # its target may be swapped anywhere in the directory
        paths = (event.src_path, getattr(event, "dest_path", "") or "")
        return any(os.path.basename(os.fsdecode(p)) == self.name for p in paths if p)

    async def run(self) -> None:
        if not os.path.isdir(self.directory):
            self.log.warning(
                "config_watch_unavailable",
                reason=f"{self.directory} does not exist; SIGHUP still reloads",
            )
            await asyncio.Event().wait()  # nothing to watch; idle until cancelled
        loop = asyncio.get_running_loop()
        self._seen = await asyncio.to_thread(digest, self.path)
        observer = Observer()
        observer.daemon = True
        observer.schedule(_Handler(self, loop), self.directory, recursive=False)
        observer.start()
        self.log.info("config_watch_started")
        try:
            while True:
                await self.changed.wait()
                await self._settle()
                now = await asyncio.to_thread(digest, self.path)
                if now == self._seen:
                    continue
                self._seen = now
                self.log.info("config_changed")
                self.on_change()
        finally:
            observer.stop()
            # the observer thread ends within its polling timeout; never wait long for it
            await asyncio.to_thread(observer.join, 2.0)

    async def _settle(self) -> None:
        """Returns once no event came for `debounce_s` (bounded: at most 20 extensions)."""
        for _ in range(20):
            self.changed.clear()
            try:
                async with asyncio.timeout(self.debounce_s):
                    await self.changed.wait()
            except TimeoutError:
                return
        self.changed.clear()
