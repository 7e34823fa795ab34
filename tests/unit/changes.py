"""Waking a test when something it waits for happened, from the loop or any thread: for the
unit tests that drive a root task (the mount manager, the Docker watch) through its
transitions without ever sleeping on the clock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

GUARD_S = 30.0  # only turns a hang into a failure; no step should come near it


class Changes:
    """Wakes the test whenever something it may be waiting for happened (a state set, a log
    line, a call at the boundary), from the loop or from a worker thread."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self.task: asyncio.Task[Any] | None = None  # the task under test: it must not end

    def watch(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        task.add_done_callback(lambda _: self.poke())

    def bind(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def poke(self) -> None:
        loop, event = self.loop, self._event
        if loop is not None and event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    async def until(self, pred: Callable[[], bool], what: str) -> None:
        assert self._event is not None
        try:
            async with asyncio.timeout(GUARD_S):
                while not pred():
                    task = self.task
                    if task is not None and task.done():
                        died = None if task.cancelled() else task.exception()
                        pytest.fail(f"the task under test ended ({died!r}) before: {what}")
                    self._event.clear()
                    await self._event.wait()
        except TimeoutError:
            pytest.fail(f"never happened: {what}")


@contextlib.contextmanager
def capturing_logs(logs: list[dict[str, Any]], changes: Changes) -> Iterator[None]:
    """Every log event into `logs`, with its level, waking the test; nothing printed."""

    def capture(_: Any, method: str, event: dict[str, Any]) -> Any:
        logs.append({**event, "log_level": method})
        changes.poke()
        raise structlog.DropEvent

    old = structlog.get_config()
    structlog.configure(processors=[capture])
    try:
        yield
    finally:
        structlog.configure(**old)
