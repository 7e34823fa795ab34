"""The start guard under a flood of the status socket by a local user without root.

One private engine with `--authorization-plugin=volagent` and an agent serving the guard,
~300 containers known to it (so the status document is large). A child process dropped to
`nobody` (in the socket's group, as a member of `volagent` would be) floods the status
socket with all it can send: pipelined `GET /v1/status` on many connections, answers read
or never read, partial bodies, idle connections, reconnecting whenever the server ends one.

Measured in the same run, in phases taking turns: idle; a pipelining flood (every connection
sends `GET /v1/status` ahead and reads the answers: the most work it can ask of the socket);
a mixed flood (also never-read answers, partial bodies, idle connections); and a control, a
child burning as much CPU as the flooder without touching volagent (on a shared 2-core machine
most of a flood's cost is the CPU the flooder takes from everyone, which no server can help):
- guard decision latency: an `AuthZReq` for `GET /containers/json`, sent to the plugin socket
  as dockerd sends it (root, kept-alive connection), until its answer (target: p99 under the
  flood <= 1.5x idle);
- `docker ps` latency (GET /containers/json through docker-py, two plugin calls each);
- `GET /v1/health` as root, which the socket keeps slots for.
Figures are printed beside their targets; nothing here asserts a threshold.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import time
from collections.abc import Callable

import docker
from tests.testbed import (
    Containers,
    app_labels,
    build_rootfs_tar,
    ensure_image,
    parallel,
)
from tests.testbed.flood import KINDS, Burn, Flood, FloodReport, flood_report_text
from tests.testbed.plugin_home import PluginHome

from bench.stats import percentile
from volagent.api import client

CONTAINERS = 300
ROUNDS = 4  # each: an idle, a pipelining flood, a mixed flood and a CPU burn block
CALLS_PER_BLOCK = 1000  # guard decisions per block
PS_PER_BLOCK = 150  # `docker ps` per block
HEALTH_PER_BLOCK = 100
STEPS = 10  # each block interleaves the three kinds of calls in this many steps
FLOOD_CONNECTIONS = 48
NOGROUP = 65534
PHASES = ("idle", "pipelined", "mixed", "burn")

AUTHZ_BODY = json.dumps(
    {
        "User": "",
        "UserAuthNMethod": "",
        "RequestMethod": "GET",
        "RequestUri": "/v1.43/containers/json",
        "RequestHeaders": {"User-Agent": "bench"},
    }
).encode()
AUTHZ_REQUEST = (
    b"POST /AuthZPlugin.AuthZReq HTTP/1.1\r\nHost: plugin\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(AUTHZ_BODY)
) + AUTHZ_BODY


class PluginClient:
    """dockerd's side of the plugin socket: one kept-alive connection, one call at a time."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(path)
        self.buf = b""

    def decide(self) -> bytes:
        self.sock.sendall(AUTHZ_REQUEST)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(rest) < length:
            rest += self._recv()
        self.buf = rest[length:]
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"the guard answered {head[:40]!r}")
        return rest[:length]

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise RuntimeError("the guard closed the connection")
        return data

    def close(self) -> None:
        self.sock.close()


def _timed(fn: Callable[[], object], n: int, into: list[float]) -> None:
    for _ in range(n):
        started = time.perf_counter()
        fn()
        into.append(time.perf_counter() - started)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:8.3f} ms"


def _row(label: str, samples: dict[str, list[float]], target: str = "") -> None:
    idle50, idle99 = statistics.median(samples["idle"]), percentile(samples["idle"], 99)
    print(f"  {label}")
    for phase in PHASES:
        p50, p99 = statistics.median(samples[phase]), percentile(samples[phase], 99)
        ratios = "" if phase == "idle" else f"   x{p50 / idle50:5.2f} x{p99 / idle99:5.2f}"
        print(f"    {phase:<9} p50 {_ms(p50)}   p99 {_ms(p99)}{ratios}")
    worst = max(percentile(samples[p], 99) for p in ("pipelined", "mixed"))
    burn99 = percentile(samples["burn"], 99)
    print(f"    p99 flood/idle {worst / idle99:5.2f}{target}   flood/burn {worst / burn99:5.2f}")


def main() -> None:
    home = PluginHome()
    cleanup: list[Callable[[], None]] = [home.close]
    try:
        rootfs = build_rootfs_tar(os.path.join(home.base, "rootfs.tar"))
        engine = home.dockerd("--authorization-plugin=volagent", name="df")
        agent = home.agent(
            engine.url, config={"log_level": "warning", "api": {"socket_group": "nogroup"}}
        )
        agent.start()
        cleanup.append(agent.close)
        engine.start()
        cleanup.append(engine.stop)
        ensure_image(engine.client(), rootfs)
        agent.wait_for(lambda d: d["docker"]["state"] == "connected", what="connected")
        for path in (home.base, agent.base):  # the socket's group may reach the socket
            os.chmod(path, 0o711)  # noqa: S103 - traversable, not readable
        made = Containers(engine.url)
        cleanup.append(made.close)
        cleanup.append(made.cleanup)

        def create(i: int) -> str:
            app, service = f"app{i % 25}", f"svc{i % 4}"
            path = agent.ns(app, service, f"data{i}")
            return made.create([f"{path}:/data"], labels=app_labels(app, service))

        parallel(create, range(CONTAINERS), workers=8)
        doc = agent.wait_for(
            lambda d: len(d["containers"]) >= CONTAINERS, timeout=300, what="containers"
        )
        size = len(client.request(agent.socket_path, "GET", "/v1/status")[2])
        print(f"{len(doc['containers'])} containers known, status document {size} bytes")

        api = docker.APIClient(base_url=engine.url, version="auto", timeout=120)
        cleanup.append(api.close)
        plugin = PluginClient(home.plugin_socket)
        cleanup.append(plugin.close)

        def health() -> None:
            code, _, _ = client.request(agent.socket_path, "GET", "/v1/health", timeout=60)
            if code not in (200, 503):  # an answer either way
                raise RuntimeError(f"/v1/health answered {code}")

        times: dict[str, dict[str, list[float]]] = {
            k: {p: [] for p in PHASES} for k in ("guard", "ps", "health")
        }

        cpu: dict[str, list[float]] = {p: [0.0, 0.0] for p in PHASES}  # agent CPU s, wall s

        def block(phase: str) -> None:
            cpu_before, wall_before = _cpu_seconds(agent.pid), time.perf_counter()
            try:
                _calls(phase)
            finally:
                cpu[phase][0] += _cpu_seconds(agent.pid) - cpu_before
                cpu[phase][1] += time.perf_counter() - wall_before

        def _calls(phase: str) -> None:
            # interleaved in small steps so each kind sees the whole phase
            for _ in range(STEPS):
                _timed(plugin.decide, CALLS_PER_BLOCK // STEPS, times["guard"][phase])
                _timed(api.containers, PS_PER_BLOCK // STEPS, times["ps"][phase])
                _timed(health, HEALTH_PER_BLOCK // STEPS, times["health"][phase])

        _timed(plugin.decide, 50, [])  # warm: connections, caches
        _timed(api.containers, 10, [])
        reports: dict[str, list[FloodReport]] = {"pipelined": [], "mixed": []}
        for _ in range(ROUNDS):
            block("idle")
            for phase, kinds in (("pipelined", ("pipeline",)), ("mixed", KINDS)):
                flood = Flood(
                    agent.socket_path,
                    connections=FLOOD_CONNECTIONS,
                    kinds=kinds,
                    group=NOGROUP,
                    linger=0.0,
                ).start()
                try:
                    time.sleep(0.5)  # under way: connections made, slots taken
                    block(phase)
                finally:
                    reports[phase].append(flood.stop())
            burn = Burn().start()
            try:
                time.sleep(0.5)
                block("burn")
            finally:
                burn.stop()
        print(
            f"flood of the status socket by uid {NOGROUP} (nobody), {FLOOD_CONNECTIONS} "
            f"connections kept busy, {ROUNDS} rounds of {', '.join(PHASES)}:"
        )
        for phase, phase_reports in reports.items():
            for n, report in enumerate(phase_reports):
                print(f"  {phase} {n + 1}: {flood_report_text(report)}")
                for error in report.errors[:3]:
                    print(f"    error: {error}")
        shares = ", ".join(f"{p} {100 * c / w:.0f}%" for p, (c, w) in cpu.items())
        print(f"the agent's CPU use (of one core): {shares}")
        print("latency (ratios against idle: p50, p99)")
        _row("guard decision (AuthZReq round trip)", times["guard"], "  (target <= 1.5)")
        _row("docker ps (GET /containers/json)", times["ps"], "  (target <= 1.5)")
        _row("GET /v1/health as root", times["health"])
        status = agent.status()
        print(f"agent still {status['status']}, guard: {status['guard']}")
    finally:
        for step in reversed(cleanup):
            try:
                step()
            except Exception as exc:  # keep cleaning: engines and mounts must not be left
                print(f"cleanup: {exc!r}")


if __name__ == "__main__":
    main()
