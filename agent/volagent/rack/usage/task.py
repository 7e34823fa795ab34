"""The root task of the usage walk: which namespaces this host walks, the walk itself in a
worker thread, and the rack's figures published as metrics, quota warnings and the `usage`
of `volagent status --rack`.

Every full pass starts `[usage] interval_s` after the last one started; one that comes due
while the mount is not healthy (at start, before it has settled) runs as soon as it is. The
namespaces are shared among the live hosts of the heartbeats (share.py), read once a pass;
each walk step spends a few seconds' worth of the budget in a thread of its own worker, then
saves the cursor with the partial totals, so a hung mount costs one stuck thread and a
restart loses one step. Every host reads every namespace's record, so each host exports the
whole rack's usage, but at a pace that keeps its reads flat as the rack grows: every
REFRESH_S it reads BATCH records, all of them while there are no more, else the next BATCH of
a listing taken once the last one has been read through (figures change once a pass,
`[usage] interval_s`, anyway: at 1,000 hosts, 3,000 records are read through in 50
minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from volagent import log, safedir
from volagent.errors import FilesystemHung, VolagentError
from volagent.rack import quotas
from volagent.rack.usage import measure, share
from volagent.rack.usage.measure import LOOSE, Budget, NamespaceWalk
from volagent.state import AgentState, now_iso
from volagent.worker import TimedWorker

STEP_S = 5.0  # budget seconds one step spends before it saves the cursor
STEP_GRACE_S = 60.0  # beyond its budgeted time, a step taking this long means a hung mount
READ_TIMEOUT_S = 30.0
REFRESH_S = 30.0  # other hosts' figures are read at most this often
# ... and no more than one record a second on average: a rack of N hosts has about 3N
# namespaces, so reading them all every REFRESH_S would grow with the rack on every host
RECORD_READ_S = 1.0
BATCH = int(REFRESH_S / RECORD_READ_S)
IDLE_S = 1.0

HostsSource = Callable[[], Awaitable[list[dict[str, Any]]]]


class UsageWalker:
    """Walks this host's share of the namespaces and publishes the rack's figures."""

    def __init__(self, state: AgentState, hosts: HostsSource) -> None:
        self.state = state
        self.hosts = hosts
        # a worker of its own: a walk stuck on a hung mount never takes another task's thread
        self.worker = TimedWorker("usage", max_threads=2)
        self.budget = Budget(
            state.config.usage.ops_per_second, on_spend=state.metrics.usage_walk_ops.inc
        )
        self.log = log.get("usage_walk")
        self._figures: dict[str, dict[str, Any]] = {}  # namespace -> its record
        # namespaces of another rack whose name starts with this one's (their owner records)
        self._elsewhere: set[str] = set()
        self._walk: NamespaceWalk | None = None
        self._in_flight = False  # a step of the walk is running in a thread
        self._read_at = 0.0
        self._pass_hosts: list[str] | None = None  # the live hosts, read once a pass
        self._to_read: list[str] = []  # records still to read one by one, from a listing

    # --- the loop ---------------------------------------------------------------------
    async def run(self) -> None:
        try:
            while True:
                # a pass due while the mount is not healthy (at every start, the mount not
                # settled yet) runs as soon as it is, and the interval counts from there
                await self._until_healthy()
                started = time.monotonic()
                try:
                    await self.one_pass()
                except (VolagentError, OSError) as exc:
                    self.log.warning("usage_pass_failed", reason=str(exc))
                await self._rest_until(started + self.state.config.usage.interval_s)
        finally:
            self._give_up()
            self.worker.close()

    def _healthy(self) -> bool:
        st = self.state
        return st.mount_healthy and st.mount_dev is not None and bool(st.config.rack)

    async def _until_healthy(self) -> None:
        """Returns once a pass can run: at once when the mount is healthy, else when the
        state changes so (the mount settles); a reload that sets `rack` wakes nobody, so it
        is looked at every IDLE_S as well."""
        while not self._healthy():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_S):
                    await self.state.changed()

    async def _rest_until(self, when: float) -> None:
        while time.monotonic() < when:
            if self._healthy():
                with contextlib.suppress(VolagentError, OSError):
                    await self.refresh_step()
            await asyncio.sleep(min(IDLE_S, max(0.0, when - time.monotonic())))

    def refresh_due(self) -> bool:
        return time.monotonic() - self._read_at >= REFRESH_S

    async def refresh_step(self) -> int:
        """When due, the other hosts' figures: all of them when there are no more than
        BATCH, else the next BATCH of a rolling read; how many records were read."""
        if not self.refresh_due():
            return 0
        self._read_at = time.monotonic()
        if not self._to_read:
            names = await self._call(self._list_counted, "listing usage records")
            if len(names) <= BATCH:
                await self.refresh()
                return len(names)
            listed = set(names)
            self._figures = {ns: rec for ns, rec in self._figures.items() if ns in listed}
            self._to_read = sorted(names, reverse=True)
        batch = [self._to_read.pop() for _ in range(min(BATCH, len(self._to_read)))]
        found = await self._call(lambda root: self._read_batch(root, batch), "reading records")
        figures = {ns: rec for ns, rec in self._figures.items() if ns not in batch}
        figures.update(found)
        self._figures = figures
        self.publish()
        return len(batch)

    def _list_counted(self, root: int) -> list[str]:
        names = measure.list_sizes(root)
        self.budget.spend(2 + len(names) // measure.NAMES_PER_OP)
        return names

    def _read_batch(self, root: int, batch: list[str]) -> dict[str, dict[str, Any]]:
        self.budget.spend(2 + len(batch))
        return measure.read_sizes_of(root, batch)

    async def one_pass(self) -> int:
        """Walks every namespace this host owns now; how many it finished."""
        st = self.state
        prefix = f"{st.config.rack}-"
        self._sync_budget()
        listed = await self._call(
            lambda root: measure.namespaces(root, prefix, self.budget), "listing namespaces"
        )
        self._elsewhere = await self._call(
            lambda root: measure.owned_elsewhere(root, listed, st.config.rack, self.budget),
            "reading the namespaces' owners",
        )
        present = [ns for ns in listed if ns not in self._elsewhere]
        # who walks what: the heartbeats read once a pass, not once a namespace or a step
        self._pass_hosts = share.live_hosts(await self.hosts(), st.host_id, st.config.rack)
        if self.refresh_due() or not self._figures:
            await self.refresh()
        # records of this rack only: another rack's hosts may share the filesystem
        # (and not another rack's whose name starts with this one's: its records are its own)
        gone = [
            ns
            for ns, rec in self._figures.items()
            if self._this_racks(ns, rec) and ns not in listed
        ]
        if gone:
            await self._call(lambda root: measure.forget(root, gone), "removing old records")
        finished = 0
        for ns in present:
            if not await self._owned(ns):
                continue
            try:
                if await self._walk_one(ns):
                    finished += 1
            except (VolagentError, OSError) as exc:
                self.log.warning("usage_walk_failed", namespace=ns, reason=str(exc))
            self.publish()  # this host's own figures, known without reading them back
        return finished

    async def _owned(self, ns: str) -> bool:
        st = self.state
        hosts = self._pass_hosts
        if hosts is None:
            hosts = share.live_hosts(await self.hosts(), st.host_id, st.config.rack)
        return share.owner(hosts, ns) == st.host_id

    async def _walk_one(self, ns: str) -> bool:
        st = self.state
        previous = self._figures.get(ns)
        saved = (previous or {}).get("walk")
        mp, dev = st.config.mount_point, st.mount_dev
        opening = functools.partial(safedir.open_shared_root, mp, dev)
        root = await self.worker.run(opening, READ_TIMEOUT_S, what="opening the mount point")
        walk = NamespaceWalk.resume(
            root, ns, self.budget, saved if isinstance(saved, dict) else None
        )
        self._walk = walk
        self._in_flight = False
        if saved:
            self.log.info("usage_walk_resumed", namespace=ns, depth=len(walk.cursor))
        try:
            while True:
                if not self._healthy() or not await self._owned(ns):
                    st.metrics.usage_walks.labels(result="interrupted").inc()
                    return False
                self._sync_budget()
                max_ops = max(10, int(self.budget.rate * STEP_S))
                step = functools.partial(self._step, walk, previous, max_ops)
                self._in_flight = True
                done = await self.worker.run(step, STEP_S + STEP_GRACE_S, what="the usage walk")
                self._in_flight = False
                if done:
                    st.metrics.usage_walks.labels(result="finished").inc()
                    self.log.info("usage_walked", namespace=ns, totals=walk.totals)
                    return True
        except FilesystemHung as exc:
            st.metrics.usage_walks.labels(result="interrupted").inc()
            self.log.warning("usage_walk_hung", namespace=ns, reason=str(exc))
            return False
        finally:
            self._give_up()

    def _step(self, walk: NamespaceWalk, previous: dict[str, Any] | None, max_ops: int) -> bool:
        """Blocking: one step of the walk, then its record saved (the cursor, or the result)."""
        done = walk.step(max_ops, STEP_S)
        if walk.cancelled:  # given up while this thread was away: the descriptors are ours
            walk.close()
            with contextlib.suppress(OSError):
                os.close(walk.root_fd)
            return False
        record = measure.record_of(previous, walk, self.state.host_id, done, self.state.config.rack)
        measure.save(walk.root_fd, walk.namespace, record)
        self._figures = {**self._figures, walk.namespace: record}  # replaced, never mutated
        self.budget.spend(3)  # the record: create, write and sync, rename
        return done

    def _give_up(self) -> None:
        walk, self._walk = self._walk, None
        if walk is not None:
            walk.cancelled = True
            if self._in_flight:
                return  # the thread still inside the step stops there and closes the walk
            walk.close()
            with contextlib.suppress(OSError):
                os.close(walk.root_fd)

    def _sync_budget(self) -> None:
        self.budget.rate = self.state.config.usage.ops_per_second
        self.state.metrics.usage_walk_budget.set(self.budget.rate)

    async def _call(self, fn: Callable[[int], Any], what: str) -> Any:
        mp, dev = self.state.config.mount_point, self.state.mount_dev

        def call() -> Any:
            with safedir.closing(safedir.open_shared_root(mp, dev)) as root:
                return fn(root)

        return await self.worker.run(call, READ_TIMEOUT_S, what=what)

    # --- the figures ------------------------------------------------------------------
    async def refresh(self) -> None:
        """Reads every namespace's record and publishes them."""
        self._read_at = time.monotonic()
        self._figures = await self._call(self._read_counted, "reading usage records")
        self.publish()

    def _read_counted(self, root: int) -> dict[str, dict[str, Any]]:
        """Blocking: every record, its reads charged to the walk's budget (they cost the
        same requests on EFS)."""
        found = measure.read_sizes(root)
        self.budget.spend(2 + len(found))
        return found

    def publish(self) -> None:
        st = self.state
        m = st.metrics
        for gauge in (m.namespace_bytes, m.namespace_inodes, m.namespace_measured):
            gauge.clear()
        used: dict[str, int] = {}
        for app, rec in self._apps().items():
            totals = rec["totals"]
            all_bytes = all_inodes = 0
            for service, (n_bytes, n_inodes) in totals.items():
                all_bytes += n_bytes
                all_inodes += n_inodes
                if service != LOOSE:
                    m.namespace_bytes.labels(app=app, service=service).set(n_bytes)
                    m.namespace_inodes.labels(app=app, service=service).set(n_inodes)
            m.namespace_bytes.labels(app=app, service="").set(all_bytes)
            m.namespace_inodes.labels(app=app, service="").set(all_inodes)
            m.namespace_measured.labels(app=app).set(float(rec.get("time") or 0))
            used[app] = all_bytes
        self._judge_quotas(used)

    def _judge_quotas(self, used: dict[str, int]) -> None:
        st = self.state
        cfg = st.config.quotas
        m = st.metrics
        m.quota_bytes.clear()
        m.over_quota.clear()
        for app in {*used, *cfg.apps}:
            limit = cfg.limit_of(app)
            if limit is not None:
                m.quota_bytes.labels(app=app).set(limit.bytes)
        over = quotas.over(cfg, used)
        for app in used:
            if cfg.limit_of(app) is not None:
                m.over_quota.labels(app=app).set(1 if app in over else 0)
        for app in set(st.over_quota) - set(over):
            st.clear_warning(f"quota:{app}")
            self.log.info("quota_ok", app=app)
        fresh = {}
        for app, (n, limit) in over.items():
            fresh[app] = quotas.warning(app, n, limit, cfg.over_quota)
            st.warn(f"quota:{app}", fresh[app])
            if app not in st.over_quota:
                self.log.warning("over_quota", app=app, bytes=n, limit=limit.bytes)
        st.over_quota = fresh

    def _this_racks(self, ns: str, rec: dict[str, Any]) -> bool:
        """Whether a size record is of this rack's namespace: named `<rack>-*`, and neither
        measured by a host of another rack (whose name starts with this one's and a dash)
        nor owned by one (a record of 0.3.2 and before says no rack)."""
        rack = self.state.config.rack
        theirs = rec.get("rack")
        return (
            ns.startswith(f"{rack}-")
            and ns not in self._elsewhere
            and (not isinstance(theirs, str) or not theirs or theirs == rack)
        )

    def _apps(self) -> dict[str, dict[str, Any]]:
        """app -> its namespace's record, for the finished records of this rack."""
        prefix = f"{self.state.config.rack}-"
        out = {}
        for ns, rec in self._figures.items():
            if not self._this_racks(ns, rec) or not isinstance(rec.get("totals"), dict):
                continue
            try:
                totals = {str(k): (int(v[0]), int(v[1])) for k, v in rec["totals"].items()}
            except (TypeError, ValueError, IndexError):
                continue
            out[ns[len(prefix) :]] = {**rec, "totals": totals}
        return out

    def view(self) -> list[dict[str, Any]]:
        """The `usage` of `volagent status --rack`: one entry per app, biggest first."""
        cfg = self.state.config.quotas
        out = []
        for app, rec in self._apps().items():
            totals = rec["totals"]
            limit = cfg.limit_of(app)
            n_bytes = sum(b for b, _ in totals.values())
            walk = rec.get("walk")
            out.append(
                {
                    "app": app,
                    "namespace": rec.get("namespace"),
                    "bytes": n_bytes,
                    "inodes": sum(i for _, i in totals.values()),
                    "quota_bytes": limit.bytes if limit else None,
                    "over_quota": app in self.state.over_quota,
                    "measured": now_iso(float(rec.get("time") or 0)),
                    "measured_by": str(rec.get("host") or ""),
                    "walking": bool(walk),
                    "services": {
                        s: {"bytes": b, "inodes": i} for s, (b, i) in totals.items() if s != LOOSE
                    },
                }
            )
        return sorted(out, key=lambda u: (-int(u["bytes"]), str(u["app"])))
