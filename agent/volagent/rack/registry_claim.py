"""What a host does in the registry, each a blocking transaction on one namespace's file:
claim binds before a create or start is allowed, and set its own entries to what it runs.

A claim checks the binds it asks for against every other host's entries under the lock, and
adds them only if none nests (rule 7). Another host's entries stop counting only when that
host has shown no sign of life for `expire_after_s`: neither a heartbeat nor an entry
written since. Its heartbeat is read only when one of its entries stands in the way, so a
claim that clashes with nothing reads nothing but the registry. Every host of the rack takes
part (hosts on 0.2, which write no entries, are not looked for since 0.4).
Blocking: call these through a TimedWorker.
"""

from __future__ import annotations

import math
import posixpath
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from volagent import safedir
from volagent.config import MAX_FORGET_AFTER_S
from volagent.errors import VolagentError
from volagent.nesting import nested_with, strictly_under
from volagent.rack import records
from volagent.rack.registry import Counts, Entry, Transaction, changed, locked, merged


@dataclass
class ClaimResult:
    """A claim's outcome: the clash per path asked for (none: all were registered), the
    hosts whose entries were dropped as expired, and the operations it made."""

    clashes: dict[str, str] = field(default_factory=dict)
    expired: list[str] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    written: bool = False


def claim(
    mount_point: str,
    dev: int | None,
    ns: str,
    *,
    host: str,
    wanted: list[Entry],
    expire_after_s: float,
    deadline: float,
    epoch: int | None = None,
    dropping: Callable[[list[Entry]], None] | None = None,
    taken: Callable[[], None] | None = None,
    answered: Callable[[ClaimResult], None] | None = None,
) -> ClaimResult:
    """Registers `wanted` (this host's entries) unless one nests with a live bind in another
    host's entries. `epoch`: the mount's, to keep the registry's files open for the next
    (`locked`). `dropping` is called, under the lock and before the write, with the entries
    of hosts gone for good that the claim drops (gc counts them as uses at their time: the
    caller records those); it raising leaves the file as it was. `taken` is called once the
    namespace's lock is taken, before anything is read under it, unless the deadline has
    passed by then. `answered` is called with the outcome as soon as it is final (the
    entries renamed into place), before the lock is released: the caller need not wait for
    the unlock's round trip."""
    result = ClaimResult()

    def lock_taken() -> None:
        if taken is not None and time.monotonic() <= deadline:
            taken()  # not once its caller may have given up: nobody would close what it opens

    with locked(
        mount_point, dev, ns, deadline, counts=result.counts, epoch=epoch, taken=lock_taken
    ) as tx:
        _decide(tx, mount_point, dev, host, wanted, expire_after_s, dropping, result=result)
        if answered is not None:
            answered(result)
    return result


def _decide(  # noqa: PLR0917 - the claim's own arguments, passed on
    tx: Transaction,
    mount_point: str,
    dev: int | None,
    host: str,
    wanted: list[Entry],
    expire_after_s: float,
    dropping: Callable[[list[Entry]], None] | None,
    *,
    result: ClaimResult,
) -> None:
    """The claim's judgement and write, under the lock: `result` filled in."""
    entries = tx.entries
    dead: set[str] = set()
    checked: set[str] = set()
    while True:
        theirs = [e for e in entries if e.host != host and e.host not in dead]
        others = [(absolute(mount_point, e.path), _whose(e)) for e in theirs]
        result.clashes = {}
        blocking: set[str] = set()
        for w in wanted:
            why = nested_with(absolute(mount_point, w.path), others)
            if why is None:
                continue
            result.clashes[w.path] = why
            blocking |= {
                e.host
                for e in theirs
                if strictly_under(w.path, e.path) or strictly_under(e.path, w.path)
            }
        unchecked = blocking - checked
        if not result.clashes or not unchecked:
            break
        # only the hosts in the way: is any of them gone for good?
        now = time.time()
        for other in unchecked:
            checked.add(other)
            beat = read_heartbeat(mount_point, dev, other)
            result.counts.opens += 1
            if gone(entries, other, beat, expire_after_s, now):
                dead.add(other)
                result.expired.append(other)
    if dead and dropping is not None:
        dropping([e for e in entries if e.host in dead])
    if result.clashes:
        if dead:  # the expired hosts' entries go anyway: they would be read again
            tx.write(merged(entries, [], lambda e: e.host in dead))
        return
    # a path this host holds already (under the create's request, say) needs no entry more
    held = {(e.host, e.path) for e in entries}
    after = merged(
        entries, [w for w in wanted if (w.host, w.path) not in held], lambda e: e.host in dead
    )
    if changed(entries, after):
        tx.write(after)
        result.written = True


@dataclass
class SetResult:
    """The keeper's update: the paths of this host that nest another host's entry (written
    all the same: they are what this host binds), and the operations it made."""

    contested: frozenset[str] = frozenset()
    counts: Counts = field(default_factory=Counts)
    # why the end of some uses could not be recorded: their entries stay, for the next
    unrecorded: str = ""


def set_own(
    mount_point: str,
    dev: int | None,
    ns: str,
    *,
    host: str,
    live: list[Entry],
    deadline: float,
    epoch: int | None = None,
    formers: frozenset[str] = frozenset(),
    ended: Callable[[list[Entry]], None] | None = None,
) -> SetResult:
    """Makes this host's entries in `ns` hold the paths it binds, one entry a path: adds
    `live` where this host holds no entry of the path, removes its entries of paths no longer
    among `live`. Whatever their time: the caller's claims of `ns` wait for this update (and
    their threads write nothing once given up on), and an entry's time is the writer's clock,
    which may have been stepped back since. Entries of this host's former names (`formers`)
    go too: the new name's entries hold every path it binds.

    It judges nothing: a path it writes may nest another host's entry (a create reserved
    and not claimed yet, a container no claim judged). Those come back as `contested`: an
    entry of them is no proof that nothing nests them, so their claims take the lock.

    `ended` is called, under the lock and before the write, with the entries of paths no
    longer bound: the caller records those uses' end (gc counts the entries until then).
    When it raises, those entries stay (`unrecorded` says why) and the rest is written: an
    entry of a path bound now must not wait for the record of another's end (rule 7)."""
    result = SetResult()
    paths = {e.path for e in live}

    def goes(e: Entry) -> bool:
        return e.host in formers or (e.host == host and e.path not in paths)

    with locked(mount_point, dev, ns, deadline, counts=result.counts, epoch=epoch) as tx:
        held = {e.path for e in tx.entries if e.host == host}
        fresh = [e for e in live if e.path not in held]
        after = merged(tx.entries, fresh, goes)
        # the uses that ended (a former name's entry of a path still bound is not one)
        ending = [e for e in tx.entries if goes(e) and e.path not in paths]
        if ending and ended is not None:
            try:
                ended(ending)
            except (OSError, VolagentError) as exc:
                result.unrecorded = str(exc)
                stay = {e.key for e in ending}
                after = merged(tx.entries, fresh, lambda e: goes(e) and e.key not in stay)
        if changed(tx.entries, after):
            tx.write(after)
        others = [(absolute(mount_point, e.path), e.host) for e in after if e.host != host]
        result.contested = frozenset(
            p for p in paths if nested_with(absolute(mount_point, p), others) is not None
        )
    return result


def gone(
    entries: list[Entry],
    host: str,
    beat: Mapping[str, object] | None,
    expire_after_s: float,
    now: float,
) -> bool:
    """Whether `host` is gone for good, its entries among `entries` no longer holding their
    paths: its heartbeat record (`beat`, None: it has none) and its newest entry here are
    both older than `expire_after_s`, or than the `forget_after_s` its heartbeat says it
    runs with, whichever is longer. A host without a heartbeat counts by its entries."""
    newest = max((e.time for e in entries if e.host == host), default=0.0)
    beat_time = beat.get("time") if beat else None
    seen = float(beat_time) if isinstance(beat_time, int | float) else 0.0
    # no sooner than the host itself trusts its entries to stand (its own forget_after_s, in
    # heartbeats since 0.3.3): it skips its transactions for paths it holds while its
    # heartbeat is younger than half of it
    trusted = beat.get("forget_after_s") if beat else None
    said = float(trusted) if isinstance(trusted, int | float) else 0.0
    # at most what a config may set: a heartbeat saying more (or not a number) must not keep
    # a dead host's entries for ever
    said = min(said, MAX_FORGET_AFTER_S) if math.isfinite(said) else 0.0
    return now - max(newest, seen) > max(expire_after_s, said)


def absolute(mount_point: str, relative: str) -> str:
    """An entry's path on this host."""
    return mount_point.rstrip("/") + "/" + relative


def relative(mount_point: str, path: str) -> str:
    """A cleaned host path under the mount point, as an entry holds it."""
    return posixpath.normpath(path)[len(mount_point.rstrip("/")) + 1 :]


def _whose(e: Entry) -> str:
    name = f" {e.name}" if e.name else ""
    return f"container{name} on host {e.host}"


def read_heartbeat(mount_point: str, dev: int | None, host: str) -> dict[str, object] | None:
    """One host's heartbeat record, or None."""
    with safedir.closing(safedir.open_shared_root(mount_point, dev)) as root:
        hosts = records.open_dir(root, (records.AGENT_DIR, records.HOSTS_DIR), create=False)
    if hosts is None:
        return None
    with safedir.closing(hosts):
        return records.read_record(hosts, records.file_name(host) + records.SUFFIX)
