"""Every root task of the daemon ends when it is cancelled, wherever it is: a task that
swallowed its cancellation (as `asyncio.wait_for` can on Python 3.11 when the awaited thing
finishes at the same moment) would keep the daemon from stopping, and systemd would have to
kill it. Each task is started and cancelled many times, at random points of its work."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from volagent.config import from_dict
from volagent.config_watch import ConfigWatch
from volagent.daemon.lifecycle import Daemon

ROUNDS = 15
# only a bound on a hang: a task that ends does so in milliseconds
END_BOUND_S = 20.0


def daemon(tmp_path: Path, mp: Path) -> Daemon:
    cfg = from_dict(
        {
            "rack": "r1",
            "host_id": "h1",
            "mount_point": str(mp),
            "state_dir": str(tmp_path / "state"),
            "docker": {"url": f"unix://{tmp_path}/no-docker.sock"},
            "aws": {"imds_endpoint": "http://127.0.0.1:9", "endpoint_url": "http://127.0.0.1:9"},
            "api": {"socket": str(tmp_path / "api.sock")},
        }
    )
    d = Daemon(cfg, None)
    d.state.set_mount_state("mounted")
    d.state.mount_dev = os.stat(mp).st_dev
    return d


def root_tasks(d: Daemon, config_path: Path) -> dict[str, Callable[[], Awaitable[Any]]]:
    # the mount manager is left out: it mounts for real (its stop is covered by the daemon's
    # integration tests)
    return {
        "docker": d.docker.run,
        "heartbeat": d.heartbeat.run,
        "usage": d.usage.run,
        "registry": d.registry.run,
        "usage-walk": d.usage_walker.run,
        "asg": d.asg.run,
        "ready": d._announce_ready,
        "config-watch": ConfigWatch(str(config_path), lambda: None, debounce_s=0.01).run,
    }


@pytest.mark.usefixtures("docker_py_failed_connects")
async def test_every_root_task_ends_when_cancelled_at_any_point(tmp_path: Path, mp: Path) -> None:
    config_path = tmp_path / "volagent.toml"
    config_path.write_text("")
    rng = random.Random(7)  # noqa: S311 - reproducible points, not secrets

    async def main() -> dict[str, int]:
        d = daemon(tmp_path, mp)
        ended: dict[str, int] = {}
        try:
            for name, make in root_tasks(d, config_path).items():
                ended[name] = 0
                for _ in range(ROUNDS):
                    task = asyncio.ensure_future(make())
                    await asyncio.sleep(rng.uniform(0, 0.03))
                    if rng.random() < 0.3:
                        d.heartbeat.wake()  # an event landing at the moment of the cancel
                        config_path.write_text(f"# {rng.random()}\n")
                    task.cancel()
                    done, _ = await asyncio.wait({task}, timeout=END_BOUND_S)
                    assert task in done, f"{name} did not end after its cancellation"
                    ended[name] += 1
        finally:
            d.worker.close()
            d.records_worker.close()
        return ended

    ended = await main()
    assert ended and all(n == ROUNDS for n in ended.values()), ended
