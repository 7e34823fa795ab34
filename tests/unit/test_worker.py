"""TimedWorker: results, errors, and a hung job that cannot hold the caller."""

from __future__ import annotations

import asyncio
import threading

import pytest

from volagent.errors import FilesystemHung
from volagent.worker import TimedWorker


async def test_returns_result_and_raises_errors() -> None:
    worker = TimedWorker("t")

    assert await worker.run(lambda: 41 + 1, timeout=5) == 42
    with pytest.raises(ZeroDivisionError):
        await worker.run(lambda: 1 // 0, timeout=5)
    worker.close()


async def test_hung_job_times_out_and_the_pool_keeps_working() -> None:
    worker = TimedWorker("t", max_threads=2)
    release = threading.Event()

    with pytest.raises(FilesystemHung, match="probe did not finish"):
        await worker.run(release.wait, timeout=0.05, what="probe")
    # the hung thread is left behind; a second thread serves new work
    assert await worker.run(lambda: "alive", timeout=5) == "alive"
    release.set()
    worker.close()


async def test_job_not_started_before_its_timeout_never_runs() -> None:
    worker = TimedWorker("t", max_threads=1)
    release = threading.Event()
    ran: list[str] = []

    blocker = worker.submit(release.wait)
    with pytest.raises(FilesystemHung):
        await worker.run(lambda: ran.append("late"), timeout=0.05)
    release.set()
    await asyncio.wrap_future(blocker)
    # the next job runs; the abandoned one was dropped, not run after its caller gave up
    assert await worker.run(lambda: "next", timeout=5) == "next"
    assert ran == []
    worker.close()
