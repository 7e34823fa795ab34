"""Benchmarks on a real host: the test virtual machine (tests/vm; `make bench-vm` builds its
image and runs this, `make bench` skips it). The rack's filesystem is served by the kernel NFS
server in a second network namespace of the machine, reached over a veth pair (so the client
and the server do not share one network stack, and a netem delay sits on a real link), and
volagent mounts it as NFSv4.1 with the production options.

1. A guarded `docker run` (create + start, one volume under /volumes whose directory volagent
   makes during the create) against Docker alone (the authorization plugin taken out of
   dockerd's config by a reload, volagent stopped, the same kind of bind with its directory
   made beforehand), with 1 ms of netem delay on each end of the veth. The conditions take
   turns in blocks; the ratio is of the medians, both measured in this run. NFS operations
   per run are /proc/self/mountstats deltas across the `docker run`.
2. Each step of a guarded `docker run` on the shared filesystem (create walk, trash check,
   the rack registry's claim, usage record, the registry keeper's update, the start's claim,
   start walk, check after start), counted apart in NFS operations for an existing directory
   three levels below the service's namespace (used before: made long ago, another host's
   usage record of it) and for a new one: bench/vm_steps.py makes, in the guest, the calls
   volagent's worker makes, in its order, with the daemon stopped, so no idle traffic is in
   the counts (the client's lease renewals are left out too).
   `VOLAGENT_BENCH_VM_BLOCKS=0` runs this part alone.
3. Hang noticed: packets to and from port 2049 dropped (iptables) at a random phase of the
   probe cycle; seconds until volagent logs `mount.stalled`, against the configured probe
   interval and timeout, and until it is `mounted` again once packets flow.

Times are under an emulated CPU (TCG) on a shared machine, far slower than on EC2: the
ratios are the figures. Nothing here asserts a threshold.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import random
import statistics
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

from tests.vm import snapshot
from tests.vm.helpers import RACK, mount_state, resumed, status, wait_mount_state, wait_until
from tests.vm.machine import Image, Machine
from tests.vm.snapshot import IMAGE_TAG

from bench.vm_steps import nfs_ops_of

BLOCKS = int(os.environ.get("VOLAGENT_BENCH_VM_BLOCKS", "4"))
PER_BLOCK = int(os.environ.get("VOLAGENT_BENCH_VM_PER_BLOCK", "3"))
HANG_ROUNDS = int(os.environ.get("VOLAGENT_BENCH_VM_HANG_ROUNDS", "4"))
STEP_RUNS = int(os.environ.get("VOLAGENT_BENCH_VM_STEP_RUNS", "5"))
IDLE_S = 30
DELAY = "1ms"
SERVER_IP = "10.99.0.1"
CLIENT_IP = "10.99.0.2"
SOURCE = f"{SERVER_IP}:/export"
DROP = [
    "OUTPUT -p tcp --dport 2049 -j DROP",
    "INPUT -p tcp --sport 2049 -j DROP",
]

# The NFS server in the network namespace `nfssrv`: its own nfsd filesystem, mountd and
# nfsd (NFSv4 only, TCP), the same /export as the machine's own server, exported to the veth
# peer. A short grace period (and lease) so the bench does not wait 90 s for it.
SERVER_NETNS = f"""set -e
ip netns add nfssrv
ip link add vnfs0 type veth peer name vnfs1 netns nfssrv
ip addr add {CLIENT_IP}/24 dev vnfs0
ip link set vnfs0 up
ip netns exec nfssrv ip addr add {SERVER_IP}/24 dev vnfs1
ip netns exec nfssrv ip link set vnfs1 up
ip netns exec nfssrv ip link set lo up
mkdir -p /etc/exports.d
echo '/export {CLIENT_IP}(rw,sync,no_subtree_check,no_root_squash,insecure)' \
    > /etc/exports.d/netns.exports
exportfs -ra
ip netns exec nfssrv sh -ec '
    mount -t nfsd nfsd /proc/fs/nfsd
    echo 10 > /proc/fs/nfsd/nfsv4gracetime
    echo 10 > /proc/fs/nfsd/nfsv4leasetime
    exportfs -r
    rpc.mountd -N 3
    rpc.nfsd -N 3 -U 8'
"""

RTT = f"""python3 -c '
import socket, statistics, time
times = []
for _ in range(30):
    start = time.perf_counter()
    socket.create_connection(("{SERVER_IP}", 2049), timeout=5).close()
    times.append((time.perf_counter() - start) * 1000)
print(round(statistics.median(times), 2))'"""

MARK = "=====volagent-bench====="


def nfs_server_in_netns(vm: Machine) -> None:
    vm.sh(SERVER_NETNS, timeout=120)
    # volagent moves to it: the loopback mount of the snapshot goes, the config names the
    # server across the veth (the guard waits in the socket's backlog meanwhile)
    vm.sh(
        "systemctl stop volagent && umount /volumes &&"
        f" sed -i 's|127.0.0.1:/export|{SOURCE}|' /etc/volagent/volagent.toml &&"
        " systemctl start volagent",
        timeout=300,
    )
    wait_mount_state(vm, "mounted", timeout=300)
    line = vm.sh("grep ' /volumes ' /proc/mounts").out.split()
    if line[0] != SOURCE or line[2] != "nfs4":
        raise RuntimeError(f"/volumes is not the netns server's export: {line}")
    print(f"  /volumes: {line[0]} {line[2]} {line[3]}")


def add_delay(vm: Machine) -> None:
    vm.sh(
        f"tc qdisc add dev vnfs0 root netem delay {DELAY} &&"
        f" ip netns exec nfssrv tc qdisc add dev vnfs1 root netem delay {DELAY}"
    )


def tcp_connect_ms(vm: Machine) -> float:
    return float(vm.sh(RTT, timeout=120).out.strip())


def delta(before: Counter[str], after: Counter[str]) -> Counter[str]:
    return Counter({k: after[k] - before[k] for k in after if after[k] - before[k] > 0})


def timed(vm: Machine, cmd: str) -> tuple[float, Counter[str]]:
    """Seconds `cmd` took in the guest (its clock) and the NFS operations meanwhile."""
    out = vm.sh(
        f"cat /proc/self/mountstats; echo {MARK}; s=$(date +%s%N); {cmd} >/dev/null;"
        f" rc=$?; e=$(date +%s%N); echo {MARK}; cat /proc/self/mountstats;"
        " echo; echo $rc $(( e - s ))",
        timeout=900,
    ).out
    before, _, rest = out.partition(MARK)
    _, _, rest = rest.partition(MARK)
    after, _, tail = rest.rpartition("\n\n")
    rc, ns = tail.split()
    if rc != "0":
        raise RuntimeError(f"{cmd!r} failed in the guest (exit {rc})")
    return int(ns) / 1e9, delta(nfs_ops_of(before), nfs_ops_of(after))


def docker_run(service: str) -> str:
    return (
        f"docker run -d --name {service} --network none --label convox.app=bench"
        f" --label convox.service={service}"
        f" -v /volumes/{RACK}-bench/{service}/data:/data {IMAGE_TAG} sleep 1000000"
    )


DAEMON_JSON = """python3 -c '
import json, sys
path = "/etc/docker/daemon.json"
with open(path) as f:
    doc = json.load(f)
doc["authorization-plugins"] = ["volagent"] if sys.argv[1] == "on" else []
with open(path, "w") as f:
    json.dump(doc, f)' """


def guard(vm: Machine, on: bool) -> None:
    """The guard in dockerd's config (a reload applies authorization-plugins); volagent runs
    with it, and is stopped for Docker alone (it would otherwise react to the events)."""
    if on:
        vm.sh("systemctl start volagent", timeout=300)
        wait_mount_state(vm, "mounted", timeout=300)
        vm.sh(DAEMON_JSON + "on && systemctl reload docker")
    else:
        vm.sh(DAEMON_JSON + "off && systemctl reload docker && systemctl stop volagent")
    time.sleep(2)


GUARD_METRICS = """python3 -c '
import socket
s = socket.socket(socket.AF_UNIX)
s.connect("/run/volagent/volagent.sock")
s.sendall(b"GET /metrics HTTP/1.0\\r\\nHost: volagent\\r\\n\\r\\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
for line in data.decode().splitlines():
    if line.startswith("volagent_guard_decision_seconds_"):
        print(line)'"""


def guard_decisions(vm: Machine) -> tuple[float, float]:
    """The guard's decisions so far: seconds spent deciding, and how many (its metrics)."""
    found = dict(line.split() for line in vm.sh(GUARD_METRICS).out.splitlines())
    return (
        float(found["volagent_guard_decision_seconds_sum"]),
        float(found["volagent_guard_decision_seconds_count"]),
    )


def guard_allowed(vm: Machine) -> int:
    return int(status(vm)[1].get("guard", {}).get("allowed", 0))


def run_bench(vm: Machine) -> dict[str, float]:
    plain_ms = tcp_connect_ms(vm)
    add_delay(vm)
    delayed_ms = tcp_connect_ms(vm)
    print(
        f"  netem {DELAY} on each end of the veth: TCP connect to the server {delayed_ms:.2f} ms"
        f" median (without it {plain_ms:.2f} ms)"
    )
    # volagent's own traffic while nothing happens (the health probe and its canary)
    idle_start = timed(vm, f"sleep {IDLE_S}")[1]
    idle_rate = sum(idle_start.values()) / IDLE_S
    seconds: dict[str, list[float]] = {"alone": [], "guarded": []}
    ops: dict[str, list[Counter[str]]] = {"alone": [], "guarded": []}
    deciding: list[tuple[float, float]] = []
    n = 0
    for block in range(BLOCKS):
        order = ["alone", "guarded"] if block % 2 == 0 else ["guarded", "alone"]
        for condition in order:
            guard(vm, on=condition == "guarded")
            # not counted: the first run after volagent's start loads its guard's code
            warm = f"warm-{condition}-{block}"
            vm.sh(f"mkdir -p /volumes/{RACK}-bench/{warm}/data")
            timed(vm, docker_run(warm))
            vm.sh(f"docker rm -f {warm}", timeout=300)
            allowed = guard_allowed(vm) if condition == "guarded" else 0
            for _ in range(PER_BLOCK):
                n += 1
                service = f"{condition[0]}{n}"
                if condition == "alone":
                    vm.sh(f"mkdir -p /volumes/{RACK}-bench/{service}/data")
                if condition == "guarded":
                    spent, decided = guard_decisions(vm)
                took, counted = timed(vm, docker_run(service))
                if condition == "guarded":
                    spent_after, decided_after = guard_decisions(vm)
                    deciding.append((spent_after - spent, decided_after - decided))
                seconds[condition].append(took)
                ops[condition].append(counted)
                # not timed: the next run starts from the same number of containers
                vm.sh(f"docker rm -f {service}", timeout=300)
                if condition == "alone":
                    active = vm.sh("systemctl is-active volagent", check=False).out.strip()
                    if active != "inactive":
                        raise RuntimeError(f"Docker alone asked the guard (volagent {active})")
            if condition == "guarded" and guard_allowed(vm) <= allowed:
                raise RuntimeError("the guarded runs did not pass through the guard")
        print(f"  block {block + 1}/{BLOCKS} done", flush=True)
    guard(vm, on=True)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    ratio = med["guarded"] / med["alone"]
    runs = len(seconds["alone"])
    print(
        f"guarded docker run (create + start, one volume) against Docker alone, NFSv4.1 over"
        f" the veth with netem {DELAY} each way, {runs} runs each in {BLOCKS} blocks:"
    )
    for k in ("alone", "guarded"):
        listed = ", ".join(f"{s:.2f}" for s in seconds[k])
        print(f"  {k:<8} median {med[k]:6.2f} s  ({listed})")
    print(f"  ratio guarded/alone {ratio:.2f} (target <= 1.1; from {runs}+{runs} runs)")
    decide_s = statistics.median(d[0] for d in deciding)
    calls = statistics.median(d[1] for d in deciding)
    print(
        f"  the guard's own decisions per guarded run: median {decide_s:.2f} s over {calls:g}"
        f" calls from dockerd ({decide_s / med['guarded']:.0%} of the guarded median)"
    )
    totals = {k: [sum(c.values()) for c in v] for k, v in ops.items()}
    probe_share = idle_rate * med["guarded"]
    print("NFS operations per docker run (mountstats deltas; median of the runs):")
    for k in ("alone", "guarded"):
        names = sorted({name for c in ops[k] for name in c})
        per_op = {name: statistics.median([c[name] for c in ops[k]]) for name in names}
        shown = ", ".join(
            f"{name} {v:g}" for name, v in sorted(per_op.items(), key=lambda x: -x[1])
        )
        print(f"  {k:<8} {statistics.median(totals[k]):5g} total ({shown or 'none'})")
    idle = ", ".join(f"{name} {v}" for name, v in idle_start.most_common())
    print(
        f"  volagent while idle: {idle_rate:.2f} ops/s ({idle_start.total()} in {IDLE_S} s:"
        f" {idle}), so about {probe_share:.0f} of a guarded run's ops are not the create's"
    )
    own = [t - idle_rate * d for t, d in zip(totals["guarded"], seconds["guarded"], strict=True)]
    print(
        f"  per guarded create, volagent's idle traffic taken out: median"
        f" {statistics.median(own):.0f} ops, against Docker alone's"
        f" {statistics.median(totals['alone']):g}"
    )
    return {"ratio": ratio, "runs": runs, "idle_rate": idle_rate}


STEPS = (
    "namespace owner",
    "create walk",
    "trash check",
    "registry claim",
    "usage record",
    "registry update",
    "start claim",
    "start walk",
    "check after start",
)
# what the guard does before it answers dockerd
CRITICAL = ("namespace owner", "create walk", "trash check", "registry claim")
TIMED_RUNS = 10  # of each arrangement of the claim and the create walk, timed
REGISTRY = ("registry claim", "registry update", "start claim")
CASES = {
    "existing": "an existing directory three levels below the namespace",
    "in-use": "an existing directory three levels below the namespace, in use on this host",
    "new": "a new directory",
}
# renewals of the client's NFSv4.1 lease: the client's own, whoever runs
LEASE_OPS = {"SEQUENCE"}


def steps_bench(vm: Machine) -> dict[str, dict[str, float]]:
    """The steps of a guarded `docker run`, for an existing and a new directory, each the
    call volagent's worker makes, run by vm_steps.py in the guest with the daemon stopped
    (so no idle traffic is in the count at all)."""
    script = base64.b64encode(Path(__file__).with_name("vm_steps.py").read_bytes()).decode()
    vm.sh(f"systemctl stop volagent && echo {script} | base64 -d > /tmp/vm_steps.py", timeout=300)
    medians: dict[str, dict[str, float]] = {}
    usage_dirs = f"ls /volumes/.volagent/usage/{RACK}-bench 2>/dev/null | wc -l"
    try:
        for case, shown in CASES.items():
            out = vm.sh(f"/opt/volagent/bin/python /tmp/vm_steps.py {case} {STEP_RUNS}", 900)
            runs = [json.loads(line) for line in out.out.splitlines() if line.startswith("{")]
            per_step = {
                step: [sum(n for op, n in r[step].items() if op not in LEASE_OPS) for r in runs]
                for step in STEPS
            }
            whole = [sum(per_step[step][i] for step in STEPS) for i in range(len(runs))]
            before_answer = [sum(per_step[step][i] for step in CRITICAL) for i in range(len(runs))]
            critical = [
                one_after_another(r, before) for r, before in zip(runs, before_answer, strict=True)
            ]
            registry = [sum(per_step[step][i] for step in REGISTRY) for i in range(len(runs))]
            # a part of the claim: the 0.2 hosts' usage records of the namespace looked for
            fallback = [
                sum(n for op, n in r.get("0.2 fallback", {}).items() if op not in LEASE_OPS)
                for r in runs
            ]
            med = {step: statistics.median(v) for step, v in per_step.items()}
            by_op: Counter[str] = Counter()
            for r in runs:
                for step in STEPS:
                    by_op.update({op: n for op, n in r[step].items() if op not in LEASE_OPS})
            ops = ", ".join(f"{op} {n / len(runs):g}" for op, n in by_op.most_common())
            # the claim's unlock is among those before the create's answer: it runs beside
            # the walk's look in the trash, after the claim's own answer
            overlaps = OVERLAPS if any(SPLITS[0] in r for r in runs) else "nothing overlaps"
            print(
                f"  per guarded create of {shown}, idle traffic taken out: median"
                f" {statistics.median(whole):g} ops for the whole run,"
                f" {statistics.median(before_answer):g} before the create is answered,"
                f" {statistics.median(critical):g} of them on its critical path (one after"
                f" another; {overlaps}) ({len(runs)} runs)"
            )
            print("    " + ", ".join(f"{step} {med[step]:g}" for step in STEPS))
            print(
                f"    the registry's: median {statistics.median(registry):g} ops per guarded"
                f" create (its claim {med['registry claim']:g}, the first of this run's"
                f" process {per_step['registry claim'][0]:g}, of which"
                f" {statistics.median(fallback):g} look for 0.2 hosts' usage records; the"
                f" keeper's update {med['registry update']:g}, the start's claim"
                f" {med['start claim']:g}); the namespace's owner read (and written) once"
                f" per namespace and mount: {per_step['namespace owner'][0]:g} in the first"
                f" run; the namespace's services"
                f" with usage records: {vm.sh(usage_dirs).out.strip()}"
            )
            print(f"    by operation, per run: {ops}")
            for step in (*STEPS, "0.2 fallback", *SPLITS, LOCKED):
                of_step: Counter[str] = Counter()
                for r in runs:
                    of_step.update(
                        {op: n for op, n in r.get(step, {}).items() if op not in LEASE_OPS}
                    )
                if of_step:
                    shown_ops = ", ".join(
                        f"{op} {n / len(runs):g}" for op, n in of_step.most_common()
                    )
                    print(f"      {step}: {shown_ops}")
            medians[case] = {**med, "whole": statistics.median(whole)}
            if case != "in-use" and any(SPLITS[0] in r for r in runs):
                timed_decisions(vm, case)
    finally:
        vm.sh("systemctl start volagent", timeout=300)
        wait_mount_state(vm, "mounted", timeout=300)
    return medians


# since 0.6, the parts of two steps that overlap in the daemon (vm_steps.py)
SPLITS = ("claim to its answer", "walk ahead")
LOCKED = "claim to its lock"  # since 0.7 the look ahead begins there
OVERLAPS = (
    "the opens of what exists go on beside the claim (since 0.7 from its lock on), its unlock"
    " beside the look in the trash"
)


def one_after_another(run: dict[str, dict[str, int]], before_answer: int) -> int:
    """The operations of a run's create one after another: the claim up to its answer or the
    look ahead at the path (what exists of it opened), whichever is longer, then the rest
    of the walk (its look in the trash, what it makes). Since 0.7 the look ahead begins at
    the claim's lock: the claim up to its lock, then the rest of it or the look ahead. All
    of them before 0.6."""
    if not all(part in run for part in SPLITS):
        return before_answer

    def ops(part: dict[str, int]) -> int:
        return sum(n for op, n in part.items() if op not in LEASE_OPS)

    claim, ahead = ops(run[SPLITS[0]]), ops(run[SPLITS[1]])
    locked = ops(run.get(LOCKED, {}))
    walk = ops(run["create walk"]) + ops(run["trash check"])
    return ops(run["namespace owner"]) + locked + max(claim - locked, ahead) + walk - ahead


def timed_decisions(vm: Machine, case: str) -> None:
    """The claim and the create walk timed in the guest, one after the other (as up to 0.5)
    and overlapping (as the daemon does since 0.6), taking turns."""
    cmd = f"/opt/volagent/bin/python /tmp/vm_steps.py timed {case} {TIMED_RUNS}"
    out = vm.sh(cmd, 900).out
    times = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    apart = statistics.median(times["one after the other"]) * 1000
    beside = statistics.median(times["overlapping"]) * 1000
    print(
        f"    the claim and the create walk, timed ({TIMED_RUNS} runs each, in the guest, at"
        f" the emulated delay): one after the other {apart:.1f} ms, overlapping as the daemon"
        f" does {beside:.1f} ms (ratio {beside / apart:.2f})"
    )


def probe_budget(vm: Machine) -> tuple[float, float]:
    out = vm.sh(
        "/opt/volagent/bin/python -c 'from volagent import config;"
        ' c = config.load("/etc/volagent/volagent.toml");'
        " print(c.mount.probe_interval_s, c.mount.probe_timeout_s)'"
    ).out.split()
    return float(out[0]), float(out[1])


def event_after(vm: Machine, event: str, after_ns: int) -> float | None:
    """The time (guest clock, s) of volagent's first `event` log entry after `after_ns`."""
    since = after_ns // 1_000_000_000 - 1
    out = vm.sh(f"journalctl -u volagent -o cat --no-pager --since @{since}", timeout=120).out
    for line in out.splitlines():
        if f'"event": "{event}"' not in line:
            continue
        stamp = json.loads(line)["timestamp"]
        at = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        if at * 1e9 >= after_ns:
            return at
    return None


def guest_now_ns(vm: Machine, then: str) -> int:
    """Runs `then` in the guest right after reading its clock; returns that reading."""
    return int(vm.sh(f"date +%s%N; {then}").out.split()[0])


def hang_bench(vm: Machine) -> dict[str, list[float]]:
    interval, timeout = probe_budget(vm)
    noticed: list[float] = []
    back: list[float] = []
    for _ in range(HANG_ROUNDS):
        wait_mount_state(vm, "mounted", timeout=600)
        # a random phase of the probe cycle, as a real hang would come
        time.sleep(random.uniform(0, interval))  # noqa: S311 (a phase, not a secret)
        dropped = guest_now_ns(vm, " && ".join(f"iptables -I {r}" for r in DROP))
        at = wait_until(
            "mount.stalled", functools.partial(event_after, vm, "mount.stalled", dropped), 600, 0.5
        )
        noticed.append(at - dropped / 1e9)
        flowing = guest_now_ns(vm, " && ".join(f"iptables -D {r}" for r in DROP))
        at = wait_until(
            "mount.healthy", functools.partial(event_after, vm, "mount.healthy", flowing), 900, 0.5
        )
        back.append(at - flowing / 1e9)
        print(
            f"  round {len(noticed)}: stalled {noticed[-1]:.1f} s after the drop,"
            f" mounted {back[-1]:.1f} s after packets flowed again",
            flush=True,
        )
    budget = interval + timeout
    print(
        f"hang noticed (packets to and from 2049 dropped, {HANG_ROUNDS} rounds; probe interval"
        f" {interval:g} s, timeout {timeout:g} s, so at most {budget:g} s):"
    )
    print(
        f"  stalled after median {statistics.median(noticed):.1f} s, max {max(noticed):.1f} s"
        f" (max/budget {max(noticed) / budget:.2f}; " + ", ".join(f"{s:.1f}" for s in noticed) + ")"
    )
    print(
        f"  mounted again after median {statistics.median(back):.1f} s, max {max(back):.1f} s"
        " after packets flowed again (" + ", ".join(f"{s:.1f}" for s in back) + ")"
    )
    return {"noticed": noticed, "back": back}


def main() -> None:
    image = os.environ.get("VOLAGENT_VM_IMAGE")
    if not image or os.geteuid() != 0:
        print("skipped: boots the test virtual machine as root; run `make bench-vm`")
        return
    cache = Path(os.environ.get("VOLAGENT_TEST_CACHE", "/var/cache/volagent-test"))
    started = time.monotonic()
    snap = snapshot.ensure(Image(Path(image)), cache)
    print(f"snapshot ready after {time.monotonic() - started:.1f} s")
    with resumed(snap, console=False) as vm:
        print("NFS server in a second network namespace, over a veth pair:")
        nfs_server_in_netns(vm)
        if BLOCKS > 0:
            run_bench(vm)
        else:
            add_delay(vm)
        print(
            f"the steps of a guarded docker run (NFS operations, netem {DELAY} each way;"
            " each step as volagent's worker calls it, the daemon stopped meanwhile):"
        )
        steps_bench(vm)
        if HANG_ROUNDS > 0:
            if mount_state(vm) != "mounted":
                wait_mount_state(vm, "mounted", timeout=600)
            hang_bench(vm)
