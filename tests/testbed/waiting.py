"""Waiting for a condition of the world, bounded: the bound only ends a hang, it is never what
a test measures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(cond: Callable[[], T], what: str, timeout: float = 60, interval: float = 0.1) -> T:
    """`cond()`'s first truthy result; AssertionError naming `what` once `timeout` passed."""
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


async def eventually(
    cond: Callable[[], T], what: str, timeout: float = 30.0, interval: float = 0.02
) -> T:
    """`wait_until` inside an event loop: the loop runs on while it waits."""
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)
