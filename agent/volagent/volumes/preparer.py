"""From a container (inspected, or a create request the guard holds) to ready directories.

The Preparer applies the namespace rules, runs the safe directory walk through the timed
worker, and records each volume's state: ready, pending (the mount is not healthy yet),
late (Docker made the directory first), violation or failed. The disk tells the truth about
`late`: a leaf that exists as root:root 0755 when another owner or mode was asked for, under
a container that had already started, was made by Docker, not by volagent.

Each walk's record of the path (device and inode of every component) is kept by host path,
so a start's walk compares against it instead of judging from scratch (volumes/trashcheck.py).
A create the registry is asked about opens what exists of its paths while the claim is under
way (`_look_ahead`), and its walks after the claim take those descriptors.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from volagent import log, nesting
from volagent.errors import FilesystemHung, MountUnhealthy, NamespaceViolation
from volagent.rack import owners, quotas, records
from volagent.rack.registry_task import HoldingKey, Registry, request_ref
from volagent.rack.usage.recorder import key_of
from volagent.state import AgentState, ContainerRecord, VolumeRecord
from volagent.vocabulary import SETTLED_VOLUME_STATES, OnViolation, VolumeState, WhenUnhealthy
from volagent.volumes import directories, locate, mount_check, namespace, trashcheck
from volagent.worker import TimedWorker

UNRESOLVED = "unresolved"  # a Landing kind of the preparer's own: the lookup itself failed
DOCKER_MADE = (0, 0, 0o755)  # what Docker's own auto-create leaves behind
ZERO_TIME = "0001-01-01T00:00:00Z"
MAX_WALKED = 4096  # paths whose last walk is remembered for the next start
# A start only looks at a held path's directories (trashcheck.py) this soon after the walk
# that opened them: the kernel's NFS client keeps what that walk fetched for acdirmin (30 s
# by default) at least, so the look and Docker's bind of the path, moments later, are
# answered from that same state unless something on this host revalidates a directory of
# the path in between
LOOK_WITHIN_S = 10.0
MAX_OWNERS_KEPT = 4096  # namespaces whose recorded owner is remembered
# on top of the directory timeout, for the walk's queueing and the loop's own latency
PREPARE_GRACE_S = 1.0


@dataclass
class ContainerSpec:
    """The parts of a container volagent reads, from `docker inspect` or a create request."""

    id: str
    name: str
    labels: Mapping[str, str]
    env: Sequence[str]
    user: str
    host_config: Mapping[str, Any]
    started: bool = False
    # binds the container gets from elsewhere (VolumesFrom, local-driver volumes that are
    # binds): judged like its own, against its own namespace
    inherited: tuple[namespace.Bind, ...] = ()
    # every named volume it mounts, as Docker lists them (its own, VolumesFrom's, anonymous
    # ones): empty when not known, and then read from its own config
    volume_names: tuple[str, ...] = ()
    # the devices of the local-driver bind volumes it mounts (`type=none,o=bind`): Docker
    # binds each again at every start (filled by whoever looked the volumes up)
    volume_devices: tuple[str, ...] = ()
    # its bind sources outside the mount point as resolved at its last judgment: rule 7
    # for host paths judges other containers' binds against them (set by Preparer.judge)
    host_binds: tuple[nesting.HostBind, ...] = ()

    @classmethod
    def from_inspect(cls, data: Mapping[str, Any]) -> ContainerSpec:
        cfg = data.get("Config") or {}
        st = data.get("State") or {}
        started_at = st.get("StartedAt") or ZERO_TIME
        host_config = data.get("HostConfig") or {}
        own = {namespace.go_clean(b.host) for b in namespace.binds_of(host_config)}
        # Docker's own list of what it mounts: binds copied through VolumesFrom show here
        # and nowhere in HostConfig
        inherited = tuple(
            namespace.Bind(
                host=str(m.get("Source")),
                container=str(m.get("Destination") or ""),
                read_only=not m.get("RW", True),
            )
            for m in data.get("Mounts") or ()
            if isinstance(m, Mapping)
            and m.get("Type") == "bind"
            and isinstance(m.get("Source"), str)
            and namespace.go_clean(m["Source"]) not in own
        )
        volume_names = tuple(
            str(m["Name"])
            for m in data.get("Mounts") or ()
            if isinstance(m, Mapping) and m.get("Type") == "volume" and m.get("Name")
        )
        return cls(
            id=str(data.get("Id", "")),
            name=str(data.get("Name", "")).lstrip("/"),
            labels=cfg.get("Labels") or {},
            env=cfg.get("Env") or [],
            user=str(cfg.get("User") or ""),
            host_config=host_config,
            started=bool(st.get("Running")) or not started_at.startswith("0001-"),
            inherited=inherited,
            volume_names=volume_names,
        )

    @property
    def named_volumes(self) -> list[str]:
        """The named volumes it mounts: as Docker listed them, else from its own config."""
        return list(self.volume_names) or namespace.volume_names_of(self.host_config)

    @property
    def binds(self) -> list[namespace.Bind]:
        return [*namespace.binds_of(self.host_config), *self.inherited]


@dataclass
class Outcome:
    """What preparing one container's volumes came to, each volume beside its plan."""

    identity: namespace.Identity
    volumes: list[VolumeRecord]
    plans: list[namespace.Plan | NamespaceViolation]

    @property
    def violations(self) -> list[VolumeRecord]:
        return [v for v in self.volumes if v.state == VolumeState.VIOLATION]


@dataclass(frozen=True)
class Allowed:
    """A create or start let through: its volumes as prepared, the identity judged."""

    volumes: list[VolumeRecord]
    identity: namespace.Identity | None = None


# what refused a create or start: the namespace rules, the app's quota, the mount's health
# (`[guard] when_unhealthy`), a volume that could not be prepared, or this host's containers
# not listed yet (just after volagent started: rule 7 here has nothing to judge against)
RefusedBy = Literal["violations", "quota", "unhealthy", "failed", "unlisted"]


@dataclass(frozen=True)
class Refused:
    """A create or start refused, for the guard to phrase."""

    rule: RefusedBy
    outcome: Outcome
    volumes: list[VolumeRecord] = dataclasses.field(default_factory=list)  # those it is about
    text: str = ""  # a reason already worded (the quota's)


Recheck = Callable[[], Awaitable[bool]]
Reserve = Callable[[list[str]], None]
Release = Callable[[], None]


class Preparer:
    """Prepares container volumes; one preparation per container at a time."""

    def __init__(
        self, state: AgentState, worker: TimedWorker, registry: Registry | None = None
    ) -> None:
        self.state = state
        self.worker = worker
        # the rack-wide registry of binds; None: rule 7 is judged on this host alone
        self.registry = registry
        self.log = log.get("preparer")
        self._locks: dict[str, asyncio.Lock] = {}
        # host path: what its last complete walk found
        self._walked: OrderedDict[str, Walked] = OrderedDict()
        # (the filesystem's device, namespace): its recorded owner's rack and app
        self._owners: OrderedDict[tuple[int | None, str], tuple[str, str]] = OrderedDict()

    async def judge(self, spec: ContainerSpec) -> Outcome | None:
        """The namespace verdict for `spec`, every bind judged where it really lands: sources
        spelled outside the mount point are resolved on the host first (in the worker, with
        the directory timeout), recorded in `spec.host_binds` and, for a container naming
        an app, held to rule 7 for host paths. None when nothing of the container is on the
        shared filesystem and no rule refuses it."""
        cfg = self.state.config
        outside = sorted(
            {
                host
                for host in [*(b.host for b in spec.binds), *spec.volume_devices]
                if not namespace.touches_mount_point(cfg.mount_point, host)
                and namespace.is_text(host)
                and "\x00" not in host
            }
        )
        landings: dict[str, locate.Landing] = {}
        if outside:
            call = functools.partial(locate.locate_all, cfg.mount_point, outside)
            try:
                found = await self.worker.run(
                    call, cfg.directories.timeout_s, what="resolving bind sources"
                )
            except Exception as exc:  # a hung lookup, or one the kernel refused
                why = f"volagent could not resolve it on the host ({exc})"
                found = [locate.Landing(h, UNRESOLVED, why) for h in outside]
            landings = {land.source: land for land in found}
        # from here to the caller's reservation nothing awaits: two creates judged at once
        # see each other
        self._judge_host_paths(spec, landings)
        return self.outcome_of(spec, landings)

    async def decide_create(
        self, spec: ContainerSpec, key: bytes, reserve: Reserve, release: Release
    ) -> Allowed | Refused:
        """A create decided: judged, rule 7 here, the quota; its binds reserved (the registry's
        keeper keeps this host's entry from the claim until the create is answered); rule 7
        across the rack, the walk. Refused, or failing, after `reserve`: `release`. `key`:
        the create request's digest, named in the registry by its ref (made only then)."""
        listed = await self.table_listed()
        outcome = await self.judge(spec)
        if not listed and (unlisted := self._unlisted(spec, outcome)) is not None:
            return unlisted
        if outcome is None:
            return Allowed([])
        self.check_nesting(outcome)
        if outcome.violations and self.state.config.guard.violations == OnViolation.DENY:
            return Refused("violations", outcome)
        over_quota = quotas.refusal(self.state, outcome.identity.app)
        if over_quota:
            return Refused("quota", outcome, text=over_quota)
        reserve([v.host for v in outcome.volumes if v.state != VolumeState.VIOLATION])
        verdict: Allowed | Refused | None = None
        try:
            # awaited only once the binds are reserved: two creates judged at once see each
            # other's (a binding found to be another app's is refused in `_settled`)
            await self.check_owner(outcome)
            claimed: set[str] = set()
            ahead: Looked = {}
            deciding = True

            def look_ahead(ns: str) -> None:
                if deciding:  # a lock taken after the claim was given up: nothing to open
                    self._look_ahead(outcome, ahead, ns)

            try:
                if self.registry is not None:
                    # what exists of each path is opened while the claim's transaction is
                    # under way, once it holds its namespace's lock
                    claimed = await self.registry.claim(
                        outcome.volumes,
                        outcome.plans,
                        request_ref(key),
                        spec.name,
                        taken=look_ahead,
                    )
                verdict = await self._settled(
                    spec,
                    outcome,
                    self.state.mount_healthy,
                    start=False,
                    claimed=claimed,
                    ahead=ahead,
                )
            finally:
                deciding = False
                for looked in ahead.values():  # what no walk took, once it has ended
                    _discard(looked[1])
            return verdict
        finally:
            if not isinstance(verdict, Allowed):
                release()

    def _look_ahead(self, outcome: Outcome, looked: Looked, ns: str) -> None:
        """Opens what exists of each bind's path in namespace `ns` in the walk's worker, into
        `looked`, once the create's claim holds the namespace's lock: the opens order nothing
        for gc and make nothing, and they are a round trip each on NFS (volumes/
        trashcheck.py). Not before the lock: a bind above the path, on another host, could
        change it and be removed (its entry with it) while the claim waits, and the claim
        would then find nothing in its way. Once the lock is held, a bind above the path that
        a claim allowed or a keeper registered has its entry in the file, which the claim
        meets. The walk after the claim takes what its path's look opened on the mount as it
        is then; anything else is closed."""
        st = self.state
        if not st.mount_healthy or st.mount_dev is None:
            return
        for vol, plan in zip(outcome.volumes, outcome.plans, strict=True):
            if isinstance(plan, NamespaceViolation) or vol.state in _NOT_WALKED:
                continue
            key = key_of(st.config.mount_point, vol.host)
            if key is None or key[0] != ns or vol.host in looked:
                continue
            call = functools.partial(
                trashcheck.open_ahead, st.config.mount_point, plan.parts, st.mount_dev
            )
            asked = time.monotonic()
            looked[vol.host] = (st.mount_epoch, self.worker.submit(call), asked)

    async def decide_start(self, spec: ContainerSpec, healthy: bool) -> Allowed | Refused:
        """A start, judged and walked again: a directory checked at create may have been
        swapped for a symlink since. `healthy`: the mount's state when the start was asked."""
        listed = await self.table_listed()
        outcome = await self.judge(spec)
        if not listed and (unlisted := self._unlisted(spec, outcome)) is not None:
            return unlisted
        if outcome is None:
            return Allowed([])
        self.check_nesting(outcome, spec.id)
        await self.check_owner(outcome)
        claimed: set[str] = set()
        if healthy and self.registry is not None:
            claimed = await self.registry.claim(outcome.volumes, outcome.plans, spec.id, spec.name)
        return await self._settled(spec, outcome, healthy, start=True, claimed=claimed)

    async def check_owner(self, outcome: Outcome) -> None:
        """Rule 6 across racks sharing the filesystem: the namespace's recorded owner
        (rack/owners.py) is this container's rack and app, or its binds are violations. Read
        once per namespace and filesystem (the record never changes); one that cannot be read
        fails them (fail closed). While the mount is not healthy only a known owner is
        compared: the guard's `when_unhealthy` decides the rest."""
        st = self.state
        ident = outcome.identity
        planned = [
            i
            for i, (vol, plan) in enumerate(zip(outcome.volumes, outcome.plans, strict=True))
            if not isinstance(plan, NamespaceViolation)
            and vol.state not in (VolumeState.VIOLATION, VolumeState.FAILED)
        ]
        if not planned or not ident.rack or not ident.app:
            return
        mp, ns = st.config.mount_point, f"{ident.rack}-{ident.app}"
        key = (st.mount_dev, ns)
        owner = self._owners.get(key)
        if owner is None and not st.mount_healthy:
            return
        if owner is None:
            call = functools.partial(
                owners.owner_of,
                mp,
                st.mount_dev,
                ns,
                rack=ident.rack,
                app=ident.app,
                host=st.host_id,
            )
            timeout = st.config.directories.timeout_s
            try:
                found = await self.worker.run(call, timeout, what=f"reading the owner of {ns}")
            except MountUnhealthy as exc:  # gone underneath: pending, as the walk leaves it
                for i in planned:
                    st.set_volume_state(outcome.volumes[i], VolumeState.PENDING, str(exc))
                return
            except Exception as exc:  # a hung or refused filesystem, a record not readable
                why = f"volagent could not read the owner of {mp}/{ns} ({exc})"
                for i in planned:
                    st.set_volume_state(outcome.volumes[i], VolumeState.FAILED, why)
                return
            owner = (found.rack, found.app)
            self._owners[key] = owner
            while len(self._owners) > MAX_OWNERS_KEPT:
                self._owners.popitem(last=False)
        if owner == (ident.rack, ident.app):
            return
        violation = NamespaceViolation(
            6,
            f"{mp}/{ns} belongs to app {owner[1]} of rack {owner[0]} (recorded in "
            f"{mp}/{records.AGENT_DIR}/{owners.OWNERS_DIR}/{ns}{records.SUFFIX}), not to app "
            f"{ident.app} of rack {ident.rack}: the two name one directory; rename one of them",
        )
        for i in planned:
            outcome.plans[i] = violation
            st.set_volume_state(outcome.volumes[i], VolumeState.VIOLATION, str(violation))

    async def table_listed(self) -> bool:
        """Whether the table holds every container Docker has (the Docker watch's first
        listing is done), waiting for it at most the directory timeout: rule 7 on this host
        judges a bind against the table, which is empty just after volagent (re)started."""
        listed = self.state.containers_listed
        if not listed.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.state.config.directories.timeout_s):
                    await listed.wait()
        return listed.is_set()

    def _unlisted(self, spec: ContainerSpec, outcome: Outcome | None) -> Refused | None:
        """The refusal of a decision that rule 7 would judge against the table, while this
        host's containers are not listed: a bind on the shared filesystem, or a source
        outside it of a container naming an app (fail closed: the table may hold a bind it
        nests). None for one that binds neither."""
        if outcome is None and not spec.host_binds:
            return None
        ident = namespace.identify(self.state.config, spec.labels, spec.env)
        return Refused("unlisted", outcome or Outcome(ident, [], []))

    async def _settled(
        self,
        spec: ContainerSpec,
        outcome: Outcome,
        healthy: bool,
        start: bool,
        *,
        claimed: set[str],
        ahead: Looked | None = None,
    ) -> Allowed | Refused:
        """After rule 7: violations, the mount's health, the walk (a start's is tracked).
        `claimed`: the binds this host's entries in the registry hold now. `ahead`: paths
        opened while the claim was under way, by host path (a walk takes its own)."""
        guard = self.state.config.guard
        if outcome.violations and guard.violations == OnViolation.DENY:
            return Refused("violations", outcome)
        if not healthy:
            if guard.when_unhealthy == WhenUnhealthy.DENY:
                return Refused("unhealthy", outcome, outcome.volumes)
            return Allowed(outcome.volumes, outcome.identity)
        budget = self.state.config.directories.timeout_s + PREPARE_GRACE_S
        try:
            async with asyncio.timeout(budget):  # fills `outcome` in place, even when cut short
                await self.prepare(
                    spec, track=start, outcome=outcome, rewalk=start, claimed=claimed, ahead=ahead
                )
        except TimeoutError:
            for vol in outcome.volumes:
                if vol.state not in (VolumeState.VIOLATION, VolumeState.READY):
                    late = f"did not finish within {budget:g}s: the filesystem is not answering"
                    vol.state, vol.error = VolumeState.FAILED, f"preparing {vol.host} {late}"
        if outcome.violations and guard.violations == OnViolation.DENY:
            return Refused("violations", outcome)
        pending = [v for v in outcome.volumes if v.state == VolumeState.PENDING]
        if pending and guard.when_unhealthy == WhenUnhealthy.DENY:
            return Refused("unhealthy", outcome, pending)
        failed = [v for v in outcome.volumes if v.state == VolumeState.FAILED]
        if failed:
            return Refused("failed", outcome, failed)
        return Allowed(outcome.volumes, outcome.identity)

    def _judge_host_paths(self, spec: ContainerSpec, landings: dict[str, locate.Landing]) -> None:
        """Rule 7 for host paths: records where each source outside the mount point of a
        container naming an app led, and turns the landing of one that nests with a bind of
        another such container into a violation. Containers naming no app are the
        platform's (a monitoring agent binding `/:/rootfs:ro`, say): neither judged nor
        counted, as everything else about them."""
        if not namespace.identify(self.state.config, spec.labels, spec.env).labeled:
            spec.host_binds = ()
            return
        mine = [
            nesting.HostBind(land.source, land.resolved, land.visited)
            for land in landings.values()
            if land.kind != UNRESOLVED and land.resolved
        ]
        spec.host_binds = tuple(mine)
        if not mine:
            return
        known = list(self.state.known_host_binds(exclude=spec.id))
        for bind in mine:
            siblings = [(b, "the same container") for b in mine if b.source != bind.source]
            clash = nesting.host_path_nested(bind, [*siblings, *known])
            if clash is not None:
                landings[bind.source] = locate.Landing(bind.source, locate.NESTED, clash)

    def outcome_of(
        self, spec: ContainerSpec, landings: Mapping[str, locate.Landing] | None = None
    ) -> Outcome | None:
        """The namespace verdict alone, no I/O, for binds already located (`judge`): None
        when nothing of the container is on the shared filesystem."""
        cfg = self.state.config
        mp = cfg.mount_point
        landings = landings or {}
        ident = namespace.identify(cfg, spec.labels, spec.env)
        mine: list[namespace.Bind] = []
        found: dict[int, NamespaceViolation | str] = {}  # index in mine: a verdict already
        for device in spec.volume_devices:
            # judged where it lands by the guard's look at the volume; here only rule 7
            land = landings.get(device)
            if land is not None and land.kind == locate.NESTED:
                found[len(mine)] = NamespaceViolation(7, land.path)
                mine.append(namespace.Bind(device, f"(volume device {device})", False))
        for b in spec.binds:
            if namespace.touches_mount_point(mp, b.host):
                mine.append(b)
                continue
            land = landings.get(b.host)
            if land is None or land.kind == locate.OUTSIDE:
                if namespace.is_text(b.host) and "\x00" not in b.host:
                    continue
                mine.append(b)  # a path no host can hold: judged (and refused) below
            elif land.kind == locate.INSIDE:
                mine.append(dataclasses.replace(b, host=land.path))
            elif land.kind == locate.NESTED:
                found[len(mine)] = NamespaceViolation(7, land.path)
                mine.append(b)
            elif land.kind == locate.CONTAINS:
                found[len(mine)] = NamespaceViolation(
                    5, f"{b.host} contains {land.path}: a bind of it carries every app's data along"
                )
                mine.append(b)
            else:
                found[len(mine)] = land.path
                mine.append(b)
        if not mine:
            return None
        if not ident.labeled:
            unnamed = NamespaceViolation(
                6,
                f"the container names no app (label {cfg.docker.app_label} or env APP), so "
                "it may not bind anything on the shared filesystem",
            )
            plans: list[namespace.Plan | NamespaceViolation] = [unnamed for _ in mine]
        else:
            plans = namespace.plans_for(cfg, ident, mine, spec.labels, spec.user)
        vols = []
        for i, verdict in found.items():
            if isinstance(verdict, NamespaceViolation):
                plans[i] = verdict
        for i, (b, item) in enumerate(zip(mine, plans, strict=True)):
            unresolved = found.get(i)
            if isinstance(unresolved, str):
                state, error = VolumeState.FAILED, unresolved
            elif isinstance(item, NamespaceViolation):
                state, error = VolumeState.VIOLATION, str(item)
            else:
                vols.append(VolumeRecord(item.host_path, b.container, b.read_only))
                continue
            vols.append(VolumeRecord(b.host, b.container, b.read_only, state=state, error=error))
        return Outcome(identity=ident, volumes=vols, plans=plans)

    async def prepare(
        self,
        spec: ContainerSpec,
        recheck: Recheck | None = None,
        track: bool = True,
        outcome: Outcome | None = None,
        rewalk: bool = False,
        *,
        claimed: frozenset[str] | set[str] = frozenset(),
        ahead: Looked | None = None,
    ) -> Outcome | None:
        """Prepares every bind of `spec` (judged by `judge` unless `outcome` is given);
        records the container in the state when `track`. With `rewalk`, volumes already
        ready are walked again (a start: what was checked then may have been swapped).
        `claimed`: the binds this host's entries in the registry hold (the guard claimed
        them just before), which gc's last judgement keeps without a mark."""
        key = spec.id or f"request:{id(spec)}"
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                if outcome is None:
                    outcome = await self.judge(spec)
                    if outcome is not None:
                        self.check_nesting(outcome, spec.id)
                        # what the Docker watch prepares too: nothing is made in another
                        # rack's namespace, and the container is reported in violation
                        await self.check_owner(outcome)
                return await self._prepare(
                    spec, outcome, recheck, track, rewalk, claimed=claimed, ahead=ahead or {}
                )
        finally:
            if not lock.locked() and self._locks.get(key) is lock:
                del self._locks[key]

    def check_nesting(self, outcome: Outcome, container_id: str = "") -> None:
        """Rule 7: a bind may not lie strictly inside, or strictly contain, another live bind
        (of this container, another one here, or another host's). Whoever can rename a
        directory above another container's bind source can swap it for a symlink that
        Docker follows at that container's next start."""
        planned = [
            (vol, plan)
            for vol, plan in zip(outcome.volumes, outcome.plans, strict=True)
            if not isinstance(plan, NamespaceViolation) and vol.state != VolumeState.FAILED
        ]
        if not planned:
            return
        others = list(self.state.live_binds(exclude=container_id))
        for i, (vol, _plan) in enumerate(planned):
            siblings = [(v.host, "the same container") for v, _ in planned[:i] + planned[i + 1 :]]
            clash = nesting.nested_with(vol.host, [*siblings, *others])
            if clash is not None:
                violation = NamespaceViolation(7, clash)
                outcome.plans[outcome.volumes.index(vol)] = violation
                self.state.set_volume_state(vol, VolumeState.VIOLATION, str(violation))

    async def _prepare(
        self,
        spec: ContainerSpec,
        outcome: Outcome | None,
        recheck: Recheck | None,
        track: bool,
        rewalk: bool,
        *,
        claimed: frozenset[str] | set[str],
        ahead: Looked,
    ) -> Outcome | None:
        if outcome is None:
            if track and spec.id:
                # known, with nothing on the shared filesystem: a VolumesFrom of it is judged
                self._track(spec, namespace.identify(self.state.config, spec.labels, spec.env), [])
            return None
        ident = outcome.identity
        prior = self.state.containers.get(spec.id) if spec.id else None
        prior_volumes = {v.host: v for v in prior.volumes} if prior else {}
        # what the check after a start found stays found: the directory walk cannot see that
        # the container got something else mounted
        found_wrong = {
            host: v
            for host, v in prior_volumes.items()
            if v.state == VolumeState.VIOLATION and (v.error or "").startswith(mount_check.MISMATCH)
        }
        bound = log.get("preparer", container=spec.id[:12], app=ident.app, service=ident.service)
        for vol, plan in zip(outcome.volumes, outcome.plans, strict=True):
            if vol.host in found_wrong:
                wrong = found_wrong.pop(vol.host)
                self.state.set_volume_state(vol, VolumeState.VIOLATION, wrong.error)
                continue
            if isinstance(plan, NamespaceViolation):
                self.state.set_volume_state(vol, VolumeState.VIOLATION, str(plan))
                bound.warning("namespace_violation", path=vol.host, reason=str(plan))
                continue
            if vol.state == VolumeState.FAILED:
                continue  # its source could not be resolved: nothing to walk
            settled = prior_volumes.get(vol.host)
            if not rewalk and settled is not None and settled.state in SETTLED_VOLUME_STATES:
                # already settled: not walked again, and a late one keeps saying why
                vol.state, vol.error = settled.state, settled.error
                vol.leaf = vol.leaf or settled.leaf
                continue
            await self._prepare_one(
                spec,
                vol,
                plan,
                recheck,
                bound,
                rewalk=rewalk,
                claimed=vol.host in claimed,
                ahead=ahead.get(vol.host),
            )
            if (
                settled is not None
                and settled.state == VolumeState.LATE
                and vol.state == VolumeState.READY
            ):
                vol.state, vol.error = settled.state, settled.error
        outcome.volumes.extend(found_wrong.values())  # mounts it was never meant to have
        outcome.plans.extend(
            NamespaceViolation(5, v.error or mount_check.MISMATCH) for v in found_wrong.values()
        )
        if track and spec.id:
            self._track(spec, ident, outcome.volumes)
        return outcome

    def adopt(
        self,
        spec: ContainerSpec,
        volumes: list[VolumeRecord],
        identity: namespace.Identity | None = None,
    ) -> None:
        """A container the guard prepared, now that Docker named it: recorded as the guard
        left it (with the identity it was judged under), so the Docker watch's look at its
        create event finds the volumes settled and does not walk them again."""
        if spec.id and spec.id not in self.state.containers:
            ident = identity or namespace.identify(self.state.config, spec.labels, spec.env)
            self._track(spec, ident, volumes)

    def _track(
        self, spec: ContainerSpec, ident: namespace.Identity, volumes: list[VolumeRecord]
    ) -> None:
        record = ContainerRecord(
            id=spec.id,
            name=spec.name,
            rack=ident.rack,
            app=ident.app,
            service=ident.service,
            volumes=volumes,
            started=spec.started,
            spec=spec,
        )
        self.state.upsert_container(record)
        self.state.metrics.containers.set(len(self.state.containers))

    async def _prepare_one(
        self,
        spec: ContainerSpec,
        vol: VolumeRecord,
        plan: namespace.Plan,
        recheck: Recheck | None,
        bound: Any,
        *,
        rewalk: bool = False,
        claimed: bool = False,
        ahead: LookAhead | None = None,
    ) -> None:
        """Walks one bind's path. `ahead`: its look ahead, whose descriptors the walk takes
        when the mount is the one it was opened on (its creator closes what is not taken)."""
        st = self.state
        if not st.mount_healthy:
            st.set_volume_state(
                vol,
                VolumeState.PENDING,
                f"mount is {st.mount.state}; directories are "
                "created once the shared filesystem is back",
            )
            return
        # not into a namespace that gc moved into the trash (a trashed one fails the volume);
        # a start (rewalk) compares with what the last walk of the path found, only looking
        # at each component where this host's entries in the registry have held the bind
        # without a break since that walk, soon after it (trashcheck.py says what that
        # relies on)
        walked = self._walked.get(vol.host) if rewalk else None
        known = walked.identity if walked is not None else ()
        holding = self.registry.holding_of(vol.host) if claimed and self.registry else None
        began = time.monotonic()
        held = (
            walked is not None
            and holding is not None
            and walked.held_as == holding
            and began - walked.began <= LOOK_WITHIN_S
        )
        key = key_of(st.config.mount_point, vol.host)
        recorded_at = st.usage_recorded.get(key) if key is not None else None
        self._walked.pop(vol.host, None)  # a walk that fails leaves nothing to compare with
        # gc's last judgement keeps what the registry holds, once every host's gc reads it
        # (ops/gc/registered.py): the claim came before this walk's look in the trash
        mark = not (claimed and st.gc_reads_registry_in == st.mount_epoch)
        timeout = st.config.directories.timeout_s
        looked = ahead[1] if ahead is not None and ahead[0] == st.mount_epoch else None
        if looked is not None and ahead is not None:
            began = ahead[2]  # what the walk takes was opened from then on

        def call() -> directories.Prepared:
            return trashcheck.prepare_path(
                st.config.mount_point,
                plan.parts,
                plan.owner,
                plan.mode,
                st.mount_dev,
                known=known,
                held=held,
                recorded_at=recorded_at,
                mark=mark,
                ahead=_opened_ahead(looked, timeout),
            )

        st.metrics.directory_walks.inc()
        try:
            result = await self.worker.run(call, timeout, what=f"preparing {vol.host}")
        except NamespaceViolation as exc:
            st.set_volume_state(vol, VolumeState.VIOLATION, str(exc))
            bound.warning("namespace_violation", path=vol.host, reason=str(exc))
            return
        except MountUnhealthy as exc:
            st.set_volume_state(vol, VolumeState.PENDING, str(exc))
            bound.warning("prepare_deferred", path=vol.host, reason=str(exc))
            return
        except Exception as exc:
            st.set_volume_state(vol, VolumeState.FAILED, str(exc))
            st.metrics.prepare_failures.inc()
            event = "prepare_hung" if isinstance(exc, FilesystemHung) else "prepare_failed"
            bound.error(event, path=vol.host, reason=str(exc))
            return
        if held and walked is not None and result.identity == walked.identity:
            began = walked.began  # only looked: what the caches hold is as old as that walk
        self._walked[vol.host] = Walked(result.identity, holding, began)
        while len(self._walked) > MAX_WALKED:
            self._walked.popitem(last=False)
        if result.created:
            st.metrics.dirs_created.inc(result.created)
        vol.leaf = result.leaf
        wanted = (plan.owner.uid, plan.owner.gid, plan.mode)
        found = (result.uid, result.gid, result.mode)
        if not result.leaf_created and found == DOCKER_MADE and wanted != DOCKER_MADE:
            started = spec.started
            if not started and recheck is not None:
                started = await recheck()
            if started:
                st.set_volume_state(
                    vol,
                    VolumeState.LATE,
                    "the container started before volagent "
                    "prepared the directory; Docker created it root:root 0755 "
                    f"instead of {plan.owner} {plan.mode:04o} (enable the "
                    "start guard to prevent this)",
                )
                bound.warning("volume_late", path=vol.host)
                return
        st.set_volume_state(vol, VolumeState.READY)
        bound.info(
            "volume_ready",
            path=vol.host,
            created=result.created,
            owner=f"{result.uid}:{result.gid}",
            mode=f"{result.mode:04o}",
        )


_NOT_WALKED = (VolumeState.VIOLATION, VolumeState.FAILED)


class Walked(NamedTuple):
    """What the last complete walk of a path found: the device and inode of each component,
    the registry's holding key when this host's entries held the path at that walk, and when
    it began."""

    identity: directories.Identity
    held_as: HoldingKey | None
    began: float  # time.monotonic() as it began: what it opened was revalidated from then


# a path opened ahead of a create's walk: the mount's epoch then, the job opening it, and
# the time.monotonic() it was asked at
LookAhead = tuple[int, concurrent.futures.Future[trashcheck.Ahead], float]
Looked = dict[str, LookAhead]  # by host path


def _opened_ahead(
    job: concurrent.futures.Future[trashcheck.Ahead] | None, wait_s: float
) -> trashcheck.Ahead | None:
    """In a walk's thread: what its path's look ahead opened, unless another took it (a walk
    that runs when its caller has given up may find it closed) or it failed (the walk opens
    the path itself, and judges what the look met). The look was queued before the walk, so
    it has ended or is running: waited for at most the walk's own timeout (a look that hangs,
    the walk would too)."""
    if job is None:
        return None
    try:
        opened = job.result(timeout=wait_s)
    except Exception:
        return None
    return opened.take()


def _discard(job: concurrent.futures.Future[trashcheck.Ahead]) -> None:
    """Closes what a look ahead opened, once it has, unless a walk takes it first; one that
    no thread has taken yet is dropped, as the worker's other jobs are when given up on."""
    job.cancel()
    job.add_done_callback(_close_opened)


def _close_opened(job: concurrent.futures.Future[trashcheck.Ahead]) -> None:
    if not job.cancelled() and job.exception() is None:
        opened = job.result().take()
        if opened is not None:
            opened.close()
