"""What the rack's registry of binds says against gc: a directory that an entry of a live host
holds (a container of that host binds it, a path in it, or its whole namespace) is in use,
whatever its mtime and the usage records say.

A create claims its binds in the registry before its walk looks in the trash
(volumes/preparer.py), and gc's last judgement reads the registry under its lock once gc has
claimed the trash entry (ops/gc/trashing.py). So either the walk finds gc's trash entry and
refuses, or gc finds the create's entry and keeps the directory: what lets a create whose
binds the registry holds leave out the mtime mark (volumes/trashcheck.py) once every host's
gc reads the registry (since 0.5). The survey reads under the lock too, and neither creates
anything: gc never holds an entries file open that a writer may replace (docs/REGISTRY.md).

An entry counts while its host is not gone by the registry's own rule (registry_claim.gone),
and, whatever became of its host, as a use at its time: an entry written within gc's window
keeps what it holds for the window, as a usage record of that time would (a host that
crashed before it wrote one leaves its entries behind; since 0.5 a host writes the first
record of a directory the registry holds at the first refresh, not at once). A registry that
cannot be read keeps its namespace. Blocking.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping

from volagent import safedir
from volagent.rack import records, registry, registry_claim
from volagent.rack.registry import Entry

# how long gc waits for a namespace's registry lock: a claim holds it for a few round trips,
# a host that died holding it until its NFS lease expires (the namespace is kept then, and gc
# says why); well within gc's watchdog (ops/gc/command.py STALL_S), which would take a longer
# wait for a hung filesystem
LOCK_WAIT_S = 10.0


def holding(entries: list[Entry], namespace: str, directory: str | None) -> list[Entry]:
    """The entries that hold `<namespace>` (directory None) or `<namespace>/<directory>`: a
    bind of it, of a path in it, or of the whole namespace."""
    out = []
    for e in entries:
        parts = e.path.split("/")
        if parts[0] != namespace:
            continue
        if directory is None or len(parts) == 1 or parts[1] == directory:
            out.append(e)
    return out


def counting(
    entries: list[Entry],
    beat_of: Callable[[str], Mapping[str, object] | None],
    expire_after_s: float,
    now: float,
    cutoff: float,
) -> list[Entry]:
    """The entries that count as uses: of a host not gone (`beat_of`: a host's heartbeat
    record), or written since `cutoff`."""
    # a host's heartbeat is read only for its entries older than the window: the others
    # count whatever became of it
    hosts = {e.host for e in entries if e.time < cutoff}
    gone = {h for h in hosts if registry_claim.gone(entries, h, beat_of(h), expire_after_s, now)}
    return [e for e in entries if e.host not in gone or e.time >= cutoff]


def heartbeats(mount_point: str, dev: int) -> Callable[[str], Mapping[str, object] | None]:
    """A host's heartbeat record, read once (the registry's own reader: a record it cannot
    decode still says when its host last beat)."""
    cache: dict[str, Mapping[str, object] | None] = {}

    def beat_of(host: str) -> Mapping[str, object] | None:
        if host not in cache:
            cache[host] = registry_claim.read_heartbeat(mount_point, dev, host)
        return cache[host]

    return beat_of


def read(
    reg: int | None, mount_point: str, namespace: str, listed: frozenset[str] | None = None
) -> list[Entry]:
    """The namespace's entries in the registry's directory `reg` (None: there is none),
    read under its lock (no claim is between its read and its write meanwhile, and one that
    wrote before is seen); RegistryError when they cannot be read or the lock cannot be had
    within LOCK_WAIT_S. `listed`: the directory's names as the survey listed them, once for
    all namespaces (one with neither file has no entries: nothing more is asked)."""
    if reg is None:
        return []
    if (
        listed is not None
        and not {
            registry.file_of(namespace),
            records.file_name(namespace) + registry.LOCK_SUFFIX,
        }
        & listed
    ):
        return []
    return registry.read_locked(reg, mount_point, namespace, time.monotonic() + LOCK_WAIT_S)


def held_now(  # noqa: PLR0917 - the candidate's and the judgement's terms
    mount_point: str,
    root_fd: int,
    namespace: str,
    directory: str | None,
    expire_after_s: float,
    cutoff: float,
) -> list[Entry]:
    """The entries holding the candidate that count as uses, read now (the last
    judgement). RegistryError when the registry cannot be read or locked."""
    reg = registry.open_dir_at(root_fd)
    with safedir.closing(reg) if reg is not None else contextlib.nullcontext():
        entries = read(reg, mount_point, namespace)
    if not holding(entries, namespace, directory):
        return []
    # whether a host is gone is judged by all its entries (its newest is a sign of life)
    beat_of = heartbeats(mount_point, os.fstat(root_fd).st_dev)
    return holding(
        counting(entries, beat_of, expire_after_s, time.time(), cutoff), namespace, directory
    )
