"""Usage records: which namespace directories the containers of each host use, for gc.

A directory in use is the second-level directory `<mp>/<top>/<dir>` that a bind of any
container known on this host reaches (created, running or stopped: a stopped container keeps
its data), whoever the container is (labeled or not, in violation or not) and whatever the
names (`<mp>/<rack>-<app>/.shared/db` is a use of `.shared`). Each host keeps one record per
directory, `<mp>/.volagent/usage/<top>/<dir>/<host>.json`, holding the time it last saw the
directory in use; a bind of a whole top-level directory is recorded as
`<mp>/.volagent/usage/<top>/<host>.json`, one of the mount point itself as
`<mp>/.volagent/usage/<host>.json`. gc on any host reads them all and takes the newest. A
new use is recorded within a second; an ongoing one is refreshed every REFRESH_S, so writes
stay few; a use that ends gets a last record. Records are written like heartbeats: through
the timed worker, only onto the healthy shared filesystem.

Since 0.5, while every host sharing the filesystem runs a gc that reads the rack's registry
(rack/heartbeat.py judges it), a new use whose every volume is ready gets its first record
at the first refresh instead of at once: each of its binds was claimed in the registry
(whose entry gc counts, live or within its window: ops/gc/registered.py) or, walked by the
Docker watch without a claim, marked for gc (volumes/trashcheck.py). That takes a record
write out of a container's first start. A use that ends before its first refresh gets its
last record: from this task, or from the registry's keeper, which records the end of a use
before it removes this host's entry of it (rack/registry_task.py), so no moment passes with
neither; when the keeper recorded the end of all of a directory's use since this task's last
record of it, this task writes none.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import posixpath
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import field
from typing import Any

from volagent import codec, log, safedir
from volagent.errors import RecordError, VolagentError
from volagent.rack import records, trash
from volagent.rack.registry import FORMAT as REGISTRY_FORMAT
from volagent.rack.registry import Entry
from volagent.state import AgentState, now_iso
from volagent.vocabulary import VolumeState
from volagent.worker import TimedWorker

SCAN_INTERVAL_S = 1.0
REFRESH_S = 300.0
WRITE_TIMEOUT_S = 10.0
MAX_CONTAINER_NAMES = 8
FAILURE_BACKOFF_S = 30.0
RECORDED_KEPT_S = 2 * REFRESH_S  # older times of this host's records are not asked for

Key = tuple[str, str]  # (top-level directory, directory below it); "" for the whole of it
MOUNT_ROOT: Key = ("", "")


def key_of(mount_point: str, host_path: str) -> Key | None:
    """The (top-level directory, directory below it) a bind's host path lies in: ("ns", "")
    for a top-level directory itself, MOUNT_ROOT for the mount point; None for a path not
    under the mount point, or in volagent's own `.volagent`. Cleaned as Docker cleans a bind
    source (a leading `//` is `/`, `..` resolved lexically)."""
    mp = posixpath.normpath("/" + mount_point.lstrip("/"))
    path = posixpath.normpath("/" + host_path.lstrip("/"))
    if path == mp:
        return MOUNT_ROOT
    if not path.startswith(mp.rstrip("/") + "/"):
        return None
    parts = [p for p in path[len(mp) :].split("/") if p]
    if parts[0] == records.AGENT_DIR:
        return None
    return parts[0], parts[1] if len(parts) > 1 else ""


def covered(state: AgentState) -> set[Key]:
    """The directories every volume reaching which is ready: claimed in the registry or
    marked for gc when it was walked."""
    mp = state.config.mount_point
    ready: set[Key] = set()
    not_ready: set[Key] = set()
    for c in state.containers.values():
        for v in c.volumes:
            key = key_of(mp, v.host)
            if key is not None:
                (ready if v.state == VolumeState.READY else not_ready).add(key)
    return ready - not_ready


def in_use(state: AgentState) -> dict[Key, list[str]]:
    """Every directory the containers known here use, with the names of those containers:
    every volume on the shared filesystem counts, its state (violation included) and the
    container's identity (unlabeled included) notwithstanding."""
    mp = state.config.mount_point
    out: dict[Key, list[str]] = {}
    for c in state.containers.values():
        for v in c.volumes:
            key = key_of(mp, v.host)
            if key is not None:
                names = out.setdefault(key, [])
                name = c.name or c.id[:12]
                if name not in names:
                    names.append(name)
    return out


class UsageRecord(codec.Record, frozen=True):
    """One host's use of one directory, `usage/<top>/<dir>/<host>.json`."""

    KIND = "usage record"
    time: float  # of the last use, epoch seconds
    host: str = ""
    namespace: str = ""
    directory: str = ""
    last_used: str = ""
    containers: list[str] | None = None  # None: not said (gc takes it for in use)
    # the bind paths, by which 0.2 hosts judge nesting (0.3 hosts read a 0.2 host's): none
    # since 0.4, whose records 0.3 hosts read for `registry` alone (below)
    binds: list[str] = field(default_factory=list)
    # the registry format the writer writes: its binds are in the registry (0.3 hosts, which
    # read the binds of hosts that take no part, read no more of a fresh record with it)
    registry: int | None = None


def usage_record(host: str, key: Key, containers: Iterable[str], now: float) -> UsageRecord:
    names = sorted(containers)[:MAX_CONTAINER_NAMES]
    return UsageRecord(now, host, *key, now_iso(now), names, [], REGISTRY_FORMAT)


def write_usage(
    mount_point: str, dev: int | None, host: str, batch: list[tuple[Key, UsageRecord]]
) -> list[Key]:
    """Blocking: writes each record; the keys written (all of them, or it raised)."""
    done = []
    with safedir.closing(safedir.open_shared_root(mount_point, dev)) as root:
        for key, record in batch:
            parts = (records.AGENT_DIR, records.USAGE_DIR, *(p for p in key if p))
            with safedir.closing(records.open_own_dir(root, parts)) as d:
                records.write_record(d, host, record.encode())
            done.append(key)
    return done


def entry_key(mount_point: str, entry: Entry) -> Key | None:
    """The directory a registry entry's bind lies in (entries hold paths below the mount
    point); None for one of volagent's own, or of no namespace."""
    key = key_of(mount_point, mount_point.rstrip("/") + "/" + entry.path)
    return key if key is not None and key[0] else None


def keep_uses(mount_point: str, dev: int | None, entries: Iterable[Entry]) -> None:
    """Blocking: a usage record of each entry's directory on behalf of its host, at the
    entry's time, where that host's record says less (`_older_than`): before a claim drops
    the entries of a host gone for good (registry_claim), which gc counts as uses at their
    time, the record keeps what they said for gc's window."""
    newest: dict[tuple[str, Key], float] = {}
    for e in entries:
        key = entry_key(mount_point, e)
        if key is not None:
            newest[(e.host, key)] = max(e.time, newest.get((e.host, key), 0.0))
    due: dict[str, list[tuple[Key, UsageRecord]]] = {}
    with safedir.closing(safedir.open_shared_root(mount_point, dev)) as root:
        for (host, key), at in sorted(newest.items()):
            parts = (records.AGENT_DIR, records.USAGE_DIR, *key)
            d = records.open_dir(root, parts, create=False)
            had = None
            if d is not None:
                with safedir.closing(d):
                    had = records.read_record(d, records.file_name(host) + records.SUFFIX)
            if _older_than(had, at, "/".join(key)):
                due.setdefault(host, []).append((key, usage_record(host, key, [], at)))
    for host, batch in due.items():
        write_usage(mount_point, dev, host, batch)


def _older_than(raw: dict[str, Any] | None, at: float, where: str) -> bool:
    """Whether a host's record (raw, None: it has none) says less than a use at `at`: none,
    one older, or one no volagent can read (a newer version's is left alone)."""
    if raw is None:
        return True
    try:
        return UsageRecord.decode(raw, where).time < at
    except RecordError:
        with contextlib.suppress(RecordError):
            codec.readable(raw, where, UsageRecord.FORMAT)
            return True  # garbled, not newer: it keeps nothing for gc
        return False


def record_ends(  # noqa: PLR0917 - what the keeper knows of this host's uses, passed on
    mount_point: str,
    dev: int | None,
    host: str,
    entries: Iterable[Entry],
    names: Mapping[Key, list[str]],
    recorded: Mapping[Key, float],
    now: float,
) -> list[Key]:
    """Blocking: this host's usage record, as of `now`, of each directory whose entries go
    (the registry's keeper, before it removes them): the end of a use gc counted by the
    entry. Not for a directory this host recorded since its entry was written (`recorded`),
    nor for one gc moved into the trash (the entry of a create refused for it ends no use);
    `names`: the containers that use each directory still. The keys written."""
    newest: dict[Key, float] = {}
    for e in entries:
        key = entry_key(mount_point, e)
        if key is not None:
            newest[key] = max(e.time, newest.get(key, 0.0))
    due = [k for k, at in sorted(newest.items()) if recorded.get(k, 0.0) < at]
    if not due:
        return []
    with safedir.closing(safedir.open_shared_root(mount_point, dev)) as root:
        trash_fd = trash.open_trash(root, create=False)
        if trash_fd is not None:
            with safedir.closing(trash_fd):
                due = [k for k in due if not _moved_to_trash(trash_fd, k)]
    batch = [(key, usage_record(host, key, names.get(key, []), now)) for key in due]
    return write_usage(mount_point, dev, host, batch) if batch else []


def _moved_to_trash(trash_fd: int, key: Key) -> bool:
    """Whether gc moved the directory into the trash: an entry of it holds a directory. One
    only claimed (its record alone) may be judged yet, and kept for this use."""
    entry = trash.holding(trash_fd, key[0], key[1] or None)
    if entry is None:
        return False
    try:
        found = os.stat(entry, dir_fd=trash_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(found.st_mode)


def usage_dirs(root_fd: int) -> Iterator[tuple[Key, int]]:
    """Blocking: each directory of usage records below the mount point's descriptor, with
    the key its records are of: the mount point's own, each top-level directory's, each
    directory's below those. A descriptor is closed when the walk moves on."""
    usage = records.open_dir(root_fd, (records.AGENT_DIR, records.USAGE_DIR), create=False)
    if usage is None:
        return
    with safedir.closing(usage):
        yield MOUNT_ROOT, usage
        for top, top_fd in records.open_each(usage, safedir.subdirs(usage, dots=True)):
            yield (top, ""), top_fd
            # one swapped for something else since it was listed is skipped
            dirs = safedir.subdirs(top_fd, dots=True)
            for d, d_fd in records.open_each(top_fd, dirs, skip_unusable=True):
                yield (top, d), d_fd


def own_records(mount_point: str, dev: int | None, host: str) -> set[Key]:
    """Blocking: the directories this host's records (of an earlier run too) say it uses;
    those listing no container are left out."""
    found: set[Key] = set()
    name = records.file_name(host) + records.SUFFIX
    with safedir.closing(safedir.open_shared_root(mount_point, dev)) as root:
        for key, fd in usage_dirs(root):
            record = records.read_one(fd, name, UsageRecord)
            if record and record.containers:
                found.add(key)
    return found


class UsageRecorder:
    """The root task keeping this host's usage records current."""

    def __init__(self, state: AgentState, worker: TimedWorker) -> None:
        self.state = state
        self.worker = worker
        self.log = log.get("usage")
        # monotonic time of the last write per key (of a deferred first one: of the first
        # sight, the registry's entry standing for the record meanwhile)
        self._written: dict[Key, float] = {}
        self._deferred: set[Key] = set()  # uses whose first record waits for a refresh
        self._wrote: dict[Key, float] = {}  # the time of this task's last record per key
        self._failing = False
        self._retry_at = 0.0
        self._adopted = False  # this host's records of an earlier run taken over

    async def run(self) -> None:
        while True:
            await self.record_due()
            await asyncio.sleep(SCAN_INTERVAL_S)

    def due(self, now_mono: float) -> dict[Key, list[str]]:
        """Directories in use never recorded by this agent, or not for REFRESH_S (a new use
        that the registry holds: see the module's docstring)."""
        uses = in_use(self.state)
        self._defer_first_records(uses, now_mono)
        return {
            key: names
            for key, names in uses.items()
            if now_mono - self._written.get(key, -REFRESH_S - 1) > REFRESH_S
        }

    def _defer_first_records(self, uses: dict[Key, list[str]], now_mono: float) -> None:
        st = self.state
        if st.gc_reads_registry_in != st.mount_epoch:
            # a gc that judges by records and mtimes alone may run (or another filesystem is
            # mounted): what waits is due now
            for key in self._deferred & uses.keys():
                self._written[key] = -REFRESH_S - 1.0
            self._deferred.clear()
            return
        fresh = [k for k in uses if k not in self._written and k[0]]
        if fresh:
            ready = covered(st)
            for key in fresh:
                if key in ready:
                    self._written[key] = now_mono
                    self._deferred.add(key)

    def _forget(self, key: Key) -> None:
        """A use whose last record is written: nothing more is due for it."""
        self._written.pop(key, None)
        self._wrote.pop(key, None)
        self._deferred.discard(key)

    async def _adopt_own_records(self) -> None:
        """Takes over what this host's records say it uses, once the table of containers is
        complete: a directory whose containers went while volagent was not running gets
        its last record now, instead of claiming its use for ever."""
        st = self.state
        call = functools.partial(own_records, st.config.mount_point, st.mount_dev, st.host_id)
        try:
            claimed = await self.worker.run(call, WRITE_TIMEOUT_S, what="reading usage records")
        except (VolagentError, OSError) as exc:
            self.log.warning("usage_records_unread", reason=str(exc))
            return
        self._adopted = True
        for key in claimed:
            if key not in self._written:
                self._written[key] = -REFRESH_S - 1.0  # due at once: refreshed, or the last

    async def record_due(self) -> int:
        """Writes the records that are due; how many were written."""
        st = self.state
        if not st.mount_healthy or st.mount_dev is None or not st.host_id:
            return 0
        if time.monotonic() < self._retry_at:
            return 0  # a failing filesystem is not asked again every second
        if not self._adopted and st.containers_listed.is_set():
            await self._adopt_own_records()
        due = self.due(time.monotonic())
        # directories no container here uses any more: one last record that lists no
        # containers, so gc stops counting them in use (the time stays the last use)
        gone = set(self._written) - set(in_use(st))
        # one whose end the registry's keeper recorded since this task's last record of it
        # (before removing its entry: rack/registry_task.py)
        ends = st.use_ends_recorded
        for key in [k for k in gone if k in ends and ends[k] >= self._wrote.get(k, 0.0)]:
            gone.discard(key)
            self._forget(key)
        if not due and not gone:
            return 0
        now = time.time()
        batch = [(key, usage_record(st.host_id, key, names, now)) for key, names in due.items()]
        batch += [(key, usage_record(st.host_id, key, [], now)) for key in sorted(gone)]
        call = functools.partial(
            write_usage, st.config.mount_point, st.mount_dev, st.host_id, batch
        )
        try:
            done = await self.worker.run(call, WRITE_TIMEOUT_S, what="writing usage records")
        except (VolagentError, OSError) as exc:
            st.metrics.usage_records.labels(result="failed").inc(len(batch))
            if not self._failing:
                self.log.warning("usage_record_failed", reason=str(exc), records=len(batch))
            self._failing = True
            self._retry_at = time.monotonic() + FAILURE_BACKOFF_S
            return 0
        self._failing = False
        mono = time.monotonic()
        for key in done:
            self._written[key] = mono
            self._wrote[key] = now
            st.usage_recorded[key] = now
            self._deferred.discard(key)
        for times in (st.usage_recorded, st.use_ends_recorded):
            for key, at in list(times.items()):
                if at < now - RECORDED_KEPT_S:
                    del times[key]
        # a directory's last record written: it needs no refreshing. Not one that went out
        # of use while its record was written: that record still lists it, the next is due
        for key in gone & set(done):
            self._forget(key)
        st.metrics.usage_records.labels(result="written").inc(len(done))
        self.log.debug("usage_recorded", records=len(done))
        return len(done)
