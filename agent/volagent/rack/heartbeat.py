"""Heartbeats and the rack view: which hosts really share this filesystem.

Every `[health] heartbeat_interval_s` each host replaces `<mp>/.volagent/hosts/<host>.json`
(host, instance id, status, version, time) through the safe record code and the timed worker,
and only while the mount is the healthy shared filesystem: a heartbeat on local disk would
claim a rack the host is not part of. The rack view lists every host's heartbeat and flags
those older than `[health] stale_after_s`; a heartbeat written under a former name of a host
(`alias_of`), kept while its registry entries bear that name, is no host. It never hangs the
socket: the hosts directory is read with a short timeout, at most one read at a time, and the
last list read is answered when the filesystem does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import Iterable
from typing import Any

from volagent import __version__, codec, log, safedir
from volagent.aws.imds import Imds
from volagent.errors import FilesystemHung, VolagentError
from volagent.rack import records
from volagent.rack.registry import FORMAT as REGISTRY_FORMAT
from volagent.state import AgentState, now_iso
from volagent.worker import TimedWorker

# the socket answers within 100 ms; a read of the hosts directory gets most of that
RACK_READ_TIMEOUT_S = 0.08
WRITE_TIMEOUT_S = 5.0
# a host whose last heartbeat said this stopped on purpose
STOPPED = "stopped"
# instance metadata is asked for this host's instance id at start, then this often until known
IDENTIFY_RETRY_S = 600.0
IDENTIFY_TIMEOUT_S = 1.0


class HostBeat(codec.Record, frozen=True):
    """One host's heartbeat, `hosts/<host>.json`."""

    KIND = "heartbeat"
    FORMAT = (1, 2)
    host: str
    time: float  # of the beat, epoch seconds
    rack: str = ""
    instance_id: str = ""
    status: str = ""
    version: str = ""
    # the registry format this host writes (hosts on 0.2 write none: they take no part)
    registry: int | None = None
    mount_state: str = ""
    last_seen: str = ""
    interval_s: float = 0.0
    # (1.1) how long this host trusts its entries in the registry to stand without a
    # heartbeat (its `[health] forget_after_s`): other hosts forget it no sooner
    forget_after_s: float = 0.0
    # (1.1) the host this record stands for under a former name of it, kept fresh while its
    # registry entries bear that name (other hosts judge them by it); no host of the rack
    # view
    alias_of: str = ""
    # (1.2) this host's gc keeps what live entries of the registry hold (0.5): once every host
    # says so, a create the registry holds needs no mtime mark (volumes/trashcheck.py)
    gc_reads_registry: bool = False


def host_record(state: AgentState, status: str | None = None) -> HostBeat:
    """What this host's heartbeat says now."""
    now = time.time()
    return HostBeat(
        state.host_id, now, state.config.rack, state.instance_id, status or state.verdict(),
        __version__, REGISTRY_FORMAT, state.mount.state, now_iso(now),
        state.config.health.heartbeat_interval_s, state.config.health.forget_after_s,
        gc_reads_registry=True,
    )  # fmt: skip


def write_heartbeat(
    mount_point: str,
    dev: int | None,
    record: HostBeat,
    gone: Iterable[str] = (),
    kept: Iterable[str] = (),
) -> None:
    """Blocking: replaces this host's heartbeat, and those of its former names `kept` (its
    registry entries may bear them yet); removes those of its former names `gone`."""
    own = records.file_name(record.host)
    with safedir.closing(safedir.open_shared_root(mount_point, dev)) as root:
        hosts = records.ensure_dir(root, (records.AGENT_DIR, records.HOSTS_DIR))
        with safedir.closing(hosts):
            records.write_record(hosts, record.host, record.encode())
            # by file name: two host names may make one (`.a` and `a`)
            for name in kept:
                if records.file_name(name) != own:
                    former = dataclasses.replace(record, host=name, alias_of=record.host)
                    records.write_record(hosts, name, former.encode())
            for name in gone:
                if records.file_name(name) != own:
                    records.remove_record(hosts, name)


def read_heartbeats(mount_point: str, dev: int | None) -> list[HostBeat]:
    """Blocking: every valid heartbeat record under the mount point."""
    with safedir.closing(safedir.open_shared_root(mount_point, dev)) as root:
        return read_heartbeats_at(root)


def read_heartbeats_at(root_fd: int) -> list[HostBeat]:
    """Blocking: every valid heartbeat record below the mount point's descriptor."""
    hosts = records.open_dir(root_fd, (records.AGENT_DIR, records.HOSTS_DIR), create=False)
    if hosts is None:
        return []
    with safedir.closing(hosts):
        return [beat for _, beat in records.read_all(hosts, HostBeat) if beat.host]


def rack_view(heartbeats: list[HostBeat], stale_after_s: float, now: float) -> list[dict[str, Any]]:
    """The hosts of the rack, sorted by name, each flagged stale when its heartbeat is old or
    its last beat said it stopped; a host's former names (aliases) are not hosts."""
    out = []
    for beat in sorted(heartbeats, key=lambda b: b.host):
        if beat.alias_of:
            continue
        age = now - beat.time
        status = beat.status or "unknown"
        out.append(
            {
                "host": beat.host,
                "rack": beat.rack,
                "instance_id": beat.instance_id,
                "status": status,
                "version": beat.version,
                "registry": (beat.registry or 0) >= 1,
                "last_seen": now_iso(beat.time),
                "age_s": round(age, 1),
                # a host that said goodbye is not sharing the filesystem any more
                "stale": age > stale_after_s or status == STOPPED,
            }
        )
    return out


class Heartbeat:
    """The root task writing this host's heartbeat, and the rack view for the socket."""

    def __init__(self, state: AgentState, worker: TimedWorker) -> None:
        self.state = state
        self.worker = worker
        self.log = log.get("heartbeat")
        self._wake = asyncio.Event()
        # the names this process wrote heartbeats under, the current one among them (a write
        # given up on may land yet)
        self._names: set[str] = set()
        self._known: list[HostBeat] = []
        self._reading: asyncio.Future[list[HostBeat]] | None = None
        self._reading_epoch = 0  # the mount's epoch when the read under way began
        self._judged_epoch: int | None = None  # the mount's epoch of the last rack judged
        self._failing = False
        self._identify_at = 0.0

    def wake(self) -> None:
        """Beat now (the config changed, the mount came back)."""
        self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                await self.identify()
                await self.beat()
                await self._judge_once_a_mount()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.state.config.health.heartbeat_interval_s):
                        await self._wake.wait()
        except asyncio.CancelledError:
            await self._farewell()
            raise

    async def identify(self) -> None:
        """Learns this instance's id from instance metadata (the mount side's IMDSv2 client):
        the contract names a host by its instance id unless `host_id` is set. Off EC2 the
        hostname stays, and metadata is asked again only every IDENTIFY_RETRY_S."""
        st = self.state
        if st.instance_id or time.monotonic() < self._identify_at:
            return
        self._identify_at = time.monotonic() + IDENTIFY_RETRY_S
        imds = Imds(st.config.aws.imds_endpoint, timeout=IDENTIFY_TIMEOUT_S, attempts=1)
        try:
            async with asyncio.timeout(3 * IDENTIFY_TIMEOUT_S):
                found = await asyncio.to_thread(imds.required, "instance-id")
        except (TimeoutError, VolagentError) as exc:
            self.log.debug("instance_id_unknown", reason=str(exc))
            return
        st.instance_id = found
        if not st.config.host_id:
            st.rename(found)
        self.log.info("host_identified", host=st.host_id, instance_id=found)

    async def beat(self, status: str | None = None) -> bool:
        """Writes one heartbeat; False when it was skipped or failed."""
        st = self.state
        metrics = st.metrics
        if not st.mount_healthy or st.mount_dev is None or not st.host_id:
            metrics.heartbeats.labels(result="skipped").inc()
            return False
        record = host_record(st, status)
        # other hosts forget the registry entries of a host without a fresh heartbeat: those
        # of former names are written too until this host's entries bear the current name
        # (the registry's keeper sets `entries_named`), then removed
        formers = sorted(self._names - {record.host})
        settled = st.entries_named == record.host
        call = functools.partial(
            write_heartbeat,
            st.config.mount_point,
            st.mount_dev,
            record,
            gone=formers if settled else (),
            kept=() if settled else formers,
        )
        self._names.add(record.host)
        st.note_heartbeat_sent(record.time, record.forget_after_s)
        try:
            await self.worker.run(call, WRITE_TIMEOUT_S, what="writing the heartbeat")
        except (VolagentError, OSError) as exc:
            metrics.heartbeats.labels(result="failed").inc()
            if not self._failing:
                self.log.warning("heartbeat_failed", reason=str(exc))
            self._failing = True
            st.warn("heartbeat", f"cannot write this host's heartbeat: {exc}")
            return False
        if self._failing:
            self.log.info("heartbeat_restored")
        self._failing = False
        st.clear_warning("heartbeat")
        if settled:
            self._names = {record.host}
        st.note_heartbeat(record.time, record.forget_after_s)  # what other hosts judge by
        metrics.heartbeats.labels(result="written").inc()
        # the rack view is read when asked (status --rack, the usage walk), never with each
        # beat: every host reading every heartbeat each beat grows with the square of the rack
        return True

    async def _farewell(self) -> None:
        """On stop, tell the rack this host stopped on purpose (bounded: may be hung)."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self.beat(status=STOPPED)

    async def hosts(self, timeout: float = RACK_READ_TIMEOUT_S) -> list[dict[str, Any]]:
        """The rack view for `GET /v1/status?rack=1`: read now if the filesystem answers
        within `timeout`, else the last list read."""
        st = self.state
        if not st.mount_healthy or st.mount_dev is None:
            return self._view()
        if self._reading is None or self._reading.done():
            self._reading_epoch = st.mount_epoch
            # one read at a time: on a hung mount, callers share the read already waiting
            self._reading = asyncio.wrap_future(
                self.worker.submit(
                    functools.partial(read_heartbeats, st.config.mount_point, st.mount_dev)
                )
            )
            # a read nobody waits for any more still has its outcome collected
            self._reading.add_done_callback(_collect)
        try:
            async with asyncio.timeout(timeout):
                self._known = await asyncio.shield(self._reading)
            self._judge_gc(self._known, self._reading_epoch)
        except (TimeoutError, FilesystemHung):
            pass
        except (VolagentError, OSError) as exc:
            self.log.debug("rack_read_failed", reason=str(exc))
        return self._view()

    def _view(self) -> list[dict[str, Any]]:
        view = rack_view(self._known, self.state.config.health.stale_after_s, time.time())
        stale = sum(1 for v in view if v["stale"])
        self.state.metrics.rack_hosts.labels(freshness="fresh").set(len(view) - stale)
        self.state.metrics.rack_hosts.labels(freshness="stale").set(stale)
        self._warn_outside(view)
        return view

    async def _judge_once_a_mount(self) -> None:
        """Reads the rack view once after each mount (the usage walk reads it once a pass, an
        hour apart by default): creates leave out gc's mark only while it says so."""
        st = self.state
        if st.mount_healthy and self._judged_epoch != st.mount_epoch:
            await self.hosts()  # a read that does not answer in time: again at the next beat

    def _judge_gc(self, beats: list[HostBeat], epoch: int) -> None:
        """Whether every host sharing the filesystem runs a gc that reads the registry (its
        heartbeat says so): a host that said otherwise in the last `forget_after_s` (0.4 and
        before) may run a gc that judges by mtimes and usage records alone, and creates keep
        marking for it. Judged at each read of the rack view, for the mount it was read on."""
        st = self.state
        now = time.time()
        horizon = st.config.health.forget_after_s
        older = sorted(
            b.host
            for b in beats
            if not b.alias_of and not b.gc_reads_registry and now - b.time <= horizon
        )
        judged = None if older else epoch
        if (judged is None) != (st.gc_reads_registry_in is None):
            if older:
                self.log.info("gc_marks_kept", hosts=older[:5], more=max(len(older) - 5, 0))
            else:
                self.log.info("gc_marks_left_out")
        st.gc_reads_registry_in = judged
        self._judged_epoch = epoch

    def _warn_outside(self, view: list[dict[str, Any]]) -> None:
        """Warns while a live host sharing the filesystem takes no part in the registry (one
        on 0.2: since 0.4 nothing judges its binds). Set whenever the view is read: once a
        pass of the usage walk, and at each `status --rack`."""
        outside = [str(v["host"]) for v in view if not v["stale"] and not v["registry"]]
        if not outside:
            self.state.clear_warning("registry.outside")
            return
        more = f" and {len(outside) - 5} more" if len(outside) > 5 else ""
        self.state.warn(
            "registry.outside",
            f"hosts {', '.join(outside[:5])}{more} take no part in the rack's registry of "
            "binds (volagent 0.2): since 0.4 their binds are not judged and rule 7 does not "
            "hold against them; upgrade them to 0.3 or later",
        )


def _collect(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
