"""From a container (inspected, or a create request the guard holds) to ready directories.

The Preparer applies the namespace rules, runs the safe directory walk through the timed
worker, and records each volume's state: ready, pending (the mount is not healthy yet),
late (Docker made the directory first), violation or failed. The disk tells the truth about
`late`: a leaf that exists as root:root 0755 when another owner or mode was asked for, under
a container that had already started, was made by Docker, not by volagent.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from volagent import fs, log, namespace
from volagent.errors import FilesystemHung, MountUnhealthy, NamespaceViolation
from volagent.state import AgentState, ContainerRecord, VolumeRecord
from volagent.worker import TimedWorker

DOCKER_MADE = (0, 0, 0o755)  # what Docker's own auto-create leaves behind
ZERO_TIME = "0001-01-01T00:00:00Z"


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

    @classmethod
    def from_inspect(cls, data: Mapping[str, Any]) -> ContainerSpec:
        cfg = data.get("Config") or {}
        st = data.get("State") or {}
        started_at = st.get("StartedAt") or ZERO_TIME
        return cls(
            id=str(data.get("Id", "")),
            name=str(data.get("Name", "")).lstrip("/"),
            labels=cfg.get("Labels") or {},
            env=cfg.get("Env") or [],
            user=str(cfg.get("User") or ""),
            host_config=data.get("HostConfig") or {},
            started=bool(st.get("Running")) or not started_at.startswith("0001-"),
        )


@dataclass
class Outcome:
    """What preparing one container's volumes came to, each volume beside its plan."""

    identity: namespace.Identity
    volumes: list[VolumeRecord]
    plans: list[namespace.Plan | NamespaceViolation]

    @property
    def violations(self) -> list[VolumeRecord]:
        return [v for v in self.volumes if v.state == "violation"]

    @property
    def unready(self) -> list[VolumeRecord]:
        return [v for v in self.volumes if v.state not in ("ready", "late")]


Recheck = Callable[[], Awaitable[bool]]


class Preparer:
    """Prepares container volumes; one preparation per container at a time."""

    def __init__(self, state: AgentState, worker: TimedWorker) -> None:
        self.state = state
        self.worker = worker
        self.log = log.get("preparer")
        self._locks: dict[str, asyncio.Lock] = {}

    def outcome_of(self, spec: ContainerSpec) -> Outcome | None:
        """The namespace verdict alone, no I/O: None when volagent has nothing to do."""
        cfg = self.state.config
        ident = namespace.identify(cfg, spec.labels, spec.env)
        binds = namespace.binds_of(spec.host_config)
        if not any(namespace.touches_mount_point(cfg.mount_point, b.host) for b in binds):
            return None
        if not ident.labeled:
            return None  # unlabeled containers are not volagent's to manage
        mine = [b for b in binds if namespace.touches_mount_point(cfg.mount_point, b.host)]
        plans = namespace.plans_for(cfg, ident, binds, spec.labels, spec.user)
        vols = []
        for b, item in zip(mine, plans, strict=True):
            if isinstance(item, NamespaceViolation):
                vols.append(
                    VolumeRecord(
                        host=b.host,
                        container=b.container,
                        read_only=b.read_only,
                        state="violation",
                        error=str(item),
                    )
                )
            else:
                vols.append(
                    VolumeRecord(host=item.host_path, container=b.container, read_only=b.read_only)
                )
        return Outcome(identity=ident, volumes=vols, plans=plans)

    async def prepare(
        self, spec: ContainerSpec, recheck: Recheck | None = None, track: bool = True
    ) -> Outcome | None:
        """Prepares every bind of `spec`; records the container in the state when `track`."""
        key = spec.id or f"request:{id(spec)}"
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                return await self._prepare(spec, recheck, track)
        finally:
            if not lock.locked() and self._locks.get(key) is lock:
                del self._locks[key]

    async def _prepare(
        self, spec: ContainerSpec, recheck: Recheck | None, track: bool
    ) -> Outcome | None:
        outcome = self.outcome_of(spec)
        if outcome is None:
            return None
        ident = outcome.identity
        prior = self.state.containers.get(spec.id) if spec.id else None
        prior_volumes = {v.host: v for v in prior.volumes} if prior else {}
        bound = log.get("preparer", container=spec.id[:12], app=ident.app, service=ident.service)
        for vol, plan in zip(outcome.volumes, outcome.plans, strict=True):
            if isinstance(plan, NamespaceViolation):
                self.state.set_volume_state(vol, "violation", str(plan))
                bound.warning("namespace_violation", path=vol.host, reason=str(plan))
                continue
            settled = prior_volumes.get(vol.host)
            if settled is not None and settled.state in ("ready", "late"):
                # already settled: never re-judged, and a late one keeps saying why
                vol.state, vol.error = settled.state, settled.error
                continue
            await self._prepare_one(spec, vol, plan, recheck, bound)
        if track and spec.id:
            record = ContainerRecord(
                id=spec.id,
                name=spec.name,
                rack=ident.rack,
                app=ident.app,
                service=ident.service,
                volumes=outcome.volumes,
                started=spec.started,
            )
            self.state.upsert_container(record)
            self.state.metrics.containers.set(len(self.state.containers))
        return outcome

    async def _prepare_one(
        self,
        spec: ContainerSpec,
        vol: VolumeRecord,
        plan: namespace.Plan,
        recheck: Recheck | None,
        bound: Any,
    ) -> None:
        st = self.state
        if not st.mount_healthy:
            st.set_volume_state(
                vol,
                "pending",
                f"mount is {st.mount.state}; directories are "
                "created once the shared filesystem is back",
            )
            return
        call = functools.partial(
            fs.prepare_path, st.config.mount_point, plan.parts, plan.owner, plan.mode, st.mount_dev
        )
        try:
            result = await self.worker.run(
                call, st.config.directories.timeout_s, what=f"preparing {vol.host}"
            )
        except NamespaceViolation as exc:
            st.set_volume_state(vol, "violation", str(exc))
            bound.warning("namespace_violation", path=vol.host, reason=str(exc))
            return
        except MountUnhealthy as exc:
            st.set_volume_state(vol, "pending", str(exc))
            bound.warning("prepare_deferred", path=vol.host, reason=str(exc))
            return
        except FilesystemHung as exc:
            st.set_volume_state(vol, "failed", str(exc))
            st.metrics.prepare_failures.inc()
            bound.error("prepare_hung", path=vol.host, reason=str(exc))
            return
        except Exception as exc:
            st.set_volume_state(vol, "failed", str(exc))
            st.metrics.prepare_failures.inc()
            bound.error("prepare_failed", path=vol.host, reason=str(exc))
            return
        if result.created:
            st.metrics.dirs_created.inc(result.created)
        wanted = (plan.owner.uid, plan.owner.gid, plan.mode)
        found = (result.uid, result.gid, result.mode)
        if not result.leaf_created and found == DOCKER_MADE and wanted != DOCKER_MADE:
            started = spec.started
            if not started and recheck is not None:
                started = await recheck()
            if started:
                st.set_volume_state(
                    vol,
                    "late",
                    "the container started before volagent "
                    "prepared the directory; Docker created it root:root 0755 "
                    f"instead of {plan.owner} {plan.mode:04o} (enable the "
                    "start guard to prevent this)",
                )
                bound.warning("volume_late", path=vol.host)
                return
        st.set_volume_state(vol, "ready")
        bound.info(
            "volume_ready",
            path=vol.host,
            created=result.created,
            owner=f"{result.uid}:{result.gid}",
            mode=f"{result.mode:04o}",
        )
