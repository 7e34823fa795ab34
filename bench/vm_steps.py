"""The steps of a guarded `docker run` on the shared filesystem, one by one, counted in NFS
operations: run inside the test virtual machine by vm_bench.py with the installed volagent's
Python (`/opt/volagent/bin/python vm_steps.py CASE RUNS`), while the daemon is stopped, so that
nothing else of volagent talks to the server and every operation counted is the step's.

Each step is the call the daemon's worker makes, in the daemon's order: the registry claim
before the create is allowed (`registry_claim.claim` under the namespace's lock; in 0.3 first
the 0.2 hosts' usage records of the namespace, `binds.legacy_binds`), the trash check alone
(to tell it from the create walk that holds it), the create walk with its trash check
(`trashcheck.prepare_path`; since 0.5 without gc's mark, which the claim's entry stands for
while every host's gc reads the registry, as on this bench's rack), the usage record
(`recorder.write_usage`; since 0.5 none: the first record of such a use comes at the first
refresh), the registry keeper's update once Docker has answered the create
(0.3.0's `registry_claim.set_own`, the entry getting the container's id; since 0.3.1 none:
the claim's entry holds the path), the start's claim (0.3.0's a transaction that writes
nothing; since 0.3.1 none: the path is held), the start walk (the same call as the create
walk; given the create walk's record where the installed version takes one) and the check
after the start (`mount_check.check_container`).
Since 0.3.3 the namespace's owner is read (`owners.owner_of`, once per namespace in the
process, as the daemon caches it) before the create is allowed, and in 0.3.3 the start's claim
of a path registered a moment ago looks for 0.2 hosts' binds (`binds.legacy_binds`) though it
makes no transaction; since 0.4 no claim looks for them. An installed version without the
registry counts nothing for its two steps. Cases: `new` directory, `existing` directory used
before (another host's record of it, its namespace last changed two days ago), `in-use` (the
same, and this host records its use already: a container of the service runs here, so no usage
record is due, and its entry in the registry holds the path: the claim writes nothing, and
since 0.3.1 makes no transaction). Prints one JSON line per run: the operations of each step,
by NFS operation.

Standard library and the installed volagent only: the guest has nothing else.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
import threading
import time
from collections import Counter
from typing import Any

from volagent import safedir
from volagent.values import Owner
from volagent.volumes import mount_check, trashcheck

try:  # the usage records' module, in a package of its own since 0.3.1
    from volagent.rack.usage import recorder
except ImportError:  # an earlier install: the module itself
    from volagent.rack import usage as recorder  # type: ignore[no-redef]

MOUNT_POINT = "/volumes"
RACK = "vmrack"
HOST = "vmhost"
OTHER = "host-old"  # another host of the rack, which used the directories before
TWO_DAYS_S = 2 * 86400
REGISTRY_TIMEOUT_S = 10.0 * 0.8  # the claim's own deadline: 80% of [directories] timeout_s
FORGET_AFTER_S = 900.0  # [health] forget_after_s's default

try:  # the registry came with 0.3: on an earlier install its steps count nothing
    from volagent.rack import registry_claim
    from volagent.rack.registry import Entry

    # since 0.3.1 this host's entries hold paths, not containers: a claim of a path it holds
    # makes no transaction, and a create answered by Docker needs no update of its entry
    BY_PATH = "live_refs" not in inspect.signature(registry_claim.set_own).parameters
    # 0.3.0 and before: the keeper removed only its entries older than the moment it looked
    SINCE = "since" in inspect.signature(registry_claim.set_own).parameters
    # since 0.3.2 the daemon keeps the registry's files open between its transactions on one
    # mount: the first claim of a namespace opens them, the next ones do not
    KEPT: dict[str, Any] = (
        {"epoch": 1} if "epoch" in inspect.signature(registry_claim.claim).parameters else {}
    )
    # since 0.6 the claim answers once its entries are in place (its unlock behind the answer)
    OVERLAP = "answered" in inspect.signature(registry_claim.claim).parameters
except ImportError:
    registry_claim = None  # type: ignore[assignment]
    BY_PATH = False
    SINCE = False
    KEPT = {}
    OVERLAP = False
try:  # 0.3's fallback for hosts on 0.2, gone in 0.4: their binds read from usage records
    from volagent.rack import binds

    # the daemon keeps one: hosts known to take part are not read again for ten minutes
    PARTICIPANTS: Any = binds.Participants()
    LEGACY_PARAMS = inspect.signature(binds.legacy_binds).parameters
except ImportError:
    binds = None  # type: ignore[assignment]
    LEGACY_PARAMS = {}
# in 0.3.3 a held claim still looked for 0.2 hosts' binds until its paths settled: the start
# that follows a create at once paid that look
LOOK_AT_START = binds is not None and hasattr(binds, "SETTLE_S")
try:  # since 0.3.3 each namespace's owner is read (and written at its first use) once per
    # mount of the filesystem, before a create is allowed
    from volagent.rack import owners
except ImportError:
    owners = None  # type: ignore[assignment]
OWNERS_READ: set[str] = set()  # the daemon's cache: namespaces whose owner it knows
# since 0.6 a create opens what exists of its path while its claim is under way; since 0.7
# only once the claim holds its namespace's lock
AHEAD = hasattr(trashcheck, "open_ahead")
AFTER_LOCK = registry_claim is not None and (
    "taken" in inspect.signature(registry_claim.claim).parameters
)


def set_own(dev: int, ns: str, live: list[Any], refs: set[str], since: float) -> Any:
    """The keeper's transaction, in the installed version's terms."""
    how: dict[str, Any] = {} if BY_PATH else {"live_refs": refs}
    if SINCE:
        how["since"] = since
    return registry_claim.set_own(
        MOUNT_POINT,
        dev,
        ns,
        host=HOST,
        live=live,
        deadline=time.monotonic() + REGISTRY_TIMEOUT_S,
        **how,
        **KEPT,
    )


def nfs_ops_of(mountstats: str, mount_point: str = MOUNT_POINT) -> Counter[str]:
    """Operations per NFS procedure of the mount at `mount_point`, from the text of
    /proc/self/mountstats (the host's bench parses what it read in the guest with this)."""
    ops: Counter[str] = Counter()
    inside = per_op = False
    for line in mountstats.splitlines():
        if line.startswith("device "):
            inside = f" mounted on {mount_point} with fstype nfs" in line
            per_op = False
        elif inside and line.strip() == "per-op statistics":
            per_op = True
        elif inside and per_op and (m := re.match(r"\s+([A-Z_0-9]+): (\d+) ", line)):
            ops[m.group(1)] += int(m.group(2))
    return ops


def nfs_ops() -> Counter[str]:
    with open("/proc/self/mountstats", encoding="utf-8") as f:
        return nfs_ops_of(f.read())


def less(after: Counter[str], before: Counter[str]) -> Counter[str]:
    return Counter({k: after[k] - before[k] for k in after if after[k] > before[k]})


def counted(step: Any) -> tuple[Counter[str], Any]:
    before = nfs_ops()
    result = step()
    return less(nfs_ops(), before), result


def setup(case: str, service: str) -> tuple[str, ...]:
    """The directory of the case, and the path parts volagent walks."""
    ns = f"{MOUNT_POINT}/{RACK}-bench"
    if case in ("existing", "in-use"):
        below: tuple[str, ...] = ("a", "b", "c")
        # used before on the rack: its directories made long ago (the namespace's last
        # changed two days ago) and another host's usage record of it; read once since,
        # so the client knows the path (as after an earlier container of the service here)
        path = "/".join((ns, service, *below))
        records = f"{MOUNT_POINT}/.volagent/usage/{RACK}-bench/{service}"
        os.makedirs(path)
        os.makedirs(records, exist_ok=True)
        with open(f"{records}/host-old.json", "w", encoding="utf-8") as f:
            # a host of the rack's release: since the registry, its record says it takes part
            # (so 0.3's look for 0.2 hosts reads it once, then knows it)
            key = (f"{RACK}-bench", service)
            other = {} if registry_claim is None else recorder.usage_record(OTHER, key, ["c"], 0)
            # a typed record since the codec, a dict in the releases before
            f.write(json.dumps(other.encode() if hasattr(other, "encode") else other))
        then = time.time() - TWO_DAYS_S
        for d in (ns, f"{ns}/{service}", f"{records}/host-old.json"):
            os.utime(d, (then, then))
        os.listdir(path)
    else:
        below = ("data",)
        os.makedirs(ns, exist_ok=True)
        os.listdir(ns)
    return (f"{RACK}-bench", service, *below)


def one_run(case: str, service: str) -> dict[str, Any]:
    parts = setup(case, service)
    owner = Owner(1000, 1000)
    dev = os.stat(MOUNT_POINT).st_dev
    host_path = "/".join((MOUNT_POINT, *parts))
    steps: dict[str, Counter[str]] = {}
    # since 0.6, the parts of two steps that overlap in the daemon: the claim up to its answer,
    # and the look ahead at the path (what exists of it opened) beside the claim (since 0.7
    # from the claim's lock on: the claim up to its lock counted apart)
    splits: dict[str, Counter[str]] = {}

    def trash_alone() -> None:
        root = safedir.open_mount_point(MOUNT_POINT, dev)
        try:
            trashcheck.refuse_if_trashed(MOUNT_POINT, root, parts)
        finally:
            os.close(root)

    params = inspect.signature(trashcheck.prepare_path).parameters
    create_args: dict[str, Any] = {}
    if case == "in-use" and "recorded_at" in params:
        # this host has recorded the directory's use lately (a container of the service
        # runs here, as during a rolling deploy)
        create_args["recorded_at"] = time.time() - 60
    steps["namespace owner"] = Counter()
    if owners is not None and parts[0] not in OWNERS_READ:
        OWNERS_READ.add(parts[0])
        steps["namespace owner"], _ = counted(
            lambda: owners.owner_of(MOUNT_POINT, dev, parts[0], rack=RACK, app="bench", host=HOST)
        )
    ns, relative = parts[0], "/".join(parts)
    running = f"running-{service}"  # in-use: the container of the service that runs here
    steps["registry claim"] = steps["registry update"] = steps["start claim"] = Counter()
    steps["0.2 fallback"] = Counter()
    if registry_claim is not None:
        if case == "in-use":  # not counted: this host's entry of the running container
            set_own(dev, ns, [Entry(HOST, running, "", relative, time.time())], {running}, 0.0)

        # as the daemon asks: the namespace's own records and those of the bind's directory
        where = {"directories": {service}} if "directories" in LEGACY_PARAMS else {}

        def claim(ref: str = f"request:{service}") -> Any:
            deadline = time.monotonic() + REGISTRY_TIMEOUT_S
            fallback: dict[str, Any] = {}
            if OVERLAP:  # where the daemon has its answer: the operations so far
                fallback["answered"] = lambda _result: answered.append(nfs_ops())
            if AFTER_LOCK:  # where the daemon's look ahead begins
                fallback["taken"] = lambda: locked.append(nfs_ops())
            if binds is not None:
                # counted apart too (a part of the claim, not a step of its own): the 0.2
                # hosts' usage records of the namespace, looked for before the lock is taken
                looked, (legacy, _) = counted(
                    lambda: binds.legacy_binds(MOUNT_POINT, dev, ns, HOST, PARTICIPANTS, **where)
                )
                if ref.startswith("request:"):  # the create's; the start's is in its claim
                    steps["0.2 fallback"] = looked
                fallback["legacy"] = legacy
            wanted = [Entry(HOST, ref, "", relative, time.time())]
            return registry_claim.claim(
                MOUNT_POINT,
                dev,
                ns,
                host=HOST,
                wanted=wanted,
                **fallback,
                expire_after_s=FORGET_AFTER_S,
                deadline=deadline,
                **KEPT,
            )

        answered: list[Counter[str]] = []
        locked: list[Counter[str]] = []
        if case == "in-use" and BY_PATH:
            pass  # the daemon's claim of a path its entries hold: no transaction (_holds)
        else:
            before_claim = nfs_ops()
            steps["registry claim"], claimed = counted(claim)
            if answered:
                splits["claim to its answer"] = less(answered[0], before_claim)
            if locked:
                splits["claim to its lock"] = less(locked[0], before_claim)
            if claimed.clashes:
                raise SystemExit(f"the bench's claim clashed: {claimed.clashes}")
    if "mark" in params and registry_claim is not None:
        # since 0.5 a create whose binds the claim holds leaves gc's mark out, every host
        # sharing the filesystem running a gc that reads the registry (this bench's rack)
        create_args["mark"] = False
    steps["trash check"], _ = counted(trash_alone)
    if AHEAD and registry_claim is not None:
        # since 0.6 what exists of the path is opened while the claim is under way, and the
        # walk after the claim takes it
        splits["walk ahead"], create_args["ahead"] = counted(
            lambda: trashcheck.open_ahead(MOUNT_POINT, parts, dev)
        )
    create, walked = counted(
        lambda: trashcheck.prepare_path(MOUNT_POINT, parts, owner, 0o750, dev, **create_args)
    )
    steps["create walk"] = create + splits.get("walk ahead", Counter()) - steps["trash check"]
    key = (parts[0], parts[1])
    # the bind paths went with the fallback for 0.2 hosts (0.4)
    listed = [host_path] if "binds" in inspect.signature(recorder.usage_record).parameters else []
    record = recorder.usage_record(HOST, key, [service], time.time(), *listed)
    steps["usage record"] = Counter()
    # since 0.5 the first record of a use the registry holds waits for the first refresh,
    # every host's gc counting the claim's entry meanwhile (this bench's rack): not a step
    deferred = hasattr(recorder, "covered") and registry_claim is not None
    if case != "in-use" and not deferred:  # in use: not due, this host's record is current
        steps["usage record"], _ = counted(
            lambda: recorder.write_usage(MOUNT_POINT, dev, HOST, [(key, record)])
        )
    if registry_claim is not None and not BY_PATH:
        # the keeper of 0.3.0, once Docker has answered the create: the entry names the
        # container (since 0.3.1 the claim's entry holds the path: the keeper writes nothing)
        since = time.time()
        live = [Entry(HOST, f"container-{service}", "", relative, since)]
        refs = {f"container-{service}", running}
        steps["registry update"], _ = counted(lambda: set_own(dev, ns, live, refs, since))
    if registry_claim is not None and not BY_PATH:
        # the start's claim (the guard claims at every start it judges): 0.3.0's writes
        # nothing but takes the lock; since 0.3.1 the path is held by this host's entry and
        # the claim makes no transaction
        steps["start claim"], _ = counted(lambda: claim(f"container-{service}"))
    elif LOOK_AT_START and case != "in-use":
        # since 0.3.3 the held claim of a path registered a moment ago looks for 0.2 hosts'
        # binds all the same (in use: it settled long ago, nothing is read)
        steps["start claim"], _ = counted(
            lambda: binds.legacy_binds(MOUNT_POINT, dev, ns, HOST, PARTICIPANTS, **where)
        )
    again: dict[str, Any] = {}
    if "known" in params:
        again["known"] = walked.identity
    if "held" in params and registry_claim is not None:
        # since 0.7 the start of a path this host's entries hold looks at what the create
        # walk recorded, from the client's caches
        again["held"] = True
    steps["start walk"], _ = counted(
        lambda: trashcheck.prepare_path(MOUNT_POINT, parts, owner, 0o750, dev, **again)
    )
    steps["check after start"], _ = counted(
        lambda: mount_check.check_container(os.getpid(), MOUNT_POINT, [(host_path, "/data")])
    )
    return {step: dict(ops) for step, ops in {**steps, **splits}.items()}


def decided_in(case: str, service: str, overlap: bool) -> float:
    """Seconds from the create's claim to the end of its walk (where the guard answers): the
    two one after the other, the claim's unlock before the walk (as up to 0.5), or what
    exists of the path opened beside the claim and the walk after its answer, the unlock
    behind the answer (as the daemon does since 0.6; the opens from the claim's lock on,
    since 0.7)."""
    parts = setup(case, service)
    dev = os.stat(MOUNT_POINT).st_dev
    wanted = [Entry(HOST, f"request:{service}", "", "/".join(parts), time.time())]
    answered = threading.Event()
    locked = threading.Event()
    after_lock = {"taken": locked.set} if AFTER_LOCK else {}

    def claim() -> None:
        registry_claim.claim(
            MOUNT_POINT,
            dev,
            parts[0],
            host=HOST,
            wanted=wanted,
            expire_after_s=FORGET_AFTER_S,
            deadline=time.monotonic() + REGISTRY_TIMEOUT_S,
            answered=lambda _result: answered.set(),
            **after_lock,
            **KEPT,
        )

    def walk(ahead: Any = None) -> None:
        trashcheck.prepare_path(
            MOUNT_POINT, parts, Owner(1000, 1000), 0o750, dev, mark=False, ahead=ahead
        )

    start = time.perf_counter()
    if not overlap:
        claim()
        walk()
        return time.perf_counter() - start
    thread = threading.Thread(target=claim)
    thread.start()
    if AFTER_LOCK and not locked.wait(REGISTRY_TIMEOUT_S):
        raise SystemExit("the bench's claim did not take its lock")
    opened = trashcheck.open_ahead(MOUNT_POINT, parts, dev)
    if not answered.wait(REGISTRY_TIMEOUT_S):
        raise SystemExit("the bench's claim did not answer")
    walk(opened)
    took = time.perf_counter() - start
    thread.join()
    return took


def main() -> None:
    if sys.argv[1] == "timed":  # timed CASE RUNS: the two arrangements, taking turns
        case, runs = sys.argv[2], int(sys.argv[3])
        times: dict[str, list[float]] = {"one after the other": [], "overlapping": []}
        for i in range(runs):
            for k, overlap in enumerate((i % 2 == 0, i % 2 != 0)):
                shown = "overlapping" if overlap else "one after the other"
                service = f"timed-{case[0]}{i}{k}-{os.getpid()}"
                times[shown].append(decided_in(case, service, overlap))
        print(json.dumps(times), flush=True)
        return
    case, runs = sys.argv[1], int(sys.argv[2])
    for i in range(runs):
        print(json.dumps(one_run(case, f"step-{case[0]}{i}-{os.getpid()}")), flush=True)


if __name__ == "__main__":
    main()
