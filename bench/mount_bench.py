"""The mount watcher against the EFS stand-in: how soon it notices an external umount, a dead
mount (SIGKILL of the stand-in's server) and a hang (SIGSTOP), how soon it is `mounted` again
after the server returns (SIGCONT), and `volagent status` latency while the mount hangs
against while it is healthy, in the same run.

Notice times come from a MountManager in this process, its state sampled every millisecond;
targets are derived from the configured probe interval and timeout and printed as ratios.
Status latency comes from a real daemon (the test bed's agent process) over its socket, and
from the `volagent status` command, the two conditions taking turns in blocks.
Nothing here asserts a threshold. Needs root (real mounts).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.testbed import AgentProcess, unixhttp
from tests.testbed.agent import agent_env
from tests.testbed.aws import open_nfs_port
from tests.testbed.efs_standin import Scratch, cleanup, running_manager, stop_agent_on_standin

from bench.stats import percentile
from volagent import log
from volagent.mount import table

INTERVAL_S = 1.0
TIMEOUT_S = 0.5
ROUNDS = 5
STATUS_BLOCKS = 6
STATUS_PER_BLOCK = 100
CLI_PER_BLOCK = 10


async def _until(cond: Callable[[], bool], limit: float = 60.0) -> float:
    """Seconds until cond() holds, sampled every millisecond."""
    start = time.perf_counter()
    while not cond():
        if time.perf_counter() - start > limit:
            raise TimeoutError("the condition did not come")
        await asyncio.sleep(0.001)
    return time.perf_counter() - start


def _standin_mount(scratch: Scratch) -> dict[str, object]:
    """The [mount] section every measurement uses: the stand-in, the bench's probe timing,
    and no remount of a stalled mount (a hang is to be seen, not cured)."""
    return {
        "type": "nfs",
        "source": f"{HOST}:/",
        "mount_program": scratch.mount_program,
        "probe_interval_s": INTERVAL_S,
        "probe_timeout_s": TIMEOUT_S,
        "stalled_remount_after": 1000,
    }


async def _notice_times(scratch: Scratch) -> dict[str, list[float]]:
    cfg = scratch.config(_standin_mount(scratch))
    scratch.export(HOST)
    out: dict[str, list[float]] = {"umount": [], "dead": [], "hang": [], "return": []}
    async with running_manager(cfg) as r:
        await r.wait_state("mounted", timeout=60)

        def state() -> str:
            return r.state.mount.state

        async def settle() -> None:
            await _until(lambda: state() == "mounted")
            # start each round at a random phase of the probe cycle, as the world would
            await asyncio.sleep(INTERVAL_S * (0.5 + os.urandom(1)[0] / 255))

        for _ in range(ROUNDS):
            await settle()
            subprocess.run(["umount", scratch.mount_point], check=True)
            out["umount"].append(await _until(lambda: state() != "mounted"))

            await settle()
            pid = _server(scratch)
            os.kill(pid, signal.SIGKILL)
            out["dead"].append(await _until(lambda: state() != "mounted"))

            await settle()
            pid = _server(scratch)
            os.kill(pid, signal.SIGSTOP)
            out["hang"].append(await _until(lambda: state() == "stalled"))
            os.kill(pid, signal.SIGCONT)
            out["return"].append(await _until(lambda: state() == "mounted"))
    return out


def _server(scratch: Scratch, mount_point: str = "") -> int:
    pid = scratch.server_pid(mount_point)
    if pid is None:
        raise RuntimeError("no stand-in server")
    return pid


def _status_latency(base: str) -> dict[str, dict[str, list[float]]]:
    scratch = Scratch(Path(base))
    agent = AgentProcess(
        f"unix://{base}/no-docker.sock",
        config={"mount": _standin_mount(scratch)},
        parent_dir=base,
    )
    scratch.export(HOST)
    times: dict[str, dict[str, list[float]]] = {
        "healthy": {"socket": [], "cli": []},
        "hung": {"socket": [], "cli": []},
    }
    try:
        agent.start()
        agent.wait_for(lambda d: d["mount"]["state"] == "mounted", what="mounted")
        pid = _server(scratch, agent.mount_point)
        for _ in range(STATUS_BLOCKS):
            for condition in ("healthy", "hung"):
                if condition == "hung":
                    os.kill(pid, signal.SIGSTOP)
                    agent.wait_for(lambda d: d["mount"]["state"] == "stalled", what="stalled")
                _time_block(agent, times[condition])
                if condition == "hung":
                    os.kill(pid, signal.SIGCONT)
                    agent.wait_for(lambda d: d["mount"]["state"] == "mounted", what="back")
    finally:
        stop_agent_on_standin(agent, scratch)
        agent.close()
    return times


def _time_block(agent: AgentProcess, into: dict[str, list[float]]) -> None:
    for _ in range(STATUS_PER_BLOCK):
        start = time.perf_counter()
        status, _ = unixhttp.get_json(agent.socket_path, "/v1/status")
        into["socket"].append(time.perf_counter() - start)
        assert status == 200
    env = agent_env()
    for _ in range(CLI_PER_BLOCK):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "volagent", "status", "--socket", agent.socket_path],
            env=env,
            capture_output=True,
            check=False,
        )
        into["cli"].append(time.perf_counter() - start)


def _table_look(base: str) -> None:
    """The mount side's look at the table after each change, on a host with as many mounts
    as a few hundred containers make (an overlay and a network namespace each): only the
    lines at the mount point parsed, against the whole table parsed."""
    lines = ["22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw"]
    for i in range(1000):
        lines.append(
            f"{100 + i} 22 0:{60 + i} / /var/lib/docker/overlay2/{i:064x}/merged rw,relatime "
            f"- overlay overlay rw,lowerdir=/l{i},upperdir=/u{i},workdir=/w{i}"
        )
    lines.insert(500, "36 22 0:52 / /volumes rw,relatime - nfs4 fs-1.efs:/ rw,vers=4.1")
    info = os.path.join(base, "mountinfo")
    Path(info).write_text("\n".join(lines) + "\n")
    rounds = 200
    looks = {
        "at the mount point": lambda: table.find_mount("/volumes", info),
        "the whole table": lambda: table.mount_at(table.read_table(info), "/volumes"),
    }
    took: dict[str, float] = {}
    for name, look in looks.items():
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            look()
            times.append(time.perf_counter() - t0)
        took[name] = statistics.median(times)
    targeted, whole = took["at the mount point"], took["the whole table"]
    print(
        f"  mount table look, 1,001 mounts: median {targeted * 1e6:.0f} us at the mount point, "
        f"{whole * 1e6:.0f} us parsing it whole (ratio {targeted / whole:.2f}, {rounds} looks)"
    )


def main() -> None:
    if os.geteuid() != 0:
        print("skipped: needs root for real mounts")
        return
    global HOST  # the address of this run's NFS port listener
    log.configure("error")  # the in-process manager's events would drown the figures
    HOST, listener = open_nfs_port()
    try:
        _main()
    finally:
        listener.close()


HOST = ""  # the stand-in's NFS source host: an address on loopback, nothing resolved


def _main() -> None:
    base = tempfile.mkdtemp(prefix="vb-mount-")
    scratch = Scratch(Path(base, "inproc"))
    try:
        notice = asyncio.run(_notice_times(scratch))
    finally:
        cleanup(scratch)
    targets = {
        "umount": ("external umount noticed", 1.0),
        "dead": ("dead mount noticed", INTERVAL_S + 1.0),
        "hang": ("hang noticed (stalled)", INTERVAL_S + TIMEOUT_S),
        "return": ("server back to mounted", 2.0),
    }
    print(f"probe_interval_s={INTERVAL_S:g} probe_timeout_s={TIMEOUT_S:g}, {ROUNDS} rounds each")
    for key, (label, target) in targets.items():
        vals = notice[key]
        worst = max(vals)
        print(
            f"  {label:<26} median {statistics.median(vals) * 1000:7.1f} ms  "
            f"max {worst * 1000:7.1f} ms  target <= {target * 1000:.0f} ms  "
            f"(max/target {worst / target:.2f})"
        )
    _table_look(base)
    lat = _status_latency(os.path.join(base, "daemon"))
    for kind in ("socket", "cli"):
        healthy, hung = lat["healthy"][kind], lat["hung"][kind]
        p99_healthy, p99_hung = percentile(healthy, 99), percentile(hung, 99)
        what = "GET /v1/status" if kind == "socket" else "volagent status"
        print(
            f"  {what:<16} p99 healthy {p99_healthy * 1000:7.2f} ms, hung "
            f"{p99_hung * 1000:7.2f} ms (n={len(hung)}): "
            f"ratio {p99_hung / p99_healthy:.2f} (target <= 1.5)"
        )
    with contextlib.suppress(OSError):
        os.rmdir(os.path.join(base, "daemon"))
    subprocess.run(["chattr", "-i", scratch.mount_point], check=False, capture_output=True)
    subprocess.run(["rm", "-rf", base], check=False)


if __name__ == "__main__":
    main()
