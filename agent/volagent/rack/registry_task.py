"""This host's side of the rack-wide registry: the claim a create or start makes before it is
allowed, and the root task keeping this host's entries what it runs.

`claim` runs in a worker of its own with the directory timeout: a registry that does not
answer in time fails the volumes it was asked about (the guard refuses the create, fail
closed); a bind that nests another host's live bind is a rule 7 violation. The claim's
entries name the create's request until Docker answers with the id.

`RegistryKeeper.run` looks each second at what the daemon's table holds (containers, creates
allowed and not answered) and, per namespace whose entries of this host changed, sets them in
the file (`registry_claim.set_own`): a destroyed container's entries go, a create answered
gets its id. Its first pass, once Docker's containers are listed, covers every namespace this
host held entries in before (remembered under `state_dir`), so a restarted agent removes the
entries of containers that went while it was down. Nothing is read while nothing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import time
from typing import Any

from volagent import log
from volagent.errors import NamespaceViolation, VolagentError
from volagent.rack import binds, registry_claim, usage
from volagent.rack.registry import Entry
from volagent.state import AgentState, VolumeRecord
from volagent.worker import TimedWorker

SYNC_INTERVAL_S = 1.0
DEADLINE_SHARE = 0.8
FAILURE_BACKOFF_S = 10.0
REMEMBERED = "registry-namespaces.json"
# what a `ref` of an entry says for a create not answered yet: the digest of its request
REQUEST_PREFIX = "request:"

Own = dict[str, dict[tuple[str, str], str]]  # namespace -> (ref, path) -> container name


def request_ref(key: bytes) -> str:
    return REQUEST_PREFIX + key.hex()[:32]


class Registry:
    """Claims in the registry and keeps this host's entries; owned by the event loop."""

    def __init__(self, state: AgentState) -> None:
        self.state = state
        # a worker of its own: a hung registry never takes the directory walk's threads
        self.worker = TimedWorker("registry", max_threads=4)
        self.participants = binds.Participants()
        self.log = log.get("registry")
        self._written: dict[str, frozenset[tuple[str, str]]] = {}
        self._synced_once = False
        self._retry_at = 0.0
        self.legacy_hosts: dict[str, float] = {}  # 0.2 hosts whose records were read, when

    # --- the claim ----------------------------------------------------------------------
    async def claim(
        self, volumes: list[VolumeRecord], plans: list[Any], ref: str, name: str
    ) -> None:
        """Registers the planned binds among `volumes` under `ref`; a bind that nests another
        host's becomes a violation, one the registry could not be asked about `failed`."""
        st = self.state
        if not st.mount_healthy or st.mount_dev is None:
            return  # the guard decides on the unhealthy mount itself
        by_ns: dict[str, list[VolumeRecord]] = {}
        for vol, plan in zip(volumes, plans, strict=True):
            if isinstance(plan, NamespaceViolation) or vol.state in ("violation", "failed"):
                continue
            key = usage.key_of(st.config.mount_point, vol.host)
            if key is not None and key[0]:
                by_ns.setdefault(key[0], []).append(vol)
        for ns, vols in by_ns.items():
            await self._claim_in(ns, vols, (volumes, plans), ref, name)

    async def _claim_in(
        self,
        ns: str,
        vols: list[VolumeRecord],
        outcome: tuple[list[VolumeRecord], list[Any]],
        ref: str,
        name: str,
    ) -> None:
        st = self.state
        volumes, plans = outcome
        timeout = st.config.directories.timeout_s
        now = time.time()
        mp = st.config.mount_point
        wanted = [
            Entry(st.host_id, ref, name, registry_claim.relative(mp, v.host), now) for v in vols
        ]
        job = functools.partial(self._claim_job, ns, wanted, timeout)
        try:
            result = await self.worker.run(job, timeout, what=f"consulting the registry of {ns}")
        except (VolagentError, OSError) as exc:
            st.metrics.registry_claims.labels(result="failed").inc()
            self.log.warning("registry_unreachable", namespace=ns, reason=str(exc))
            why = (
                f"volagent could not consult the rack's registry of binds for {ns} within "
                f"{timeout:g}s ({exc}); a bind that might nest another host's is refused"
            )
            for v in vols:
                st.set_volume_state(v, "failed", why)
            return
        seen = time.time()
        for h in result.legacy_hosts:  # on the loop: the status reads this dict
            self.legacy_hosts[h] = seen
        self._show_legacy()
        if result.expired:
            self.log.info("registry_hosts_forgotten", namespace=ns, hosts=result.expired)
        if result.clashes:
            st.metrics.registry_claims.labels(result="clash").inc()
            for v in vols:
                clash = result.clashes.get(registry_claim.relative(mp, v.host))
                if clash is not None:
                    violation = NamespaceViolation(7, clash)
                    plans[volumes.index(v)] = violation
                    st.set_volume_state(v, "violation", str(violation))
            return
        st.metrics.registry_claims.labels(result="registered").inc()
        self._written[ns] = self._written.get(ns, frozenset()) | {(e.ref, e.path) for e in wanted}

    def _claim_job(
        self, ns: str, wanted: list[Entry], timeout: float
    ) -> registry_claim.ClaimResult:
        """Blocking: the 0.2 hosts' binds of the namespace, then the claim under the lock."""
        st = self.state
        # the thread gives up a little before its caller does, so a lock held elsewhere is
        # refused as that, not as a hung filesystem
        deadline = time.monotonic() + timeout * DEADLINE_SHARE
        legacy, hosts = binds.legacy_binds(
            st.config.mount_point,
            st.mount_dev,
            ns,
            st.host_id,
            self.participants,
            directories={p[1] for e in wanted if len(p := e.path.split("/")) > 1},
        )
        result = registry_claim.claim(
            st.config.mount_point,
            st.mount_dev,
            ns,
            host=st.host_id,
            wanted=wanted,
            legacy=legacy,
            expire_after_s=st.config.health.forget_after_s,
            deadline=deadline,
        )
        result.legacy_hosts = hosts
        return result

    def _show_legacy(self) -> None:
        warning = self.status_warning()
        if warning:
            self.state.warn("registry.legacy", warning)
        else:
            self.state.clear_warning("registry.legacy")

    def status_warning(self) -> str | None:
        """Says so when binds of hosts outside the registry (0.2) were judged lately."""
        cutoff = time.time() - binds.STALE_AFTER_S
        old = sorted(h for h, t in self.legacy_hosts.items() if t > cutoff)
        if not old:
            return None
        return (
            f"hosts {', '.join(old[:5])} take no part in the rack's registry (volagent 0.2): "
            "their binds are judged from their usage records, which lag them; upgrade them"
        )

    # --- this host's entries -------------------------------------------------------------
    def own(self) -> Own:
        """What this host's entries should be, per namespace: every bind of a container in
        the table (violations aside) and of every create allowed and not answered yet."""
        st = self.state
        mp = st.config.mount_point
        out: Own = {}

        def add(ref: str, path: str, name: str) -> None:
            key = usage.key_of(mp, path)
            if key is not None and key[0]:
                out.setdefault(key[0], {})[(ref, registry_claim.relative(mp, path))] = name

        for c in st.containers.values():
            for v in c.volumes:
                if v.state != "violation":
                    add(c.id, v.host, c.name)
        for key, paths in st.reserved_binds.items():
            for path in paths:
                add(request_ref(key), path, "")
        return out

    async def run(self) -> None:
        # the worker stays open when this task ends: the guard, still answering while the
        # daemon stops, claims through it (the daemon closes it once the guard has stopped)
        while True:
            with contextlib.suppress(VolagentError, OSError):
                await self.sync()
            await asyncio.sleep(SYNC_INTERVAL_S)

    async def sync(self) -> int:
        """Sets this host's entries where they changed; how many namespaces were set."""
        st = self.state
        if not st.mount_healthy or st.mount_dev is None or not st.containers_listed.is_set():
            return 0
        if time.monotonic() < self._retry_at:
            return 0
        self._show_legacy()
        since = time.time()
        own = self.own()
        todo = {
            ns
            for ns in own.keys() | self._written.keys()
            if frozenset(own.get(ns, {})) != self._written.get(ns)
        }
        if not self._synced_once:
            todo |= set(await self._remembered()) | set(own)
        live_refs = {ref for entries in own.values() for ref, _ in entries}
        done = 0
        for ns in sorted(todo):
            wanted = [
                Entry(st.host_id, ref, name, path, since)
                for (ref, path), name in own.get(ns, {}).items()
            ]
            job = functools.partial(
                registry_claim.set_own,
                st.config.mount_point,
                st.mount_dev,
                ns,
                host=st.host_id,
                live=wanted,
                live_refs=live_refs,
                since=since,
                deadline=time.monotonic() + st.config.directories.timeout_s,
            )
            try:
                await self.worker.run(
                    job, st.config.directories.timeout_s, what=f"updating the registry of {ns}"
                )
            except (VolagentError, OSError) as exc:
                self.log.warning("registry_update_failed", namespace=ns, reason=str(exc))
                self._retry_at = time.monotonic() + FAILURE_BACKOFF_S
                return done
            done += 1
            if own.get(ns):
                self._written[ns] = frozenset(own[ns])
            else:
                self._written.pop(ns, None)
        if done or not self._synced_once:
            await self._remember(sorted(self._written))
        self._synced_once = True
        return done

    async def _remembered(self) -> list[str]:
        path = os.path.join(self.state.config.state_dir, REMEMBERED)

        def read() -> list[str]:
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, ValueError):
                return []
            found = data.get("namespaces") if isinstance(data, dict) else None
            return [str(n) for n in found] if isinstance(found, list) else []

        return await asyncio.to_thread(read)

    async def _remember(self, namespaces: list[str]) -> None:
        """Notes on local disk the namespaces this host holds entries in, for its next run."""
        path = os.path.join(self.state.config.state_dir, REMEMBERED)

        def write() -> None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"namespaces": namespaces}, f)
            os.replace(tmp, path)

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            self.log.warning("registry_note_unwritten", path=path, reason=str(exc))
