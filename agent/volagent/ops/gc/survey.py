"""What `volagent gc` may remove: the survey of namespaces against every host's usage records
and the rack's registry of binds.

Blocking, descriptor-based, and ticking a Progress so the caller can tell a hung mount from a
slow walk. The rules (see command.py): a directory is unused when no usage record from any host and
not its own mtime falls within the window, no container of this host uses it now, and no entry
of a live host in the registry holds it (ops/gc/registered.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from dataclasses import dataclass, field
from typing import Any

from volagent import safedir
from volagent.errors import RecordError
from volagent.ops.gc import registered, tree
from volagent.rack import records, registry
from volagent.rack.heartbeat import rack_view, read_heartbeats_at
from volagent.rack.registry import RegistryError
from volagent.rack.usage.recorder import MOUNT_ROOT, REFRESH_S, Key, UsageRecord

# `<rack>-<app>`: two names of the contract's form joined by a dash
NAMESPACE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}-[a-z0-9][a-z0-9._-]{0,62}$")

# A host refreshes its records every REFRESH_S while a container uses the path: a record this
# recent, naming containers, means one exists now
LIVE_S = 3 * REFRESH_S

Usage = dict[Key, tuple[float, str]]  # newest use of each directory, and by which host


@dataclass
class Candidate:
    """An unused directory: a whole namespace (`directory` None) or one service directory."""

    namespace: str
    directory: str | None
    path: str
    last_used: float | None
    last_host: str
    mtime: float
    size: int = 0

    @property
    def kind(self) -> str:
        return "namespace" if self.directory is None else "service directory"


@dataclass
class Survey:
    cutoff: float
    candidates: list[Candidate] = field(default_factory=list)
    kept: int = 0
    records: int = 0
    stale_hosts: list[dict[str, Any]] = field(default_factory=list)
    # set when a container binds the mount point itself: then nothing is a candidate
    root_used_by: str = ""
    # namespaces whose registry could not be read: kept whole
    unreadable: dict[str, str] = field(default_factory=dict)


def collect_usage(root_fd: int, only_namespace: str | None = None) -> tuple[Usage, int]:
    """The newest record of every (namespace, directory), of every whole namespace
    ((namespace, "")) and of the mount point itself (MOUNT_ROOT), and how many records
    were read."""
    usage: Usage = {}
    count = 0

    def take(key: Key, dir_fd: int) -> None:
        nonlocal count
        for host, rec in records.read_all(dir_fd, UsageRecord):
            if key == MOUNT_ROOT and rec.containers == []:
                continue  # its containers are gone: a bind of everything counts only while
                # it exists (see root_in_use)
            count += 1
            if key not in usage or rec.time > usage[key][0]:
                usage[key] = (rec.time, rec.host or host)

    base = records.open_dir(root_fd, (records.AGENT_DIR, records.USAGE_DIR), create=False)
    if base is None:
        return usage, 0
    with safedir.closing(base):
        take(MOUNT_ROOT, base)
        spaces = [only_namespace] if only_namespace else safedir.subdirs(base, dots=True)
        for ns, ns_fd in records.open_each(base, spaces, skip_unusable=True):
            take((ns, ""), ns_fd)
            for d, d_fd in records.open_each(ns_fd, safedir.subdirs(ns_fd, dots=True)):
                take((ns, d), d_fd)
    return usage, count


def survey(
    root_fd: int,
    mount_point: str,
    *,
    cutoff: float,
    local: set[Key],
    stale_after_s: float,
    expire_after_s: float,
    progress: tree.Progress,
) -> Survey:
    """Every namespace under the mount point judged; candidates sized. `expire_after_s`: how
    long a silent host's registry entries hold their paths (`[health] forget_after_s`)."""
    mp = mount_point.rstrip("/")
    usage, count = collect_usage(root_fd)
    result = Survey(cutoff=cutoff, records=count)
    now = time.time()
    with contextlib.suppress(RecordError, OSError):
        beats = read_heartbeats_at(root_fd)
        # stale: its heartbeat is old, or it said it stopped; either way, what its
        # containers use is not being recorded
        result.stale_hosts = [h for h in rack_view(beats, stale_after_s, now) if h["stale"]]
    beat_of = registered.heartbeats(mount_point, os.fstat(root_fd).st_dev)
    result.root_used_by = root_in_use(usage, local, now)
    if result.root_used_by:
        return result
    # the registry's directory, opened once for every namespace's entries
    reg = registry.open_dir_at(root_fd)
    with safedir.closing(reg) if reg is not None else contextlib.nullcontext():
        listed = frozenset(safedir.list_names(reg)) if reg is not None else frozenset()
        namespaces = [ns for ns in safedir.subdirs(root_fd) if NAMESPACE_RE.match(ns)]
        for ns, ns_fd in records.open_each(root_fd, namespaces, skip_unusable=True):
            progress.tick()
            shown = f"{mp}/{ns}"
            ns_mtime = os.fstat(ns_fd).st_mtime
            dirs = safedir.subdirs(ns_fd, dots=True)
            whole_last, _ = usage.get((ns, ""), (0.0, ""))
            try:
                found = registered.read(reg, mount_point, ns, listed)
                entries = registered.holding(
                    registered.counting(found, beat_of, expire_after_s, now, cutoff), ns, None
                )
            except (RegistryError, OSError) as exc:
                result.unreadable[ns] = str(exc)
                result.kept += len(dirs)
                continue
            held = {e.path.split("/")[1] if "/" in e.path else "" for e in entries}
            if (ns, "") in local or whole_last >= cutoff or "" in held:
                result.kept += len(dirs)  # a bind of the whole namespace uses every directory in it
                continue
            unused: list[Candidate] = []
            for d in dirs:
                progress.tick()
                try:
                    mtime = os.stat(d, dir_fd=ns_fd, follow_symlinks=False).st_mtime
                except OSError:
                    continue
                last, host = usage.get((ns, d), (None, ""))
                if (ns, d) in local or d in held or max(last or 0.0, mtime) >= cutoff:
                    result.kept += 1
                    continue
                unused.append(Candidate(ns, d, f"{shown}/{d}", last, host, mtime))
            records_of_ns = [(t, h) for (n, _), (t, h) in usage.items() if n == ns]
            ns_in_use = (
                bool(entries)
                or ns_mtime >= cutoff
                or any(k[0] == ns for k in local)
                or any(t >= cutoff for t, _ in records_of_ns)
            )
            if len(unused) == len(dirs) and not ns_in_use:
                last, host = max(records_of_ns, default=(None, ""))
                mtime = max([ns_mtime, *(c.mtime for c in unused)])
                whole = Candidate(ns, None, shown, last, host, mtime)
                whole.size = tree.tree_size(root_fd, ns, progress)
                result.candidates.append(whole)
                continue
            for c in unused:
                c.size = tree.tree_size(ns_fd, str(c.directory), progress)
                result.candidates.append(c)
    return result


def root_in_use(usage: Usage, local: set[Key], now: float) -> str:
    """Who binds the mount point itself now ("" for nobody): such a container can use any
    directory, so nothing goes while it exists. Unlike other uses it does not hold things
    for the whole window once gone, or a daily backup container binding everything would
    keep gc from ever deleting anything."""
    if MOUNT_ROOT in local:
        return "this host"
    t, host = usage.get(MOUNT_ROOT, (0.0, ""))
    return host if t >= now - LIVE_S else ""


def still_unused(
    root_fd: int,
    c: Candidate,
    cutoff: float,
    local: set[Key],
    *,
    mount_point: str,
    expire_after_s: float,
) -> bool:
    """The candidate judged again just before it goes: nothing used it since the survey
    (its records, a bind of its whole namespace or of the mount point, this host's
    containers, the registry's entries, read under its lock (registered.held_now), and the
    directory's own mtime, which the preparer touches before it creates unless the registry
    holds the bind). Raises RegistryError when the registry cannot be read."""
    if (c.namespace, "") in local:
        return False
    if any(k[0] == c.namespace and (c.directory is None or k[1] == c.directory) for k in local):
        return False
    # the registry first, then the records: a use's end is recorded before its entry goes
    # (rack/registry_task.py), so one or the other is seen, whenever it ends
    if registered.held_now(mount_point, root_fd, c.namespace, c.directory, expire_after_s, cutoff):
        return False
    usage, _ = collect_usage(root_fd, only_namespace=c.namespace)
    if root_in_use(usage, local, time.time()):
        return False
    for key, (t, _) in usage.items():
        relevant = key != MOUNT_ROOT and (key[1] == "" or c.directory in (None, key[1]))
        if relevant and t >= cutoff:
            return False
    path = c.namespace if c.directory is None else f"{c.namespace}/{c.directory}"
    try:
        st = os.stat(path, dir_fd=root_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False  # gone already
    return stat.S_ISDIR(st.st_mode) and st.st_mtime < cutoff


def prune_old_records(root_fd: int, cutoff: float, progress: tree.Progress) -> int:
    """Removes usage records and heartbeats older than the window (they can keep nothing
    any more), and the record directories left empty; how many records went."""
    removed = 0
    for _, agent in records.open_each(root_fd, [records.AGENT_DIR]):
        for _, hosts in records.open_each(agent, [records.HOSTS_DIR]):
            removed += _prune_dir(hosts, cutoff, progress)
        for _, usage in records.open_each(agent, [records.USAGE_DIR]):
            removed += _prune_dir(usage, cutoff, progress)
            spaces = safedir.subdirs(usage, dots=True)
            for _, ns_fd in records.open_each(usage, spaces):
                removed += _prune_dir(ns_fd, cutoff, progress)
                dirs = safedir.subdirs(ns_fd, dots=True)
                for _, d_fd in records.open_each(ns_fd, dirs):
                    removed += _prune_dir(d_fd, cutoff, progress)
                # a record directory goes once it is empty (rmdir refuses otherwise)
                for d in dirs:
                    with contextlib.suppress(OSError):
                        os.rmdir(d, dir_fd=ns_fd)
            for ns in spaces:
                with contextlib.suppress(OSError):
                    os.rmdir(ns, dir_fd=usage)
    return removed


def _prune_dir(dir_fd: int, cutoff: float, progress: tree.Progress) -> int:
    removed = 0
    for name, rec in list(records.read_all(dir_fd, UsageRecord)):
        progress.tick()
        if rec.time < cutoff:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name + records.SUFFIX, dir_fd=dir_fd)
            removed += 1
    return removed
