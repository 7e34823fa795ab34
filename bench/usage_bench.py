"""The usage walk on a big tree on the EFS stand-in, in a real agent, against its budget.

A tree of FILES empty files (default 1,000,000; VOLAGENT_BENCH_USAGE_FILES changes it) in
directories of 1000 is built in the stand-in's export, outside the rack's names, while an
agent with the start guard runs on the stand-in mount. Then, in one run:
- the guard's latency (a container create with a bind under the mount point, on a kept-alive
  connection like dockerd's) idle;
- the tree renamed into the rack (`r1-big`): the walk at the default budget (100 ops/s) for
  WINDOW_S, the operations per second it spent against the budget, the guard's latency meanwhile;
- the budget raised by a config reload to FAST_BUDGET: the walk to the end of the tree, its
  operations per second against the budget, the time of the pass, the guard's latency
  meanwhile, and the peak RSS of the agent before and after the walk (VmHWM).
Latencies are printed as ratios against idle (target p99 <= 1.2x); nothing is asserted.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from tests.integration.aws_fixtures import open_nfs_port
from tests.integration.efs_standin import Scratch, stop_agent_on_standin
from tests.integration.testbed import AgentProcess, unixhttp
from tests.integration.testbed.agent import toml_text

from bench.stats import percentile

FILES = int(os.environ.get("VOLAGENT_BENCH_USAGE_FILES", "1000000"))
PER_DIR = 1000
SERVICES = 10
DEFAULT_BUDGET = 100.0
FAST_BUDGET = float(os.environ.get("VOLAGENT_BENCH_USAGE_BUDGET", "5000"))
WINDOW_S = 30.0
GUARD_CALLS = 400
NO_DOCKER = "unix:///nonexistent/docker.sock"


def build_tree(root: Path) -> int:
    """FILES empty files under root/svcN/dM/; the number of directories made."""
    dirs = 0
    made = 0
    while made < FILES:
        d = root / f"svc{dirs % SERVICES}" / f"d{dirs}"
        d.mkdir(parents=True)
        dirs += 1
        for i in range(min(PER_DIR, FILES - made)):
            os.close(os.open(d / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
        made += PER_DIR
    return dirs + SERVICES + 1


def create_request(mount_point: str, n: int) -> bytes:
    body = {
        "Image": "busybox",
        "Cmd": ["true"],
        "Labels": {"convox.app": "guarded", "convox.service": "web"},
        "HostConfig": {"Binds": [f"{mount_point}/r1-guarded/web/data{n % 20}:/data"]},
    }
    doc = {
        "RequestMethod": "POST",
        "RequestUri": f"/v1.43/containers/create?name=b{n}",
        "RequestHeaders": {"Content-Type": "application/json"},
        "RequestBody": base64.b64encode(json.dumps(body).encode()).decode(),
    }
    return json.dumps(doc).encode()


def guard_latencies(agent: AgentProcess, calls: int) -> list[float]:
    sock = agent.config["guard"]["plugin_socket"]
    conn = unixhttp.UnixHTTPConnection(sock, timeout=30)
    out = []
    try:
        for n in range(calls):
            body = create_request(agent.mount_point, n)
            started = time.perf_counter()
            conn.request("POST", "/AuthZPlugin.AuthZReq", body=body)
            resp = conn.getresponse()
            answer = json.loads(resp.read())
            out.append(time.perf_counter() - started)
            assert answer.get("Allow") is True, answer
    finally:
        conn.close()
    return out


def metric(agent: AgentProcess, name: str, labels: str = "") -> float:
    _, body = unixhttp.request(agent.socket_path, "GET", "/metrics")
    pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", re.M)
    match = pattern.search(body.decode())
    return float(match.group(1)) if match else 0.0


def hwm_kib(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) of the process in KiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmHWM"].split()[0]), int(fields["VmRSS"].split()[0])


def show(label: str, lat: list[float], idle: list[float]) -> None:
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    i50, i99 = percentile(idle, 50), percentile(idle, 99)
    print(
        f"guard {label:<26} p50 {p50 * 1000:7.3f} ms ({p50 / i50:4.2f}x)  "
        f"p99 {p99 * 1000:7.3f} ms ({p99 / i99:4.2f}x idle; target <= 1.2x)"
    )


def set_budget(agent: AgentProcess, ops: float) -> None:
    agent.config["usage"]["ops_per_second"] = ops
    agent.write_config(toml_text(agent.config))
    os.kill(agent.pid, 1)  # SIGHUP: reload; the walk takes the new budget at its next step


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="vt-usage-bench-", dir="/tmp"))
    ip, listener = open_nfs_port()
    scratch = Scratch(base / "standin")
    export = scratch.export(ip)
    agent = AgentProcess(
        NO_DOCKER,
        config={
            "host_id": "bench-host",
            "log_level": "info",
            "guard": {"enabled": True},
            "usage": {"ops_per_second": DEFAULT_BUDGET, "interval_s": 1},
            "mount": {
                "type": "nfs",
                "source": f"{ip}:/",
                "mount_program": scratch.mount_program,
                "probe_interval_s": 1.0,
                "probe_timeout_s": 5.0,
            },
        },
    )
    try:
        started = time.perf_counter()
        dirs = build_tree(export / "staging-big")
        print(
            f"tree: {FILES:,} files in {dirs:,} directories, built in "
            f"{time.perf_counter() - started:.0f} s (in the export the stand-in serves)"
        )
        agent.start()
        agent.wait_for(lambda d: d["mount"]["state"] == "mounted", what="mounted")
        guard_latencies(agent, 50)  # warm up: the guarded directories exist from here
        idle = guard_latencies(agent, GUARD_CALLS)
        show("idle", idle, idle)
        hwm_before, _ = hwm_kib(agent.pid)

        (export / "staging-big").rename(export / "r1-big")
        ops0, t0 = metric(agent, "volagent_usage_walk_operations_total"), time.monotonic()
        slow: list[float] = []
        while time.monotonic() - t0 < WINDOW_S:
            slow += guard_latencies(agent, 50)
        ops1, t1 = metric(agent, "volagent_usage_walk_operations_total"), time.monotonic()
        rate = (ops1 - ops0) / (t1 - t0)
        print(
            f"walk at {DEFAULT_BUDGET:g} ops/s budget: {rate:8.1f} ops/s used "
            f"({rate / DEFAULT_BUDGET:4.2f}x budget) over {t1 - t0:.0f} s"
        )
        show(f"walking at {DEFAULT_BUDGET:g} ops/s", slow, idle)

        set_budget(agent, FAST_BUDGET)
        finished = metric(agent, "volagent_usage_walks_total", '{result="finished"}')
        ops2, t2 = metric(agent, "volagent_usage_walk_operations_total"), time.monotonic()
        fast: list[float] = []
        peak_rss = 0
        stop = threading.Event()

        def watch_rss() -> None:
            nonlocal peak_rss
            while not stop.is_set():
                with contextlib.suppress(OSError, KeyError):
                    peak_rss = max(peak_rss, hwm_kib(agent.pid)[1])
                time.sleep(0.2)

        watcher = threading.Thread(target=watch_rss, daemon=True)
        watcher.start()
        big_done = False
        while not big_done:
            fast += guard_latencies(agent, 50)
            doc = unixhttp.get_json(agent.socket_path, "/v1/status?rack=1", timeout=10)[1]
            big = [u for u in doc.get("usage", []) if u["app"] == "big"]
            big_done = (
                bool(big)
                and not big[0]["walking"]
                and metric(agent, "volagent_usage_walks_total", '{result="finished"}') > finished
            )
        ops3, t3 = metric(agent, "volagent_usage_walk_operations_total"), time.monotonic()
        stop.set()
        watcher.join()
        rate = (ops3 - ops2) / (t3 - t2)
        print(
            f"walk at {FAST_BUDGET:g} ops/s budget: {rate:8.1f} ops/s used "
            f"({rate / FAST_BUDGET:4.2f}x budget); the rest of the tree took {t3 - t2:.0f} s; "
            f"measured {big[0]['inodes']:,} inodes"
        )
        show(f"walking at {FAST_BUDGET:g} ops/s", fast, idle)
        hwm_after, _ = hwm_kib(agent.pid)
        print(
            f"agent peak RSS: {hwm_before / 1024:.1f} MiB before the walk, "
            f"{hwm_after / 1024:.1f} MiB after it (the walk's share: "
            f"{(hwm_after - hwm_before) / 1024:.1f} MiB); highest RSS seen while walking fast "
            f"{peak_rss / 1024:.1f} MiB"
        )
    finally:
        stop_agent_on_standin(agent, scratch)
        agent.close()
        listener.close()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
