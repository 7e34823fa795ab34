"""The config watcher on a real directory (inotify through watchdog): in-place writes,
editor-style replacement by rename, and removal followed by creation each give one call;
a burst of writes gives one call; an unchanged file or another file gives none."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from tests.testbed.waiting import eventually

from volagent.config_watch import ConfigWatch


@contextlib.asynccontextmanager
async def watching(path: Path) -> AsyncIterator[list[str]]:
    """A ConfigWatch of `path` running; yields the contents each call found."""
    calls: list[str] = []
    watch = ConfigWatch(str(path), lambda: calls.append(path.read_text()), debounce_s=0.1)
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.sleep(0.3)  # let the observer start watching
        yield calls
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_in_place_write_and_rename_each_give_one_call(tmp_path: Path) -> None:
    cfg = tmp_path / "volagent.toml"
    cfg.write_text('rack = "a"\n')

    async with watching(cfg) as calls:
        cfg.write_text('rack = "b"\n')
        await eventually(lambda: len(calls) == 1, "the in-place write")
        tmp = tmp_path / ".volagent.toml.swp"
        tmp.write_text('rack = "c"\n')
        os.rename(tmp, cfg)
        await eventually(lambda: len(calls) == 2, "the rename")
        cfg.unlink()
        cfg.write_text('rack = "d"\n')
        await eventually(lambda: len(calls) == 3, "remove and create")

    assert calls == ['rack = "b"\n', 'rack = "c"\n', 'rack = "d"\n']


async def test_a_burst_gives_one_call_and_noise_none(tmp_path: Path) -> None:
    cfg = tmp_path / "volagent.toml"
    cfg.write_text('rack = "a"\n')

    async with watching(cfg) as calls:
        for i in range(10):
            cfg.write_text(f'rack = "x{i}"\n')
        await eventually(lambda: bool(calls) and calls[-1] == 'rack = "x9"\n', "the burst")
        # debounced: far fewer calls than writes (one, unless the machine stalled mid-burst)
        assert len(calls) < 10
        settled = len(calls)
        # unchanged content, another file, reads: no call; the next real change is the next
        os.utime(cfg)
        cfg.write_text('rack = "x9"\n')
        (tmp_path / "other.toml").write_text("x")
        cfg.read_text()
        await asyncio.sleep(0.5)
        assert len(calls) == settled
        cfg.write_text('rack = "last"\n')
        await eventually(lambda: calls[-1] == 'rack = "last"\n', "the last change")
        assert len(calls) == settled + 1


async def test_a_missing_directory_idles_without_failing(tmp_path: Path) -> None:
    watch = ConfigWatch(str(tmp_path / "nope" / "volagent.toml"), lambda: None)
    task = asyncio.create_task(watch.run())
    await asyncio.sleep(0.2)
    alive = not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert alive
