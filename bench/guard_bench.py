"""The start guard's cost and its worth, with and without it in the same run.

Two private engines side by side, started the same way (each in its own mount namespace),
one with `--authorization-plugin=volagent` and an agent serving the guard, the other with an
agent on Docker events alone:
- Docker API latency: GET /containers/json through docker-py, the engines taking turns in
  blocks so the machine's noise falls on all (target p50 ratio <= 1.15, p99 <= 1.5). Two
  more engines ask do-nothing plugins that answer "allow": one in C (epoll, keep-alive,
  compiled here with the system's cc: the floor any authorization plugin costs here,
  dockerd's two extra calls per API call included) and one from a bare asyncio protocol;
  the guard's cost over the C floor is printed (goal: within 0.05 in the p50 ratio);
- `docker run` throughput (create + start, a bind under the mount point each) with bounded
  client concurrency (target >= 0.9x);
- `late` volumes in a burst of `docker run`s: events only against the guard (target 0 with it);
- one guarded `docker run` (create + start, one bind) at a time, against the same run on the
  engine without a plugin and on the do-nothing plugin's: what the guard's checks (the bind
  located on the host, nesting, the walk at create and again at start, the mount check
  after the start) cost a single run, above the floor every plugin costs; the named volumes
  looked up per run (none: a create without named volumes asks Docker nothing more);
- one `docker create` at a time (no bind) carrying the privilege fields the guard reads
  (capabilities, security options, sysctls, namespace modes, all within Docker's defaults, so
  it is allowed), against the engine without a plugin and the do-nothing plugin's: what the
  privilege policy adds to a create; and the guard's own decision time, in-process, for a
  `GET /containers/json`, a create without and one with those fields (what to compare
  against the last release's guard on the same machine).
- one guarded `docker run` that also mounts a named volume (`-v NAME:/v`), against the same
  run on the engine without a plugin: the cost of looking the volume up and judging it;
Figures are printed beside their targets; nothing here asserts a threshold.
"""

from __future__ import annotations

import functools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import docker
from tests.testbed import (
    AgentProcess,
    Containers,
    Dockerd,
    app_labels,
    build_rootfs_tar,
    ensure_image,
    parallel,
)
from tests.testbed.agent import all_in
from tests.testbed.plugin_home import PluginHome

from bench.stats import percentile

CALLS = 2000
BLOCK = 100  # calls per turn before the other engine's turn
BACKGROUND_CONTAINERS = 10  # what `docker ps -a` lists on each engine
RUNS = 40
SERIAL_RUNS = 60
SERIAL_TURN = 5  # runs per turn before the next engine's turn
RUN_CONCURRENCY = 8
BURST = 50
BURST_CONCURRENCY = 16
OWNER = "33:33"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:7.3f} ms"


# An authorization plugin that allows everything and does nothing else, as fast as Python
# answers on a socket: the reference for what dockerd's plugin round trips cost by themselves.
NULL_PLUGIN = r"""
import asyncio, sys
ALLOW = b'{"Allow":true}\n'
ACTIVATE = b'{"Implements":["authz"]}\n'
def answer(body):
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
class Plugin(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buf = transport, b""
    def data_received(self, data):
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length:]
            activate = "Plugin.Activate" in head.split("\r\n", 1)[0]
            self.transport.write(answer(ACTIVATE if activate else ALLOW))
async def main():
    await asyncio.get_running_loop().create_unix_server(Plugin, sys.argv[1])
    await asyncio.Event().wait()
asyncio.run(main())
"""


class Side:
    """One engine and its agent (none for the do-nothing plugin's engine)."""

    def __init__(self, label: str, engine: Dockerd, agent: AgentProcess | None) -> None:
        self.label = label
        self.engine = engine
        self.agent = agent
        self.containers = Containers(engine.url)
        self.api = docker.APIClient(base_url=engine.url, version="auto", timeout=120)
        self.latencies: list[float] = []

    def timed_list(self, n: int) -> None:
        for _ in range(n):
            started = time.perf_counter()
            self.api.containers(all=True)
            self.latencies.append(time.perf_counter() - started)

    def runs(self, prefix: str, n: int, concurrency: int, command: list[str]) -> list[str]:
        agent = self.agent
        assert agent is not None

        def run(i: int) -> str:
            path = agent.ns(prefix, f"s{i}", "data")
            labels = app_labels(prefix, f"s{i}", owner=OWNER)
            return self.containers.run([f"{path}:/data"], labels=labels, command=command)

        return parallel(run, range(n), workers=concurrency)

    def close(self) -> None:
        self.containers.cleanup()
        self.containers.close()
        self.api.close()


def api_latency(plain: Side, floor: Side, null: Side, guarded: Side) -> None:
    sides = (plain, floor, null, guarded)
    for side in sides:
        for i in range(BACKGROUND_CONTAINERS):  # the same listing on every engine
            side.containers.create([], labels=app_labels("bg", f"s{i}"), command=["true"])
        side.timed_list(20)  # warm: connections, the plugin's keep-alive
        side.latencies.clear()
    for _ in range(CALLS // BLOCK):
        for side in sides:
            side.timed_list(BLOCK)
    print(f"Docker API latency, {CALLS} GET /containers/json each (docker-py), in turns of {BLOCK}")
    rows = {}
    for side in sides:
        p50 = statistics.median(side.latencies)
        p99 = percentile(side.latencies, 99)
        rows[side.label] = (p50, p99)
        print(f"  {side.label:<18} p50 {_ms(p50)}   p99 {_ms(p99)}")
    ratios = {
        label: (p50 / rows[plain.label][0], p99 / rows[plain.label][1])
        for label, (p50, p99) in rows.items()
    }
    for label, target in (
        (guarded.label, " (target <= 1.15)"),
        (floor.label, ""),
        (null.label, ""),
    ):
        print(f"  ratio p50 {label:<18} {ratios[label][0]:5.2f}{target}")
    for label, target in ((guarded.label, " (target <= 1.5)"), (floor.label, ""), (null.label, "")):
        print(f"  ratio p99 {label:<18} {ratios[label][1]:5.2f}{target}")
    over = ratios[guarded.label][0] - ratios[floor.label][0]
    per_call = rows[guarded.label][0] - rows[floor.label][0]
    print(
        f"  guard over the C floor, p50 ratio  {over:+5.2f}  (goal <= +0.05; "
        f"{per_call * 1e6:+.0f} us a call, for its two plugin requests)"
    )


def run_throughput(plain: Side, guarded: Side) -> None:
    rates: dict[str, list[float]] = {}
    for round_no, side in enumerate((plain, guarded, plain, guarded)):
        started = time.perf_counter()
        ids = side.runs(f"tp{round_no}", RUNS, RUN_CONCURRENCY, ["true"])
        rate = len(ids) / (time.perf_counter() - started)
        rates.setdefault(side.label, []).append(rate)
    print(f"`docker run` throughput, {RUNS} runs x2 each, {RUN_CONCURRENCY} at a time")
    best = {label: max(r) for label, r in rates.items()}
    for label, rate in best.items():
        print(f"  {label:<14} {rate:6.1f} runs/s (best of 2)")
    ratio = best[guarded.label] / best[plain.label]
    print(f"  ratio {ratio:5.2f}  (target >= 0.9)")


def serial_run_latency(plain: Side, null: Side, guarded: Side) -> None:
    sides = (plain, null, guarded)
    times: dict[str, list[float]] = {side.label: [] for side in sides}
    counter = {"n": 0}

    def one(side: Side) -> None:
        counter["n"] += 1
        i = counter["n"]
        if side.agent is not None:
            path = side.agent.ns("serial", f"s{i}", "data")
        else:
            path = os.path.join(side.engine.base, "binds", f"s{i}")
            os.makedirs(path, exist_ok=True)  # what the guard would have made
        labels = app_labels("serial", f"s{i}", owner=OWNER)
        started = time.perf_counter()
        side.containers.run([f"{path}:/data"], labels=labels, command=["true"])
        times[side.label].append(time.perf_counter() - started)

    for side in sides:
        one(side)  # warm
        times[side.label].clear()
    assert guarded.agent is not None
    walks_before = guarded.agent.metric("volagent_directory_walks_total")
    lookups_before = guarded.agent.metric("volagent_guard_volume_lookups_total")
    for _ in range(SERIAL_RUNS // SERIAL_TURN):
        for side in sides:
            for _ in range(SERIAL_TURN):
                one(side)
    print(f"one `docker run` at a time (create + start, one bind), {SERIAL_RUNS} each, in turns")
    p50 = {label: statistics.median(t) for label, t in times.items()}
    for label, value in p50.items():
        print(f"  {label:<18} p50 {_ms(value)}   p99 {_ms(percentile(times[label], 99))}")
    print(f"  ratio p50 guard / no plugin          {p50[guarded.label] / p50[plain.label]:5.2f}")
    print(f"  ratio p50 guard / do-nothing plugin  {p50[guarded.label] / p50[null.label]:5.2f}")
    # settled first: the Docker watch's look at each create and start counts too
    time.sleep(2)
    walks = guarded.agent.metric("volagent_directory_walks_total") - walks_before
    print(
        f"  directory walks per guarded run       {walks / SERIAL_RUNS:5.2f}"
        "  (1 at create, 1 at the start, 1 after the start; the create event walks nothing)"
    )
    lookups = guarded.agent.metric("volagent_guard_volume_lookups_total") - lookups_before
    print(
        f"  named volumes looked up per run       {lookups / SERIAL_RUNS:5.2f}"
        "  (target 0: these runs mount no named volume)"
    )


def named_volume_runs(plain: Side, guarded: Side) -> None:
    """One `docker run` at a time with a bind and a named volume (made at the first run, then
    used as it exists), taking turns with the engine without a plugin."""
    sides = (plain, guarded)
    times: dict[str, list[float]] = {side.label: [] for side in sides}
    counter = {"n": 0}

    def one(side: Side) -> None:
        assert side.agent is not None
        counter["n"] += 1
        i = counter["n"]
        path = side.agent.ns("named", f"s{i}", "data")
        labels = app_labels("named", f"s{i}", owner=OWNER)
        started = time.perf_counter()
        side.containers.run([f"{path}:/data", "bench-named:/v"], labels=labels, command=["true"])
        times[side.label].append(time.perf_counter() - started)

    for side in sides:
        one(side)  # warm, and makes the volume
        times[side.label].clear()
    assert guarded.agent is not None
    before = guarded.agent.metric("volagent_guard_volume_lookups_total")
    for _ in range(SERIAL_RUNS // SERIAL_TURN):
        for side in sides:
            for _ in range(SERIAL_TURN):
                one(side)
    lookups = guarded.agent.metric("volagent_guard_volume_lookups_total") - before
    print(f"one `docker run` at a time with a bind and a named volume, {SERIAL_RUNS} each")
    p50 = {label: statistics.median(t) for label, t in times.items()}
    for label, value in p50.items():
        print(f"  {label:<18} p50 {_ms(value)}   p99 {_ms(percentile(times[label], 99))}")
    print(f"  ratio p50 guard / no plugin          {p50[guarded.label] / p50[plain.label]:5.2f}")
    print(
        f"  named volumes looked up per run       {lookups / SERIAL_RUNS:5.2f}"
        "  (1 at create, 1 at the start)"
    )


# the HostConfig of a create that uses every field the privilege policy reads, within
# Docker's defaults (allowed for any app)
PRIVILEGE_FIELDS: dict[str, Any] = {
    "cap_add": ["CHOWN", "NET_BIND_SERVICE"],
    "cap_drop": ["NET_RAW"],
    "security_opt": ["no-new-privileges", "apparmor=docker-default"],
    "sysctls": {"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shmmax": "65536"},
    "ipc_mode": "shareable",
    "privileged": False,
}
PRIVILEGED_CREATES = 60


def privileged_create_latency(plain: Side, null: Side, guarded: Side) -> None:
    sides = (plain, null, guarded)
    times: dict[str, list[float]] = {side.label: [] for side in sides}

    def one(side: Side, i: int) -> None:
        api = side.containers.api
        host_config = api.create_host_config(network_mode="none", **PRIVILEGE_FIELDS)
        labels = {**app_labels("priv", f"s{i}"), "volagent.test": "1"}
        started = time.perf_counter()
        created = api.create_container(
            side.containers.image, command=["true"], labels=labels, host_config=host_config
        )
        times[side.label].append(time.perf_counter() - started)
        api.remove_container(created["Id"], force=True)

    for side in sides:
        one(side, 0)  # warm
        times[side.label].clear()
    for turn in range(PRIVILEGED_CREATES // SERIAL_TURN):
        for side in sides:
            for j in range(SERIAL_TURN):
                one(side, turn * SERIAL_TURN + j)
    print(
        f"one `docker create` carrying the privilege fields (no bind), {PRIVILEGED_CREATES} "
        "each, in turns"
    )
    p50 = {label: statistics.median(t) for label, t in times.items()}
    for label, value in p50.items():
        print(f"  {label:<18} p50 {_ms(value)}   p99 {_ms(percentile(times[label], 99))}")
    print(f"  ratio p50 guard / no plugin          {p50[guarded.label] / p50[plain.label]:5.2f}")
    print(f"  ratio p50 guard / do-nothing plugin  {p50[guarded.label] / p50[null.label]:5.2f}")


def guard_decision_cost() -> None:
    """The guard's decision, in-process (no sockets, no Docker): microseconds per AuthZReq."""
    import asyncio  # noqa: PLC0415
    import base64  # noqa: PLC0415
    import json  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from volagent.config import from_dict  # noqa: PLC0415
    from volagent.guard.plugin import Guard  # noqa: PLC0415
    from volagent.httpserver import Request  # noqa: PLC0415
    from volagent.state import AgentState  # noqa: PLC0415
    from volagent.volumes.preparer import Preparer  # noqa: PLC0415
    from volagent.worker import TimedWorker  # noqa: PLC0415

    base = tempfile.mkdtemp(prefix="vt-gd-")
    cfg = from_dict(
        {"rack": "r", "mount_point": f"{base}/mp", "state_dir": base, "guard": {"enabled": True}}
    )
    state = AgentState(cfg)
    state.set_mount_state("mounted")
    state.mount_known.set()
    state.containers_listed.set()  # as the Docker watch does once it has listed them
    guard = Guard(state, Preparer(state, TimedWorker("bench", max_threads=1)))
    host_config = {
        "NetworkMode": "none",
        "CapAdd": PRIVILEGE_FIELDS["cap_add"],
        "CapDrop": PRIVILEGE_FIELDS["cap_drop"],
        "SecurityOpt": PRIVILEGE_FIELDS["security_opt"],
        "Sysctls": PRIVILEGE_FIELDS["sysctls"],
        "IpcMode": "shareable",
        "Privileged": False,
        "PidMode": "",
        "MaskedPaths": None,
    }

    def authz(method: str, uri: str, body: dict[str, Any] | None) -> bytes:
        doc: dict[str, Any] = {
            "RequestMethod": method,
            "RequestUri": uri,
            "RequestHeaders": {"Content-Type": "application/json"},
        }
        if body is not None:
            doc["RequestBody"] = base64.b64encode(json.dumps(body).encode()).decode()
        return json.dumps(doc).encode()

    create = {"Image": "x", "Labels": app_labels("bench", "web"), "Cmd": ["true"]}
    cases = {
        "GET /containers/json": authz("GET", "/v1.41/containers/json?all=1", None),
        "create, no privilege fields": authz(
            "POST", "/v1.41/containers/create", {**create, "HostConfig": {"NetworkMode": "none"}}
        ),
        "create, privilege fields": authz(
            "POST", "/v1.41/containers/create", {**create, "HostConfig": host_config}
        ),
    }

    async def timed(raw: bytes, n: int) -> float:
        req = Request("POST", "/AuthZPlugin.AuthZReq", {}, {}, raw, peer_uid=0)
        started = time.perf_counter()
        for _ in range(n):
            await guard.handle(req)
        return (time.perf_counter() - started) / n

    print("the guard's decision in-process, microseconds per AuthZReq (best of 5 x 2000)")
    for label, raw in cases.items():
        best = min(asyncio.run(timed(raw, 2000)) for _ in range(5))
        print(f"  {label:<30} {best * 1e6:8.1f} us")


def _settled(ids: list[str], doc: dict[str, Any]) -> bool:
    return all_in(doc, ids, ["ready", "late"])


def late_volumes(plain: Side, guarded: Side) -> None:
    print(f"`late` volumes in a burst of {BURST} `docker run`s, {BURST_CONCURRENCY} at a time")
    for side in (plain, guarded):
        assert side.agent is not None
        ids = side.runs("burst", BURST, BURST_CONCURRENCY, ["true"])
        doc = side.agent.wait_for(functools.partial(_settled, ids), timeout=180)
        states = [v["state"] for c in doc["containers"] if c["id"] in ids for v in c["volumes"]]
        late = states.count("late")
        target = "  (target 0)" if side is guarded else ""
        print(f"  {side.label:<14} late {late}/{len(states)}{target}")


def guard_decisions(side: Side) -> None:
    assert side.agent is not None
    doc = side.agent.status()
    guard = doc["guard"]
    print(f"guard decisions: {guard['allowed']} allowed, {guard['denied']} denied")


def _start(home: PluginHome, rootfs: str, guard: bool) -> Side:
    extra = ("--authorization-plugin=volagent",) if guard else ()
    engine = home.dockerd(*extra, name="dg" if guard else "dp")
    agent = (
        home.agent(engine.url, config={"log_level": "warning"})
        if guard
        else AgentProcess(engine.url, parent_dir=home.base, config={"log_level": "warning"})
    )
    agent.start()  # before the engine: an engine with the plugin asks it at start
    engine.start()
    ensure_image(engine.client(), rootfs)
    agent.wait_for(lambda d: d["docker"]["state"] == "connected", what="connected")
    return Side("guard" if guard else "events only", engine, agent)


def _start_floor(home: PluginHome, rootfs: str) -> tuple[Side, subprocess.Popen[bytes]]:
    """The do-nothing plugin in C, compiled here."""
    binary = os.path.join(home.base, "null_plugin")
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "null_plugin.c")
    subprocess.run(["cc", "-O2", "-o", binary, source], check=True)
    return _start_plugin(home, rootfs, [binary, home.plugin_socket], "C floor plugin", "dc")


def _start_null(home: PluginHome, rootfs: str) -> tuple[Side, subprocess.Popen[bytes]]:
    command = [sys.executable, "-c", NULL_PLUGIN, home.plugin_socket]
    return _start_plugin(home, rootfs, command, "do-nothing plugin", "dn")


def _start_plugin(
    home: PluginHome, rootfs: str, command: list[str], label: str, name: str
) -> tuple[Side, subprocess.Popen[bytes]]:
    plugin = subprocess.Popen(command)
    deadline = time.monotonic() + 30
    while not os.path.exists(home.plugin_socket):
        if plugin.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the do-nothing plugin did not start")
        time.sleep(0.05)
    engine = home.dockerd("--authorization-plugin=volagent", name=name)
    try:
        engine.start()
        ensure_image(engine.client(), rootfs)
    except BaseException:
        plugin.kill()
        engine.stop()
        raise
    return Side(label, engine, None), plugin


def main() -> None:
    home = PluginHome()
    null_home = PluginHome()
    floor_home = PluginHome()
    sides: list[Side] = []
    cleanup: list[Callable[[], None]] = [home.close, null_home.close, floor_home.close]
    try:
        rootfs = build_rootfs_tar(os.path.join(home.base, "rootfs.tar"))
        for guard in (False, True):
            side = _start(home, rootfs, guard)
            sides.append(side)
            agent = side.agent
            assert agent is not None
            cleanup += [side.engine.stop, agent.close, side.close]
        null, plugin = _start_null(null_home, rootfs)
        cleanup += [plugin.kill, null.engine.stop, null.close]
        floor, floor_plugin = _start_floor(floor_home, rootfs)
        cleanup += [floor_plugin.kill, floor.engine.stop, floor.close]
        plain, guarded = sides
        api_latency(plain, floor, null, guarded)
        run_throughput(plain, guarded)
        serial_run_latency(plain, null, guarded)
        privileged_create_latency(plain, null, guarded)
        guard_decision_cost()
        named_volume_runs(plain, guarded)
        late_volumes(plain, guarded)
        guard_decisions(guarded)
    finally:
        for step in reversed(cleanup):
            try:
                step()
            except Exception as exc:  # keep cleaning: engines and mounts must not be left
                print(f"cleanup: {exc!r}")


if __name__ == "__main__":
    main()
