"""This host's side of the rack-wide registry: the claim a create or start makes before it is
allowed, and the root task keeping this host's entries what it runs.

`claim` runs in a worker of its own with the directory timeout: a registry that does not
answer in time fails the volumes it was asked about (the guard refuses the create, fail
closed); a bind that nests another host's live bind is a rule 7 violation. A path this host
holds an entry of already needs no transaction (`_holds`): no other host can have registered
a bind nesting it since (the file's lock), nor dropped this host's entry while its heartbeat
is fresh. That holds of an entry written when nothing nested it: the keeper's entries judge
nothing, so a path it wrote beside another host's nesting entry (`contested`) is claimed
under the lock. The claim's entries name the create's request; the name stays.

`Registry.run` looks each second at the paths the daemon's table binds (containers, and
creates being judged or allowed and not answered) and, per namespace whose paths changed,
sets this host's entries in the file to hold them, one entry a path
(`registry_claim.set_own`): a path no container binds any more goes, so a create answered
by Docker writes nothing. A claim and the keeper's update of one namespace take turns (a
lock of the namespace on the loop), so what this host notes as held is what the file holds.
The first pass, once Docker's containers are listed, covers every namespace this host held
entries in before (remembered under `state_dir`), so a restarted agent removes the entries
of containers that went while it was down; every VERIFY_INTERVAL_S it reads its namespaces
again, restoring an entry that went missing. Nothing is written while nothing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

from volagent import log
from volagent.errors import FilesystemHung, MountUnhealthy, NamespaceViolation, VolagentError
from volagent.rack import registry_claim
from volagent.rack.registry import Entry
from volagent.rack.usage import recorder
from volagent.rack.usage.recorder import Key, key_of
from volagent.state import AgentState, VolumeRecord
from volagent.vocabulary import VolumeState
from volagent.worker import TimedWorker

SYNC_INTERVAL_S = 1.0
DEADLINE_SHARE = 0.8
FAILURE_BACKOFF_S = 10.0
REMEMBERED = "registry-namespaces.json"
# how often the keeper reads its namespaces again though nothing changed here (an entry
# removed by hand, or forgotten by another host while this one's heartbeats failed)
VERIFY_INTERVAL_S = 300.0
# what a `ref` of an entry says for a create not answered yet: the digest of its request
REQUEST_PREFIX = "request:"

Own = dict[str, dict[str, tuple[str, str]]]  # namespace -> path -> (ref, container name)
Answered = Callable[[registry_claim.ClaimResult], None]
Where = tuple[int | None, int, str]  # the mount's device and epoch, the host's name
HoldingKey = tuple[Where, int]  # see Registry.holding_key


def request_ref(key: bytes) -> str:
    return REQUEST_PREFIX + key.hex()[:32]


class Registry:
    """Claims in the registry and keeps this host's entries; owned by the event loop."""

    def __init__(self, state: AgentState) -> None:
        self.state = state
        # a worker of its own: a hung registry never takes the directory walk's threads
        self.worker = TimedWorker("registry", max_threads=4)
        self.log = log.get("registry")
        # the paths this host's entries surely hold, per namespace, on the mount and under the
        # host name `_held_as`
        self._held: dict[str, frozenset[str]] = {}
        self._held_as: tuple[Where, int] | None = None  # and the heartbeat's lapses then
        # of those, the paths the keeper wrote beside another host's entry nesting them (it
        # writes what this host binds, judged or not): claimed under the lock all the same
        self._contested: dict[str, frozenset[str]] = {}
        # a claim and the keeper's update of one namespace take turns
        self._turns: dict[str, asyncio.Lock] = {}
        # namespaces whose entries are not known: a transaction failed, or may yet land
        self._unsure: set[str] = set()
        self._verify_at = 0.0
        self._synced_once = False
        self._retry_at = 0.0
        self._noted: list[str] | None = None  # the namespaces last noted under state_dir
        # the host names this process wrote entries under: those of former names go at the
        # keeper's passes until a whole one under the current name (a destroyed container's
        # entry of a former name would stand in the way until forgotten)
        self._names: set[str] = set()

    # --- the claim ----------------------------------------------------------------------
    async def claim(
        self,
        volumes: list[VolumeRecord],
        plans: list[Any],
        ref: str,
        name: str,
        *,
        taken: Callable[[str], None] | None = None,
    ) -> set[str]:
        """Registers the planned binds among `volumes` under `ref`; a bind that nests another
        host's becomes a violation, one the registry could not be asked about `failed`. The
        host paths an entry of this host holds now, as gc's last judgement will read them
        (ops/gc/registered.py). `taken(ns)` is called on the loop once a transaction holds
        namespace `ns`'s lock (not for a namespace whose paths are held already)."""
        st = self.state
        registered: set[str] = set()
        if not st.mount_healthy or st.mount_dev is None:
            return registered  # the guard decides on the unhealthy mount itself
        by_ns: dict[str, list[VolumeRecord]] = {}
        judged = (VolumeState.VIOLATION, VolumeState.FAILED)
        for vol, plan in zip(volumes, plans, strict=True):
            if isinstance(plan, NamespaceViolation) or vol.state in judged:
                continue
            key = key_of(st.config.mount_point, vol.host)
            if key is not None and key[0]:
                by_ns.setdefault(key[0], []).append(vol)
        for ns, vols in by_ns.items():
            if await self._claim_in(ns, vols, (volumes, plans), ref, name, taken=taken):
                registered.update(v.host for v in vols)
        return registered

    async def _claim_in(
        self,
        ns: str,
        vols: list[VolumeRecord],
        outcome: tuple[list[VolumeRecord], list[Any]],
        ref: str,
        name: str,
        *,
        taken: Callable[[str], None] | None = None,
    ) -> bool:
        """Whether this host's entries hold every path of `vols` now."""
        st = self.state
        mp = st.config.mount_point
        paths = {registry_claim.relative(mp, v.host) for v in vols}
        turn = self._turns.setdefault(ns, asyncio.Lock())
        if not turn.locked() and self._holds(ns, paths):
            st.metrics.registry_claims.labels(result="held").inc()
            return True
        timeout = st.config.directories.timeout_s
        deadline = time.monotonic() + timeout
        try:
            # the keeper's update under way first: what it leaves is what this host holds
            await asyncio.wait_for(turn.acquire(), timeout)
        except TimeoutError:
            self._failed(ns, vols, timeout, "another update of it did not end in time")
            return False
        try:
            if self._holds(ns, paths):
                st.metrics.registry_claims.labels(result="held").inc()
                return True
            wanted = [Entry(st.host_id, ref, name, p, time.time()) for p in sorted(paths)]
            where = self._where()  # the filesystem and host name the entries are written as
            key = self.holding_key()
            left = max(deadline - time.monotonic(), 0.0)
            # the thread gives up a little before its caller does, so a lock held elsewhere is
            # refused as that, not as a hung filesystem; counted from now, not from when a
            # thread of the worker takes the job: it must write nothing once its caller has
            # given up
            until = time.monotonic() + left * DEADLINE_SHARE
            loop = asyncio.get_running_loop()

            def on_lock() -> None:  # in the worker's thread: `taken` runs on the loop
                if taken is not None:
                    loop.call_soon_threadsafe(taken, ns)

            job = functools.partial(self._claim_job, ns, where, wanted, until, on_lock)
            self._names.add(where[2])
            try:
                result = await self._answer_of(job, left, ns)
            except (VolagentError, OSError) as exc:
                self._unsure.add(ns)  # its thread may write yet: the keeper reads the file again
                self._failed(ns, vols, timeout, str(exc))
                return False
            if result.expired:
                self.log.info("registry_hosts_forgotten", namespace=ns, hosts=result.expired)
            if result.clashes:
                self._clashed(vols, outcome, result.clashes)
                return False
            st.metrics.registry_claims.labels(result="registered").inc()
            if self.holding_key() != key:
                # remounted, or renamed, meanwhile: the entries are not where it looks; or a
                # heartbeat lapsed: what the claim found may have been forgotten since
                return False
            # every path asked for has an entry of this host now (written, or there already)
            self._note_held(ns, self._held_now().get(ns, frozenset()) | paths)
            self._contested[ns] = self._contested.get(ns, frozenset()) - paths
            return True
        finally:
            turn.release()

    async def _answer_of(
        self, job: Callable[[Answered], registry_claim.ClaimResult], timeout: float, ns: str
    ) -> registry_claim.ClaimResult:
        """The claim's outcome once its job has made it final (the entries renamed into
        place), without waiting for the unlock's round trip: the job's thread goes on to
        unlock, and a failure then is only logged (the lock goes with the descriptor's close,
        and the entries are in place)."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[registry_claim.ClaimResult] = loop.create_future()

        def answered(result: registry_claim.ClaimResult) -> None:  # in the worker's thread
            loop.call_soon_threadsafe(_settle, answer, result)

        what = f"consulting the registry of {ns}"
        running = asyncio.ensure_future(
            self.worker.run(functools.partial(job, answered), timeout, what)
        )
        try:
            await asyncio.wait((answer, running), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            running.cancel()
            raise
        # the job answers before it returns, so an answer given is seen here first
        if answer.done():
            running.add_done_callback(functools.partial(self._unlocked, ns))
            return answer.result()
        answer.cancel()
        return running.result()

    def _unlocked(self, ns: str, running: asyncio.Future[Any]) -> None:
        """The end of a claim answered before its unlock."""
        if running.cancelled():
            return
        exc = running.exception()
        if exc is not None:
            self.log.warning("registry_unlock_failed", namespace=ns, reason=str(exc))

    def _clashed(
        self,
        vols: list[VolumeRecord],
        outcome: tuple[list[VolumeRecord], list[Any]],
        clashes: dict[str, str],
    ) -> None:
        """Rule 7 violations of the volumes whose paths (relative, as entries hold them)
        nest a bind of another host: why, by path."""
        st = self.state
        volumes, plans = outcome
        st.metrics.registry_claims.labels(result="clash").inc()
        for v in vols:
            clash = clashes.get(registry_claim.relative(st.config.mount_point, v.host))
            if clash is not None:
                violation = NamespaceViolation(7, clash)
                plans[volumes.index(v)] = violation
                st.set_volume_state(v, VolumeState.VIOLATION, str(violation))

    def _note_held(self, ns: str, paths: frozenset[str]) -> None:
        """The paths this host's entries of `ns` hold now."""
        self._held_now()[ns] = paths

    def _failed(self, ns: str, vols: list[VolumeRecord], timeout: float, reason: str) -> None:
        st = self.state
        st.metrics.registry_claims.labels(result="failed").inc()
        self.log.warning("registry_unreachable", namespace=ns, reason=reason)
        why = (
            f"volagent could not consult the rack's registry of binds for {ns} within "
            f"{timeout:g}s ({reason}); a bind that might nest another host's is refused"
        )
        for v in vols:
            st.set_volume_state(v, VolumeState.FAILED, why)

    def _where(self) -> Where:
        """Where this host's entries are written now: the filesystem (its device, and which
        mount of it: a remount may reuse the device number) and the host's name."""
        st = self.state
        return (st.mount_dev, st.mount_epoch, st.host_id)

    def _held_now(self) -> dict[str, frozenset[str]]:
        """The paths this host's entries surely hold; none once the filesystem changed, or
        the host's name (entries written under another name are not this host's now), or
        once a heartbeat landed after this host's entries stopped being surely kept (any of
        them may have been forgotten meanwhile, and another host's bind nest them)."""
        if self._held_as != self.holding_key():
            self._held = {}
            self._contested = {}
            self._held_as = self.holding_key()
            self._synced_once = False  # the whole pass again, on the filesystem mounted now
        return self._held

    def holding_key(self) -> HoldingKey:
        """What this host's holding of its entries is as of: the filesystem and name they are
        written as, and its heartbeat lapses so far. Any change of it drops what this host
        counts as held (`_held_now`); other hosts forget entries only after a lapse, which
        counts once a heartbeat lands again (meanwhile `_holds` trusts nothing)."""
        return (self._where(), self.state.heartbeat_lapses)

    def holding_of(self, host_path: str) -> HoldingKey | None:
        """The holding key while this host's entries surely hold `host_path` now (as a claim
        judges it that needs no transaction: `_holds`), None otherwise: a path of the same
        key at two moments was held without a break between them."""
        mp = self.state.config.mount_point
        key = key_of(mp, host_path)
        if key is None or not key[0]:
            return None
        if not self._holds(key[0], {registry_claim.relative(mp, host_path)}):
            return None
        return self.holding_key()

    def _holds(self, ns: str, paths: set[str]) -> bool:
        """Whether a claim of `paths` needs no transaction: this host's entries hold them
        all, written when nothing nested them (not `contested`), so no other host registered a
        bind nesting them since (they would have met the entry under the lock); other hosts
        drop a host's entries only after the `forget_after_s` its last heartbeat said without
        a sign of life, and that heartbeat is younger than half of it, and no older one was
        (`_held_now`)."""
        st = self.state
        now = time.time()
        fresh = now < st.entries_trusted_until
        held = self._held_now().get(ns, frozenset())
        return fresh and paths <= held - self._contested.get(ns, frozenset())

    def _claim_job(  # noqa: PLR0917 - the claim's own arguments, passed on
        self,
        ns: str,
        where: Where,
        wanted: list[Entry],
        deadline: float,
        taken: Callable[[], None] | None,
        answered: Answered,
    ) -> registry_claim.ClaimResult:
        """Blocking: the claim under the lock, on the filesystem and as the host `where`
        names (as they were when it was asked); `taken` once it holds the lock, `answered`
        once its outcome is final."""
        st = self.state
        dev, epoch, host = where
        return registry_claim.claim(
            st.config.mount_point,
            dev,
            ns,
            host=host,
            wanted=wanted,
            expire_after_s=st.config.health.forget_after_s,
            deadline=deadline,
            epoch=epoch,
            # gc counts a gone host's entries as uses at their time: recorded before they go
            dropping=functools.partial(recorder.keep_uses, st.config.mount_point, dev),
            taken=taken,
            answered=answered,
        )

    # --- this host's entries -------------------------------------------------------------
    def own(self) -> Own:
        """The paths this host binds, per namespace, each with a container binding it (its
        entry's ref and name when one is written): every bind of a container in the table
        (violations aside) and of every create allowed and not answered yet."""
        st = self.state
        mp = st.config.mount_point
        out: Own = {}

        def add(ref: str, path: str, name: str) -> None:
            key = key_of(mp, path)
            if key is not None and key[0]:
                out.setdefault(key[0], {})[registry_claim.relative(mp, path)] = (ref, name)

        for key, paths in st.reserved_binds.items():
            for path in paths:
                add(request_ref(key), path, "")
        for c in st.containers.values():  # a container's id rather than a request's digest
            for v in c.volumes:
                if v.state != VolumeState.VIOLATION:
                    add(c.id, v.host, c.name)
        return out

    async def run(self) -> None:
        # the worker stays open when this task ends: the guard, still answering while the
        # daemon stops, claims through it (the daemon closes it once the guard has stopped)
        while True:
            with contextlib.suppress(VolagentError, OSError):
                await self.sync()
            await asyncio.sleep(SYNC_INTERVAL_S)

    async def sync(self) -> int:
        """Sets this host's entries where its paths changed; how many namespaces were set."""
        st = self.state
        if not st.mount_healthy or st.mount_dev is None or not st.containers_listed.is_set():
            return 0
        if time.monotonic() < self._retry_at:
            return 0
        where = self._where()
        held = self._held_now()
        key = self.holding_key()  # the pass is whole only if this stays so throughout
        own = self.own()
        todo = {
            ns
            for ns in own.keys() | held.keys()
            if frozenset(own.get(ns, {})) != held.get(ns, frozenset())
        }
        todo |= self._unsure
        if not self._synced_once:
            todo |= set(await self._remembered()) | set(own)
        if time.monotonic() >= self._verify_at:
            todo |= set(held)
            self._verify_at = time.monotonic() + VERIFY_INTERVAL_S
        done = 0
        for ns in sorted(todo):
            async with self._turns.setdefault(ns, asyncio.Lock()):
                error = await self._set_own(ns)
            if error is None:
                done += 1
                continue
            self._retry_at = time.monotonic() + FAILURE_BACKOFF_S
            if isinstance(error, FilesystemHung | MountUnhealthy):
                return done  # the filesystem's failing: the other namespaces would wait too
            # this namespace's file (unreadable, locked by a host gone): the others go on,
            # and it is tried again after the pause (`_unsure`)
        # a claim may have registered a namespace though the keeper wrote nothing
        noted = sorted(self._held_now().keys() | self._unsure)
        if noted != self._noted:
            await self._remember(noted)
        # else the filesystem, the name or the heartbeat's run changed meanwhile: the whole
        # pass again
        self._synced_once = self._held_as == key
        if self._synced_once and not self._unsure:
            st.entries_named = where[2]  # a former name's heartbeat may go now
            self._names = {where[2]}
        return done

    async def _set_own(self, ns: str) -> VolagentError | OSError | None:
        """One namespace's update, in its turn: looks at what this host binds now (no claim
        runs meanwhile), and notes those paths held once they are written. Its error, if it
        failed."""
        st = self.state
        now = time.time()
        paths = self.own().get(ns, {})
        where = self._where()
        self._held_now().pop(ns, None)  # not known while under way
        key = self.holding_key()
        live = [Entry(st.host_id, ref, name, path, now) for path, (ref, name) in paths.items()]
        timeout = st.config.directories.timeout_s
        # what the worker needs to record the uses that end, taken here on the loop
        names, since = recorder.in_use(st), dict(st.usage_recorded)
        ends_recorded: list[Key] = []

        def ended(entries: list[Entry]) -> None:
            # in the worker, under the lock: recorded before their entries go
            ends_recorded.extend(
                recorder.record_ends(
                    st.config.mount_point,
                    where[0],
                    where[2],
                    entries,
                    names,
                    since,
                    now,
                )
            )

        job = functools.partial(
            registry_claim.set_own,
            st.config.mount_point,
            where[0],
            ns,
            host=where[2],
            live=live,
            # the thread gives up first, as a claim's does: a lock held elsewhere is that
            # namespace's failure, not a hung filesystem's
            deadline=time.monotonic() + timeout * DEADLINE_SHARE,
            epoch=where[1],
            formers=frozenset(self._names - {where[2]}),
            ended=ended,
        )
        self._names.add(where[2])
        try:
            result = await self.worker.run(job, timeout, what=f"updating the registry of {ns}")
        except (VolagentError, OSError) as exc:
            self.log.warning("registry_update_failed", namespace=ns, reason=str(exc))
            self._unsure.add(ns)
            # the records that landed are not written again next time (a transaction that
            # came too late for its records would else start them over for ever)
            self._note_ends(ends_recorded, names, now)
            return exc
        self._unsure.discard(ns)
        self._note_ends(ends_recorded, names, now)
        if paths and self.holding_key() == key:
            self._note_held(ns, frozenset(paths))
            self._contested[ns] = result.contested
        if result.unrecorded:
            # written but for the entries of uses whose end has no record: they stay (gc
            # counts them) and their removal is tried again after a pause
            self._unsure.add(ns)
            self.log.warning("usage_end_unrecorded", namespace=ns, reason=result.unrecorded)
            st.warn(
                f"registry.unrecorded.{ns}",
                f"the end of uses in {ns} cannot be recorded ({result.unrecorded}): their "
                "registry entries stay, and keep nested binds on other hosts refused",
            )
            return VolagentError(result.unrecorded)
        st.clear_warning(f"registry.unrecorded.{ns}")
        return None

    def _note_ends(self, keys: list[Key], names: dict[Key, list[str]], now: float) -> None:
        """The records of uses' ends the keeper wrote, as of `now`."""
        st = self.state
        for key in keys:
            st.usage_recorded[key] = now
            if not names.get(key):  # all of the directory's use ended
                st.use_ends_recorded[key] = now

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
            return
        self._noted = namespaces


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # its caller may have given up meanwhile
        future.set_result(result)
