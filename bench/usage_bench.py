"""The usage walk on a big tree on the EFS stand-in, in a real agent, against its budget.

A tree of FILES empty files (default 1,000,000; VOLAGENT_BENCH_USAGE_FILES changes it) in
directories of 1000 is built in the stand-in's export, outside the rack's names. Two agents
with the start guard run on mounts of that stand-in: the walker (rack r1) and the idle one
(rack r9, nothing of its rack to walk). The guard's latency (a container create with a bind
under the mount point, on a kept-alive connection like dockerd's) is measured on both in
alternating blocks, so the noise of this shared machine falls on both alike:
- before the walk (both idle: the noise floor of the comparison);
- the tree renamed into the rack (`r1-big`): the walk at the default budget (100 ops/s) for
  WINDOW_S, and the operations per second it spent against the budget;
- the budget raised by a config reload to FAST_BUDGET: the walk to the end of the tree, its
  operations per second against the budget, the time it took, and the walker's peak RSS
  before and after the walk (VmHWM).
Latencies are printed as ratios walker/idle agent (target p99 <= 1.2x); nothing is asserted.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.testbed import AgentProcess, unixhttp
from tests.testbed.agent import toml_text
from tests.testbed.aws import open_nfs_port
from tests.testbed.efs_standin import Scratch, stop_agent_on_standin
from tests.testbed.empty_docker import EmptyDocker

from bench.stats import percentile

FILES = int(os.environ.get("VOLAGENT_BENCH_USAGE_FILES", "1000000"))
PER_DIR = 1000
SERVICES = 10
DEFAULT_BUDGET = 100.0
FAST_BUDGET = float(os.environ.get("VOLAGENT_BENCH_USAGE_BUDGET", "5000"))
WINDOW_S = 30.0
GUARD_CALLS = 400
BLOCK = 25


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


def create_request(mount_point: str, rack: str, n: int) -> bytes:
    body = {
        "Image": "busybox",
        "Cmd": ["true"],
        "Labels": {"convox.app": "guarded", "convox.service": "web"},
        "HostConfig": {"Binds": [f"{mount_point}/{rack}-guarded/web/data{n % 20}:/data"]},
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
            body = create_request(agent.mount_point, agent.rack, n)
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
        f"guard {label:<24} walker p50 {p50 * 1000:6.3f} ms p99 {p99 * 1000:6.3f} ms; idle agent "
        f"p50 {i50 * 1000:6.3f} ms p99 {i99 * 1000:6.3f} ms; ratio p50 {p50 / i50:4.2f}x "
        f"p99 {p99 / i99:4.2f}x (target <= 1.2x)"
    )


def turns(walker: AgentProcess, idle: AgentProcess, lat: list[float], ref: list[float]) -> None:
    """One block of guard calls on each agent."""
    lat += guard_latencies(walker, BLOCK)
    ref += guard_latencies(idle, BLOCK)


def standin_agent(scratch: Scratch, ip: str, rack: str, docker_url: str) -> AgentProcess:
    return AgentProcess(
        docker_url,  # an engine running nothing: the guard judges once it is listed
        rack=rack,
        config={
            "host_id": f"bench-{rack}",
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


def set_budget(agent: AgentProcess, ops: float) -> None:
    agent.config["usage"]["ops_per_second"] = ops
    agent.write_config(toml_text(agent.config))
    os.kill(agent.pid, 1)  # SIGHUP: reload; the walk takes the new budget at its next step


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="vt-usage-bench-", dir="/tmp"))
    ip, listener = open_nfs_port()
    scratch = Scratch(base / "standin")
    export = scratch.export(ip)
    docker = EmptyDocker(base)
    docker.start()
    walker = standin_agent(scratch, ip, "r1", docker.url)
    idle = standin_agent(scratch, ip, "r9", docker.url)
    try:
        started = time.perf_counter()
        dirs = build_tree(export / "staging-big")
        print(
            f"tree: {FILES:,} files in {dirs:,} directories, built in "
            f"{time.perf_counter() - started:.0f} s (in the export the stand-in serves)"
        )
        for agent in (walker, idle):
            agent.start()
            agent.wait_for(lambda d: d["mount"]["state"] == "mounted", what="mounted")
            guard_latencies(agent, 50)  # warm up: the guarded directories exist from here
        lat: list[float] = []
        ref: list[float] = []
        while len(lat) < GUARD_CALLS:
            turns(walker, idle, lat, ref)
        show("both idle", lat, ref)
        hwm_before, _ = hwm_kib(walker.pid)

        (export / "staging-big").rename(export / "r1-big")
        ops0, t0 = metric(walker, "volagent_usage_walk_operations_total"), time.monotonic()
        lat, ref = [], []
        while time.monotonic() - t0 < WINDOW_S:
            turns(walker, idle, lat, ref)
        ops1, t1 = metric(walker, "volagent_usage_walk_operations_total"), time.monotonic()
        rate = (ops1 - ops0) / (t1 - t0)
        print(
            f"walk at {DEFAULT_BUDGET:g} ops/s budget: {rate:8.1f} ops/s used "
            f"({rate / DEFAULT_BUDGET:4.2f}x budget) over {t1 - t0:.0f} s"
        )
        show(f"walking at {DEFAULT_BUDGET:g} ops/s", lat, ref)

        set_budget(walker, FAST_BUDGET)
        finished = metric(walker, "volagent_usage_walks_total", '{result="finished"}')
        ops2, t2 = metric(walker, "volagent_usage_walk_operations_total"), time.monotonic()
        lat, ref = [], []
        big: list[dict[str, Any]] = []
        while True:
            turns(walker, idle, lat, ref)
            doc = unixhttp.get_json(walker.socket_path, "/v1/status?rack=1", timeout=10)[1]
            big = [u for u in doc.get("usage", []) if u["app"] == "big"]
            done = metric(walker, "volagent_usage_walks_total", '{result="finished"}')
            if big and not big[0]["walking"] and done > finished:
                break
        ops3, t3 = metric(walker, "volagent_usage_walk_operations_total"), time.monotonic()
        rate = (ops3 - ops2) / (t3 - t2)
        print(
            f"walk at {FAST_BUDGET:g} ops/s budget: {rate:8.1f} ops/s used "
            f"({rate / FAST_BUDGET:4.2f}x budget); the rest of the tree took {t3 - t2:.0f} s; "
            f"measured {big[0]['inodes']:,} inodes of r1-big"
        )
        show(f"walking at {FAST_BUDGET:g} ops/s", lat, ref)
        hwm_after, _ = hwm_kib(walker.pid)
        _, idle_rss = hwm_kib(idle.pid)
        print(
            f"walker peak RSS (VmHWM): {hwm_before / 1024:.1f} MiB before the walk, "
            f"{hwm_after / 1024:.1f} MiB after it (the walk's share: "
            f"{(hwm_after - hwm_before) / 1024:.1f} MiB); the idle agent's RSS "
            f"{idle_rss / 1024:.1f} MiB"
        )
    finally:
        for agent in (walker, idle):
            stop_agent_on_standin(agent, scratch)
            agent.close()
        listener.close()
        docker.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
