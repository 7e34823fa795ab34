"""Blocking work off the event loop, with a timeout that a hung filesystem cannot defeat.

A thread stuck in the kernel on a hung mount cannot be cancelled, so the caller stops waiting
at the timeout and the thread is left behind. Threads are daemons, so they never hold up exit,
and the pool is capped, so a hang costs a bounded number of threads, never the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from volagent.errors import FilesystemHung

T = TypeVar("T")

_Job = tuple[concurrent.futures.Future[Any], Callable[[], Any]]


class TimedWorker:
    """A small pool of daemon threads; `run(fn, timeout)` awaits fn's result or raises
    FilesystemHung. Jobs that have not started when their caller gives up are dropped."""

    def __init__(self, name: str, max_threads: int = 8) -> None:
        self.name = name
        self.max_threads = max_threads
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"worker {self.name} is closed")
            if self._idle == 0 and len(self._threads) < self.max_threads:
                t = threading.Thread(
                    target=self._loop, name=f"{self.name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(t)
                t.start()
            else:
                self._idle -= 1 if self._idle else 0
        self._jobs.put((fut, fn))
        return fut

    async def run(self, fn: Callable[[], T], timeout: float, what: str = "") -> T:
        fut = self.submit(fn)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives just as the job completes, and a daemon that must stop would not
            async with asyncio.timeout(timeout):
                return await asyncio.wrap_future(fut)
        except TimeoutError:
            fut.cancel()  # only takes effect if no thread has picked it up yet
            raise FilesystemHung(
                f"{what or self.name} did not finish within {timeout:g}s: "
                "the filesystem is not answering"
            ) from None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            n = len(self._threads)
        for _ in range(n):
            self._jobs.put(None)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fut, fn = job
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:
                    fut.set_exception(exc)
            with self._lock:
                self._idle += 1
