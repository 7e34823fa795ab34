"""A rack simulation: one real agent among N simulated hosts, and what it costs the shared
filesystem per second when idle and per guarded create, for N = 10, 100, 1,000.

The simulated hosts are their records in the stand-in's export (bindfs serves it to the
agent): each has a heartbeat, three namespaces of its own (a directory, a usage record, a
size record, a registry file holding its entry) and a writer thread rewrites their
heartbeats every 30 s and their usage records every 300 s, spread evenly (their real rates).
The agent (the start guard on, no Docker) runs on a bindfs mount of that export; strace
follows it and every file system call naming a path on the mount point is counted:
- idle, over WINDOW_S once the agent's start-up work (its first usage pass) is done;
- during CREATES guarded creates (each binding a new directory of namespace `r1-bench`):
  all calls, and those on `.volagent/registry` (the registry's own part), per create.
It prints each N's figures, the growth from N = 10 to N = 1,000 as ratios (target: idle
calls per second at most 2x, RSS within 5 MiB) and the agent's RSS, and how long
`status --rack` and `volagent gc`'s listing take at each N. Nothing is asserted.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.testbed import AgentProcess, unixhttp
from tests.testbed.aws import open_nfs_port
from tests.testbed.efs_standin import Scratch, stop_agent_on_standin
from tests.testbed.empty_docker import EmptyDocker

SIZES = tuple(int(n) for n in os.environ.get("VOLAGENT_BENCH_RACK_SIZES", "10,100,1000").split(","))
WINDOW_S = float(os.environ.get("VOLAGENT_BENCH_RACK_WINDOW_S", "60"))
CREATES = 50
GC_STALL_S = 30.0  # ops/gc/command.py STALL_S: a walk that stops moving for this long gives up
NAMESPACES_PER_HOST = 3
HEARTBEAT_S = 30.0
USAGE_S = 300.0
SETTLE_S = 5.0  # the walk spending no more than the rolling reads of records this long
SETTLED_OPS_S = 3.0
FILE_CALLS = (
    "open,openat,read,write,pread64,pwrite64,getdents64,newfstatat,fstat,statfs,fstatfs,"
    "mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,fcntl,fsync,close,ftruncate"
)


def dump(path: Path, record: dict[str, object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record))
    tmp.rename(path)


class Rack:
    """The records of N simulated hosts in the export, and their writer."""

    def __init__(self, export: Path, n: int) -> None:
        self.export = export
        self.n = n
        self.hosts = [f"sim-{i:04d}" for i in range(n)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, daemon=True)
        self.writes = 0

    def namespaces(self, host: str) -> list[str]:
        return [f"r1-{host}-{k}" for k in range(NAMESPACES_PER_HOST)]

    def heartbeat(self, host: str) -> None:
        now = time.time()
        rec = {"host": host, "rack": "r1", "status": "ok", "version": "0.3.0", "registry": 1}
        dump(self.export / ".volagent" / "hosts" / f"{host}.json", {**rec, "time": now})

    def usage(self, host: str, ns: str) -> None:
        d = self.export / ".volagent" / "usage" / ns / "web"
        d.mkdir(parents=True, exist_ok=True)
        bind = f"/volumes/{ns}/web/data"
        rec = {"host": host, "namespace": ns, "directory": "web", "time": time.time()}
        dump(d / f"{host}.json", {**rec, "containers": ["c"], "binds": [bind], "registry": 1})

    def build(self) -> None:
        base = self.export / ".volagent"
        for sub in ("hosts", "usage", "sizes", "registry"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        for host in self.hosts:
            self.heartbeat(host)
            for ns in self.namespaces(host):
                (self.export / ns / "web" / "data").mkdir(parents=True)
                self.usage(host, ns)
                totals = {"web": [4096, 3]}
                dump(
                    base / "sizes" / f"{ns}.json",
                    {"namespace": ns, "host": host, "totals": totals, "time": time.time()},
                )
                entry = {
                    "host": host,
                    "ref": "c" * 64,
                    "name": "c",
                    "path": f"{ns}/web/data",
                    "time": time.time(),
                }
                doc = {
                    "kind": "volagent.registry",
                    "format": 1,
                    "namespace": ns,
                    "entries": [entry],
                }
                dump(base / "registry" / f"{ns}.json", doc)
                (base / "registry" / f"{ns}.lock").touch()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _write(self) -> None:
        """Every host's heartbeat each HEARTBEAT_S and usage records each USAGE_S, spread."""
        jobs: list[tuple[float, str, str | None]] = []
        for i, host in enumerate(self.hosts):
            jobs.append((HEARTBEAT_S * i / self.n, host, None))
            for k, ns in enumerate(self.namespaces(host)):
                jobs.append((USAGE_S * (i * NAMESPACES_PER_HOST + k) / (self.n * 3), host, ns))
        start = time.monotonic()
        due = {j: start + j[0] for j in jobs}
        while not self._stop.is_set():
            now = time.monotonic()
            for job, when in due.items():
                if when <= now:
                    _, host, ns = job
                    if ns is None:
                        self.heartbeat(host)
                        due[job] = when + HEARTBEAT_S
                    else:
                        self.usage(host, ns)
                        due[job] = when + USAGE_S
                    self.writes += 1
            self._stop.wait(max(0.01, min(due.values()) - time.monotonic()))


class Strace:
    """strace following the agent, writing every file system call to a file."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [
                "strace",
                "-f",
                "-y",
                "-qq",
                "-e",
                f"trace={FILE_CALLS}",
                "-o",
                str(out),
                "-p",
                str(pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # attached to every thread

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)


def count(trace: Path, mount_point: str, part: str = "") -> int:
    """Calls in the trace naming a path under the mount point (and `part` in it)."""
    n = 0
    with trace.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if "resumed>" in line or mount_point not in line:
                continue
            if part and part not in line:
                continue
            n += 1
    return n


def metric(agent: AgentProcess, name: str) -> float:
    _, body = unixhttp.request(agent.socket_path, "GET", "/metrics")
    match = re.search(rf"^{re.escape(name)} (\S+)$", body.decode(), re.M)
    return float(match.group(1)) if match else 0.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def create_request(mount_point: str, n: int) -> bytes:
    body = {
        "Image": "busybox",
        "Cmd": ["true"],
        "Labels": {"convox.app": "bench", "convox.service": "web"},
        "HostConfig": {"Binds": [f"{mount_point}/r1-bench/web/d{n}:/data"]},
    }
    doc = {
        "RequestMethod": "POST",
        "RequestUri": f"/v1.43/containers/create?name=rb{n}",
        "RequestHeaders": {"Content-Type": "application/json"},
        "RequestBody": base64.b64encode(json.dumps(body).encode()).decode(),
    }
    return json.dumps(doc).encode()


def creates(agent: AgentProcess, first: int, n: int) -> None:
    conn = unixhttp.UnixHTTPConnection(agent.config["guard"]["plugin_socket"], timeout=30)
    try:
        for i in range(first, first + n):
            conn.request("POST", "/AuthZPlugin.AuthZReq", body=create_request(agent.mount_point, i))
            answer = json.loads(conn.getresponse().read())
            assert answer.get("Allow") is True, answer
    finally:
        conn.close()


def gc_listing(agent: AgentProcess) -> tuple[float, int]:
    """`volagent gc` (listing only) against the rack, as an operator runs it: seconds, exit."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "volagent", "--config", agent.config_path, "gc"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return time.monotonic() - started, done.returncode


def settle(agent: AgentProcess) -> None:
    """Until the agent's first usage pass is over: its walk's operations (the rolling reads
    of the records are charged there too) below SETTLED_OPS_S a second for SETTLE_S."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        before = metric(agent, "volagent_usage_walk_operations_total")
        time.sleep(SETTLE_S)
        if (
            metric(agent, "volagent_usage_walk_operations_total") - before
            <= SETTLED_OPS_S * SETTLE_S
        ):
            return


def one_rack(base: Path, n: int, docker_url: str) -> dict[str, float]:
    ip, listener = open_nfs_port()
    scratch = Scratch(base / f"n{n}")
    export = scratch.export(ip)
    rack = Rack(export, n)
    rack.build()
    agent = AgentProcess(
        docker_url,  # an engine running nothing: the guard judges once it is listed
        rack="r1",
        config={
            "host_id": "bench-agent",
            "log_level": "info",
            "guard": {"enabled": True},
            "mount": {
                "type": "nfs",
                "source": f"{ip}:/",
                "mount_program": scratch.mount_program,
                "probe_interval_s": 5.0,  # the default (the test bed's agents probe faster)
                "probe_timeout_s": 3.0,
            },
        },
    )
    try:
        rack.start()
        agent.start()
        agent.wait_for(lambda d: d["mount"]["state"] == "mounted", what="mounted")
        creates(agent, 10_000, 3)  # the bench namespace's directories and registry exist
        settle(agent)
        mp = agent.mount_point
        idle_trace = base / f"idle-{n}.trace"
        tracer = Strace(agent.pid, idle_trace)
        time.sleep(WINDOW_S)
        tracer.stop()
        idle = count(idle_trace, mp) / WINDOW_S
        rss = rss_kib(agent.pid)
        create_trace = base / f"create-{n}.trace"
        tracer = Strace(agent.pid, create_trace)
        started = time.monotonic()
        creates(agent, 0, CREATES)
        took = time.monotonic() - started
        tracer.stop()
        per_create = (count(create_trace, mp) - idle * took) / CREATES
        registry_part = count(create_trace, mp, "/.volagent/registry") / CREATES
        started = time.monotonic()
        status = unixhttp.get_json(agent.socket_path, "/v1/status?rack=1", timeout=30)[1]
        rack_view_s = time.monotonic() - started
        hosts = len(status.get("hosts") or [])
        gc_s, gc_rc = gc_listing(agent)
        print(
            f"N={n:5d}: idle {idle:7.2f} calls/s on the shared tree; per create {per_create:6.1f} "
            f"(registry {registry_part:5.1f}); RSS {rss / 1024:6.1f} MiB; status --rack lists "
            f"{hosts} hosts in {rack_view_s * 1000:.0f} ms (heartbeats read for 0.9 s at most); "
            f"gc's listing {gc_s:.1f} s, exit {gc_rc} (it gives up after {GC_STALL_S:.0f} s "
            f"without progress); the simulated hosts wrote {rack.writes} records",
            flush=True,
        )
        return {
            "idle": idle,
            "create": per_create,
            "registry": registry_part,
            "rss": rss,
            "rack_view_s": rack_view_s,
            "gc_s": gc_s,
        }
    finally:
        rack.stop()
        stop_agent_on_standin(agent, scratch)
        agent.close()
        listener.close()


def main() -> None:
    if shutil.which("strace") is None:
        print("strace is not installed: apt-get install strace")
        return
    base = Path(tempfile.mkdtemp(prefix="vt-rack-bench-", dir="/tmp"))
    try:
        with EmptyDocker(base) as docker:
            found = {n: one_rack(base, n, docker.url) for n in SIZES}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    lo, hi = min(found), max(found)
    a, b = found[lo], found[hi]
    print(
        f"growth N={lo} -> N={hi}: idle calls/s {b['idle'] / max(a['idle'], 1e-9):.2f}x "
        f"(target <= 2x); per create {b['create'] / max(a['create'], 1e-9):.2f}x; registry "
        f"calls per create {a['registry']:.1f} -> {b['registry']:.1f}; RSS "
        f"{(b['rss'] - a['rss']) / 1024:+.1f} MiB (target within 5 MiB); status --rack "
        f"{a['rack_view_s'] * 1000:.0f} -> {b['rack_view_s'] * 1000:.0f} ms; gc's listing "
        f"{a['gc_s']:.1f} -> {b['gc_s']:.1f} s"
    )


if __name__ == "__main__":
    main()
