"""The binds of hosts that take no part in the registry (volagent 0.2), read from their usage
records of one namespace when a create or start touches it.

A 0.2 host lists its containers' bind paths in its usage records (`usage/recorder.py`) and
writes no registry entries. During a rolling update the new version reads, for the namespace a
claim touches, the records under `<mp>/.volagent/usage/<ns>/` (the namespace's own and those of
the directories below it that the claim's binds lie in: rule 5 keeps every bind below a
directory of the namespace, so binds of two directories never nest) of the hosts that are not
known to take part: a record that carries `"registry"` is a participant's (its binds are in the
registry) and its host is remembered as one for PARTICIPANT_TTL_S. A 0.2 host's binds count
while its record is fresh by 0.2's own rule (STALE_AFTER_S), as 0.2 hosts judge each other.
This lags the 0.2 host by its recording delay: the registry's guarantee holds between hosts
that take part, not with 0.2.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import time
from collections.abc import Iterable

from volagent import safedir
from volagent.rack import records
from volagent.rack.usage import recorder

# a record not refreshed for this long belongs to a host that stopped recording (0.2's rule)
STALE_AFTER_S = 2 * recorder.REFRESH_S
# a record file not written for this long is stale by any writer's clock a few minutes off
UNREAD_AFTER_S = STALE_AFTER_S + 300.0
# how long after this host's bind is registered a 0.2 host may still bind next to it: 0.2
# hosts judge from usage records, and this host's record of the bind is written within a
# second (recorder.SCAN_INTERVAL_S), as is theirs of a bind they made meanwhile; with room
# for a slow filesystem. A look for 0.2 binds made later than this finds every one there is
SETTLE_S = 10.0
# a host seen taking part is not read again for this long (a downgrade shows after it)
PARTICIPANT_TTL_S = 600.0


class Participants:
    """Hosts known to take part in the registry, by record file name (shared by threads)."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def add(self, host: str) -> None:
        self._until[records.file_name(host)] = time.monotonic() + PARTICIPANT_TTL_S

    def __contains__(self, file_stem: str) -> bool:
        return self._until.get(file_stem, 0.0) > time.monotonic()

    def known(self) -> list[str]:
        now = time.monotonic()
        return sorted(h for h, until in self._until.items() if until > now)


def legacy_binds(
    mount_point: str,
    dev: int | None,
    ns: str,
    own_host: str,
    participants: Participants,
    *,
    directories: Iterable[str] | None = None,
) -> tuple[list[tuple[str, str]], list[str]]:
    """Blocking: (path, whose) of every bind a fresh record of a host outside the registry
    lists in namespace `ns` (its own records and those of `directories` below it, every one
    when None), and those hosts."""
    with safedir.closing(safedir.open_shared_root(mount_point, dev)) as root:
        parts = (records.AGENT_DIR, records.USAGE_DIR, ns)
        # volagent's own directories: one lookup of the whole path, the walk without openat2
        top = records.open_own_existing(root, parts) or records.open_dir(root, parts, False)
    if top is None:
        return [], []
    out: list[tuple[str, str]] = []
    hosts: set[str] = set()
    now = time.time()
    own = records.file_name(own_host)
    with safedir.closing(top):
        _read_dir(top, own, participants, now=now, out=out, hosts=hosts)
        below = safedir.subdirs(top, dots=True) if directories is None else sorted(directories)
        # one swapped for something else is skipped
        for _, fd in records.open_each(top, below, skip_unusable=True):
            _read_dir(fd, own, participants, now=now, out=out, hosts=hosts)
    return [(here(mount_point, ns, path), whose) for path, whose in out], sorted(hosts)


def here(mount_point: str, ns: str, path: str) -> str:
    """A bind path of a record, at this host's mount point: a 0.2 host lists its own host
    paths, and may mount the filesystem elsewhere (`/mnt/efs/<ns>/web` is `<mp>/<ns>/web`
    here). A path already under this mount point, or naming no `<ns>` component, as it is."""
    clean = posixpath.normpath("/" + path.lstrip("/"))
    mp = posixpath.normpath("/" + mount_point.lstrip("/")).rstrip("/")
    if clean.startswith(mp + "/") and clean[len(mp) + 1 :].split("/")[0] == ns:
        return clean
    parts = clean.split("/")
    if ns not in parts:
        return clean
    return "/".join([mp, *parts[parts.index(ns) :]])


def _read_dir(
    fd: int,
    own: str,
    participants: Participants,
    *,
    now: float,
    out: list[tuple[str, str]],
    hosts: set[str],
) -> None:
    for file in safedir.list_names(fd):
        if file.startswith(".") or not file.endswith(records.SUFFIX):
            continue
        stem = file[: -len(records.SUFFIX)]
        if stem == own or stem in participants:
            continue  # this host knows its own binds; a participant's are in the registry
        with contextlib.suppress(OSError):
            # a record is replaced whole, so its file's time is its own: one older than
            # any fresh record can be (clocks a few minutes apart) counts for nothing, and
            # is not read (the listing's attributes answer, where reading costs 3 round trips)
            if now - os.stat(file, dir_fd=fd, follow_symlinks=False).st_mtime > UNREAD_AFTER_S:
                continue
        record = records.read_one(fd, file, recorder.UsageRecord)
        if record is None:
            continue
        host = record.host or stem
        fresh = now - record.time < STALE_AFTER_S
        if record.registry:
            # proof of taking part only while fresh: a host rolled back to 0.2 leaves its
            # records of the release before, which must not hide its 0.2 binds
            if fresh:
                participants.add(host)
        elif fresh:
            for path in record.binds:
                out.append((path, f"a container on host {host} (volagent 0.2, usage records)"))
                hosts.add(host)
