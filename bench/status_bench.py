"""`volagent status` start-up against a bare interpreter, and the /metrics scrape, with 500
containers known.

A real socket is served by HttpServer + StatusApi on an AgentState in a loop thread. The
commands run as subprocesses, interleaved with `python -c pass` so both see the same
machine noise; the figure that matters is the ratio of their medians (target <= 3x).
The scrape is timed in process over the socket (target <= 20 ms).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.stats import percentile
from volagent.api import client
from volagent.api.server import StatusApi
from volagent.config import Config
from volagent.httpserver import HttpServer
from volagent.state import AgentState, ContainerRecord, VolumeRecord

CONTAINERS = 500
RUNS = 40
SCRAPES = 200


def _fill(state: AgentState) -> None:
    state.set_mount_state("mounted")
    state.set_docker_state("connected")
    for i in range(CONTAINERS):
        app, service = f"app{i % 25}", f"svc{i % 4}"
        vols = [
            VolumeRecord(f"/volumes/r-{app}/{service}/data", "/data", False),
            VolumeRecord(f"/volumes/r-{app}/{service}/conf", "/etc/conf", True),
        ]
        state.upsert_container(ContainerRecord(f"{i:064x}", f"{app}-{i}", "r", app, service, vols))
        for v in vols:
            state.set_volume_state(v, "late" if i % 97 == 0 else "ready")


async def _noop() -> dict[str, Any]:
    return {}


class _Served:
    def __init__(self, directory: str) -> None:
        self.socket = os.path.join(directory, "api.sock")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.state: AgentState = self._call(lambda: AgentState(Config(rack="r")))
        self._call(lambda: _fill(self.state))
        self.server = HttpServer("bench", StatusApi(self.state, _noop, _noop).handle)
        self._run(self.server.start_unix(self.socket))

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def _call(self, fn: Callable[[], Any]) -> Any:
        async def call() -> Any:
            return fn()

        return self._run(call())

    def close(self) -> None:
        self._run(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _volagent_command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "volagent")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "volagent"]


def _time(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
    return time.perf_counter() - started


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main() -> None:
    directory = tempfile.mkdtemp(prefix="volagent-bench-")
    served = _Served(directory)
    try:
        # an installed package has its .pyc files; let the warm-up runs write them here too
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("VOLAGENT_") and k != "PYTHONDONTWRITEBYTECODE"
        }
        env |= {"VOLAGENT_SOCKET": served.socket, "NO_COLOR": "1"}
        cmd = _volagent_command()
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "volagent status": [*cmd, "status"],
            "volagent status --json": [*cmd, "status", "--json"],
        }
        check = subprocess.run(cases["volagent status"], capture_output=True, env=env, check=False)
        if check.returncode not in (0, 1):
            raise RuntimeError(f"volagent status failed: {check.stderr.decode()}")
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(3):  # warm the page cache and .pyc files
            for argv in cases.values():
                _time(argv, env)
        for _ in range(RUNS):
            for name, argv in cases.items():
                times[name].append(_time(argv, env))
        bare = statistics.median(times["python -c pass"])
        print(f"{CONTAINERS} containers known, {RUNS} runs each, interleaved")
        for name, samples in times.items():
            p50 = statistics.median(samples)
            print(f"  {name:<24} p50 {_ms(p50):>9}  ratio {p50 / bare:4.2f}x  (target <= 3x)")

        scrape: list[float] = []
        size = 0
        for _ in range(SCRAPES):
            started = time.perf_counter()
            status, _, body = client.request(served.socket, "GET", "/metrics")
            scrape.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"/metrics answered {status}")
            size = len(body)
        p99 = percentile(scrape, 99)
        print(
            f"  GET /metrics ({size} bytes)   p50 {_ms(statistics.median(scrape)):>9}"
            f"  p99 {_ms(p99)}  (target <= 20 ms)"
        )
        doc: list[float] = []
        for _ in range(SCRAPES // 4):
            started = time.perf_counter()
            client.request(served.socket, "GET", "/v1/status")
            doc.append(time.perf_counter() - started)
        print(f"  GET /v1/status              p50 {_ms(statistics.median(doc)):>9}")
    finally:
        served.close()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
