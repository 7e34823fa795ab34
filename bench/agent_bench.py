"""The agent end to end on a private Docker engine: how soon a created container's directory
is ready, how many `docker run` volumes end late on events alone, and the daemon's peak RSS
with 200 containers known.

The agent runs as a real process (the test bed's), with a local mount on tmpfs. Readiness is
read off the disk: the leaf exists and has the asked owner. Figures are printed beside their
targets; nothing here asserts a threshold.
"""

from __future__ import annotations

import os
import statistics
import time

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

from bench.stats import percentile

CREATES = 200
RUNS = 50
OWNER_UID = 1234
OWNER = f"{OWNER_UID}:{OWNER_UID}"
POLL_S = 0.0002
READY_DEADLINE_S = 30.0


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _wait_owned(path: str) -> float:
    """Seconds until `path` exists owned by OWNER_UID, polled finely."""
    start = time.perf_counter()
    deadline = start + READY_DEADLINE_S
    while True:
        try:
            if os.stat(path).st_uid == OWNER_UID:
                return time.perf_counter() - start
        except FileNotFoundError:
            pass
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{path} not ready after {READY_DEADLINE_S:g}s")
        time.sleep(POLL_S)


def create_to_ready(agent: AgentProcess, containers: Containers) -> list[str]:
    """`docker create` one container at a time; time from the create returning to its
    directory being ready."""
    latencies = []
    ids = []
    for i in range(CREATES):
        path = agent.ns("bench", f"s{i}", "data")
        ids.append(
            containers.create([f"{path}:/data"], labels=app_labels("bench", f"s{i}", owner=OWNER))
        )
        latencies.append(_wait_owned(path))
    p50, p99 = statistics.median(latencies), percentile(latencies, 99)
    print(f"create -> directory ready over {CREATES} creates (disk polled every {_ms(POLL_S)})")
    print(f"  p50 {_ms(p50):>10}")
    print(f"  p99 {_ms(p99):>10}  (target <= 20 ms)")
    print(f"  max {_ms(max(latencies)):>10}")
    return ids


def peak_rss(agent: AgentProcess, known: int) -> None:
    with open(f"/proc/{agent.pid}/status", encoding="utf-8") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    hwm_mb = int(fields["VmHWM"].split()[0]) / 1024
    rss_mb = int(fields["VmRSS"].split()[0]) / 1024
    print(f"daemon memory with {known} containers known")
    print(f"  peak RSS (VmHWM) {hwm_mb:6.1f} MB  (target <= 60 MB)")
    print(f"  RSS now  (VmRSS) {rss_mb:6.1f} MB")


def late_share(agent: AgentProcess, containers: Containers) -> None:
    """A burst of `docker run`s: created and started at once, the agent on events alone."""

    def run(i: int) -> str:
        path = agent.ns("burst", f"s{i}", "data")
        return containers.run(
            [f"{path}:/data"], labels=app_labels("burst", f"s{i}", owner=OWNER), command=["true"]
        )

    ids = parallel(run, range(RUNS), workers=16)
    doc = agent.wait_for(lambda d: all_in(d, ids, ["ready", "late"]), timeout=120)
    states = [v["state"] for c in doc["containers"] if c["id"] in ids for v in c["volumes"]]
    late = states.count("late")
    print(f"burst of {RUNS} `docker run`s, events only (no start guard)")
    print(
        f"  late {late}/{len(states)} = {late / len(states):.0%}  "
        "(what the start guard takes to 0%)"
    )


def main() -> None:
    engine = Dockerd()
    agent: AgentProcess | None = None
    containers: Containers | None = None
    try:
        engine.start()
        ensure_image(engine.client(), build_rootfs_tar(os.path.join(engine.base, "rootfs.tar")))
        agent = AgentProcess(engine.url, config={"log_level": "info"})
        agent.start()
        agent.wait_for(lambda d: d["docker"]["state"] == "connected", what="connected")
        containers = Containers(engine.url)
        ids = create_to_ready(agent, containers)
        agent.wait_for(lambda d: all_in(d, ids, ["ready"]), timeout=120, what="all known")
        peak_rss(agent, len(ids))
        late_share(agent, containers)
    finally:
        if containers is not None:
            containers.cleanup()
            containers.close()
        if agent is not None:
            agent.close()
        engine.stop()


if __name__ == "__main__":
    main()
