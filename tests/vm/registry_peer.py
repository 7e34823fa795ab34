"""A second host of the rack inside the test virtual machine: volagent's own registry claim,
run from a second NFS client's mount of the rack's export, under host id `host-2`, beside
the machine's real agent (host 1: systemd, the guarded dockerd). Copied into the guest by
tests/vm/test_registry.py and run with the installed volagent's Python
(`/opt/volagent/bin/python registry_peer.py COMMAND ...`); standard library and the
installed volagent only.

Commands (each first writes host 2's heartbeat through the second mount, so host 2 is a live
host of the rack, not one whose entries expire):

- `claim MOUNT NS PATH`: one claim of PATH (relative to the mount point) in namespace NS, as
  the agent's registry worker makes it (the claim under the lock). Prints one JSON line:
  whether it was registered, and the clash if not.
- `race MOUNT DOCKER_PATH PEER_PATH ROUNDS PREFIX`: ROUNDS races, each in a namespace of its
  own (`vmrack-<PREFIX><n>`, so no round sees another's entries): host 1's `docker create`
  binding `/volumes/<ns>/DOCKER_PATH` against host 2's claim of `<ns>/PEER_PATH`. Both
  threads leave one barrier; host 2 then waits an offset aimed at the moment host 1's guard
  claims inside the create (a staircase over the rounds: later after host 2 won, earlier
  after host 1 won, the step halved at each turn), so the rounds close in on the two claims
  meeting at the namespace's lock. Prints one JSON line per round.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

from volagent import __version__
from volagent.rack import heartbeat, registry_claim
from volagent.rack.registry import FORMAT, Entry

HOST = "host-2"
RACK = "vmrack"
IMAGE = "volagent-test/busybox:latest"
EXPIRE_AFTER_S = 900.0  # [health] forget_after_s's default, as host 1 has it
TIMEOUT_S = 10.0  # [directories] timeout_s's default; the worker keeps 80% of it
HOST1_MOUNT = "/volumes"


def beat(mount: str, dev: int) -> None:
    now = time.time()
    last_seen = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    record = heartbeat.HostBeat(
        HOST, now, RACK, "", "ok", __version__, FORMAT, "mounted", last_seen, 30.0
    )
    heartbeat.write_heartbeat(mount, dev, record)


def claim(mount: str, dev: int, ns: str, path: str) -> dict[str, Any]:
    """Host 2's claim of `path`, the way the agent's registry worker makes it."""
    started = time.time()
    deadline = time.monotonic() + TIMEOUT_S * 0.8
    wanted = [Entry(HOST, f"peer:{ns}", f"{ns}-peer", path, time.time())]
    result = registry_claim.claim(
        mount,
        dev,
        ns,
        host=HOST,
        wanted=wanted,
        expire_after_s=EXPIRE_AFTER_S,
        deadline=deadline,
    )
    return {
        "registered": not result.clashes,
        "clash": result.clashes.get(path, ""),
        "lock_tries": result.counts.locks,  # more than 1: the lock was held by host 1
        "started": started,
        "ended": time.time(),
    }


def docker_create(app: str, path: str, name: str) -> dict[str, Any]:
    """Host 1's `docker create` binding `/volumes/vmrack-<app>/<path>`."""
    argv = [
        "docker", "create", "--name", name, "--network", "none",
        "--label", f"convox.app={app}", "--label", "convox.service=web",
        "-v", f"{HOST1_MOUNT}/{RACK}-{app}/{path}:/data", IMAGE, "sh",
    ]  # fmt: skip
    started = time.time()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return {
        "allowed": done.returncode == 0,
        "message": (done.stderr or done.stdout).strip(),
        "started": started,
        "ended": time.time(),
    }


def race(mount: str, dev: int, paths: tuple[str, str], rounds: int, prefix: str) -> None:
    """`paths`: what host 1's create binds and what host 2 claims, below the namespace."""
    docker_path, peer_path = paths
    # an uncontested create first: the guard's code warm, and how long a create takes here
    warm = docker_create(f"{prefix}warm", docker_path, f"{prefix}-warm")
    if not warm["allowed"]:
        raise SystemExit(f"the uncontested create was refused: {warm['message']}")
    length = warm["ended"] - warm["started"]
    # host 2's delay after the barrier is aimed at the moment host 1 claims, which lies
    # somewhere inside the create: a staircase from half of it, later after a round host 2
    # won (it claimed first), earlier after one host 1 won, the step halved at each turn,
    # so the rounds close in on the two claims meeting at the lock
    offset, step, last = length / 2, length / 4, ""
    for n in range(rounds):
        app = f"{prefix}{n}"
        ns = f"{RACK}-{app}"
        barrier = threading.Barrier(2)
        out: dict[str, dict[str, Any]] = {}

        def host1(
            app: str = app, barrier: threading.Barrier = barrier, out: dict[str, Any] = out
        ) -> None:
            barrier.wait()
            out["host1"] = docker_create(app, docker_path, f"{app}-1")

        def host2(
            ns: str = ns,
            offset: float = offset,
            barrier: threading.Barrier = barrier,
            out: dict[str, Any] = out,
        ) -> None:
            barrier.wait()
            time.sleep(offset)
            out["host2"] = claim(mount, dev, ns, f"{ns}/{peer_path}")

        threads = [threading.Thread(target=host1), threading.Thread(target=host2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(json.dumps({"round": n, "ns": ns, "offset": offset, **out}), flush=True)
        one, two = out["host1"]["allowed"], out["host2"]["registered"]
        if one == two:
            continue  # both or neither: the test fails on it; the aim stays
        winner = "host 2" if two else "host 1"
        if last and winner != last:
            step /= 2
        last = winner
        offset = max(0.0, offset + step if winner == "host 2" else offset - step)


def main() -> None:
    command, mount = sys.argv[1], sys.argv[2]
    dev = os.stat(mount).st_dev
    beat(mount, dev)
    if command == "claim":
        print(json.dumps(claim(mount, dev, sys.argv[3], sys.argv[4])), flush=True)
    elif command == "race":
        docker_path, peer_path, rounds, prefix = sys.argv[3:7]
        race(mount, dev, (docker_path, peer_path), int(rounds), prefix)
    else:
        raise SystemExit(f"unknown command {command!r}: claim or race")


if __name__ == "__main__":
    main()
