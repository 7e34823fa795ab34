"""`volagent gc`: namespace directories no container has used, in two reversible phases.

`gc [--older-than DAYS]` lists the candidates and the trash; `--delete` moves the candidates
into the trash (trashing.py), `--restore NAME` puts one back, `--purge` removes what has been
in the trash long enough. `--delete` refuses while a host of the rack is stale (its
containers' use is not being recorded) unless the operator names each such host with
`--ignore-stale`. Each step is logged as JSON lines on stderr; the report goes to stdout.

The candidates are `<mp>/<rack>-<app>` directories and the service directories in them. A
directory's last use is the newest of its usage records from every host (see
rack/usage/recorder.py) and its own mtime (a directory made or changed lately is not orphaned,
recorded or not); a directory a container of this host uses now, by the local daemon's word, is
always kept. A namespace whose every directory is unused is listed whole; otherwise its unused
service directories are listed one by one. Nothing is moved without `--delete`, and then each
candidate is judged again just before it goes. The preparer leaves a directory's mtime alone
when it is less than TOUCH_AFTER_S old (volumes/trashcheck.py): such an mtime may stand for a
use up to that much later, so every window is widened by it (window_cutoff).

gc only runs on the healthy shared filesystem: the mount point must be a mount, the local
daemon (when it answers) must call it mounted or local, and the walk goes through
descriptors that never follow a symlink nor leave the filesystem (tree.py). A walk that
stops making progress is a hung mount: gc gives up instead of hanging with it.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO, TypeVar

from volagent import log, safedir
from volagent.api import client
from volagent.config import Config
from volagent.errors import FilesystemHung, MountUnhealthy, VolagentError
from volagent.mount.table import find_mount
from volagent.ops.gc import survey as gcsurvey
from volagent.ops.gc import trashing as gctrash
from volagent.ops.gc import tree as fstree
from volagent.ops.gc.survey import Candidate, Survey, prune_old_records, survey
from volagent.rack import records, trash
from volagent.rack.usage.recorder import Key, key_of
from volagent.state import now_iso
from volagent.terminal import format_size
from volagent.terminal import printable as _p
from volagent.vocabulary import HEALTHY_MOUNT_STATES, MountType
from volagent.volumes import trashcheck

DEFAULT_DAYS = 30.0
PURGE_DEFAULT_DAYS = 7.0
MAX_DAYS = 36500.0  # a century: older than any filesystem, and a time now_iso can still write
STALL_S = 30.0
DAEMON_TIMEOUT_S = 3.0

T = TypeVar("T")


class GcRefused(VolagentError):
    """gc will not run: the mount point is not (known to be) the healthy shared filesystem."""


def guarded(fn: Callable[[fstree.Progress], T], what: str, stall_s: float = STALL_S) -> T:
    """Runs fn in a daemon thread; gives up when it makes no progress for `stall_s`."""
    progress = fstree.Progress()
    results: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(fn(progress))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"gc-{what}", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
        if thread.is_alive() and progress.idle_for() > stall_s:
            raise FilesystemHung(
                f"{what} made no progress for {stall_s:g} s: the filesystem is not answering"
            )
    if errors:
        raise errors[0]
    return results[0]


def local_use(cfg: Config) -> tuple[set[Key], str | None]:
    """What this host's daemon says its containers use, and its mount state (None: the daemon
    did not answer). Refuses when it answers that the mount is not healthy."""
    sock = os.environ.get("VOLAGENT_SOCKET") or cfg.api.socket
    try:
        _, doc = client.get_json(sock, "/v1/status", timeout=DAEMON_TIMEOUT_S)
    except client.Unreachable:
        return set(), None
    mount = doc.get("mount") or {}
    state = str(mount.get("state") or "unknown")
    if state not in HEALTHY_MOUNT_STATES:
        raise GcRefused(
            f"the mount at {cfg.mount_point} is {state} (volagent status): gc runs only on the "
            "healthy shared filesystem, never on what lies underneath"
        )
    keys: set[Key] = set()
    for c in doc.get("containers") or ():
        for v in c.get("volumes") or ():
            key = key_of(cfg.mount_point, str(v.get("host") or ""))
            if key is not None:
                keys.add(key)
    return keys, state


def open_shared(cfg: Config, daemon_state: str | None) -> int:
    """A descriptor of the mount point, once it is known to be the mounted filesystem."""
    mp = os.path.normpath(cfg.mount_point)
    if find_mount(mp) is None:
        raise GcRefused(f"nothing is mounted at {mp}: gc runs only on the shared filesystem")

    def open_it(_: fstree.Progress) -> int:
        fd = os.open(mp, safedir.DIR_FLAGS)
        os.fstatvfs(fd)  # answers, or hangs here, where the watchdog sees it
        if daemon_state is None and cfg.mount.type != MountType.LOCAL:
            parent = os.stat(os.path.dirname(mp) or "/")
            if parent.st_dev == os.fstat(fd).st_dev:
                os.close(fd)
                raise GcRefused(
                    f"{mp} is on the same device as its parent and the daemon is not "
                    "answering: it may be local disk; start volagent and try again"
                )
        return fd

    try:
        return guarded(open_it, f"opening {mp}", stall_s=10.0)
    except OSError as exc:
        raise MountUnhealthy(f"cannot open {mp}: {exc.strerror}") from None


def last_use(c: Candidate) -> str:
    return now_iso(c.last_used) + f" on {c.last_host}" if c.last_used else "never recorded"


def print_survey(s: Survey, days: float, out: TextIO) -> None:
    w = out.write
    when = now_iso(s.cutoff)
    if s.root_used_by:
        w(
            f"nothing is a candidate: a container on {_p(s.root_used_by)} binds the mount point "
            "itself, so any directory under it may be in use; `volagent status` there shows it\n"
        )
    elif not s.candidates:
        w(f"nothing unused for {days:g} days (since {when}); {s.kept} directories in use\n")
    else:
        w(f"not used for {days:g} days (since {when}):\n")
        for c in s.candidates:
            size = format_size(c.size)
            w(f"  {size:>10}  {_p(c.path)}  ({c.kind}; last use {_p(last_use(c))})\n")
        total = sum(c.size for c in s.candidates)
        w(f"{len(s.candidates)} unused, {format_size(total)}; {s.kept} directories in use\n")
    if not s.records:
        w("note: no usage records yet; last use is judged by directory times alone\n")
    for ns, why in s.unreadable.items():
        w(f"note: kept {_p(ns)}: the rack's registry of its binds cannot be read: {_p(why)}\n")
    for h in s.stale_hosts:
        w(
            f"note: host {_p(h['host'])} is stale (last seen {_p(h['last_seen'])}, "
            f"{_p(h['status'])}): what its containers use is known only until then\n"
        )


def print_trash(root_fd: int, mount_point: str, out: TextIO) -> None:
    """What is in the trash: each entry, what it was, who moved it, when and why."""
    fd = trash.open_trash(root_fd, create=False)
    found = []
    if fd is not None:
        with safedir.closing(fd):
            found = list(trash.entries(fd))
    w = out.write
    where = f"{mount_point.rstrip('/')}/{records.AGENT_DIR}/{trash.TRASH_DIR}"
    if not found:
        w(f"the trash ({where}) is empty\n")
        return
    w(f"in the trash ({where}):\n")
    for e in found:
        rec = e.record or trash.TrashRecord()
        by, size = rec.by, rec.size
        shown_size = "?" if size is None else format_size(size)
        when = now_iso(e.moved_at) if e.moved_at else "unknown time"
        w(f"  {_p(e.entry.name)}  {shown_size:>10}  {_p(e.state)}\n")
        w(f"      was {_p(rec.path or e.entry.relative)}; moved {when}")
        if by:
            w(f" by {_p(str(by.get('user', '?')))} on {_p(str(by.get('host', '?')))}")
        w("\n")
        if rec.reason:
            w(f"      why: {_p(rec.reason)}\n")
        if e.state == trash.MOVING and not e.has_directory:
            w(
                "      not moved (yet; or gc stopped): creates into it are refused until the "
                "restore command clears it\n"
            )
        if e.state != trash.PURGING:
            w(f"      restore: volagent gc --restore {_p(e.entry.name)}\n")


def refuse_stale(s: Survey, ignore: list[str], out: TextIO) -> bool:
    """True (and says why) when a stale host not named by the operator forbids deleting."""
    stale = [h for h in s.stale_hosts if h["host"] not in ignore]
    for name in ignore:
        if not any(h["host"] == name for h in s.stale_hosts):
            out.write(f"note: --ignore-stale {_p(name)}: no such stale host; nothing to ignore\n")
    if not stale:
        return False
    out.write("refused: these hosts of the rack are stale, so their containers' use of the\n")
    out.write("shared filesystem is not being recorded and may look unused:\n")
    for h in stale:
        out.write(f"  {_p(h['host'])}  last seen {_p(h['last_seen'])} ({_p(h['status'])})\n")
    names = " ".join(_p(h["host"]) for h in stale)
    out.write(
        "start volagent on them, or, once you know they are gone for good or their "
        f"containers' data may go, run again with --ignore-stale {names}\n"
    )
    log.get("gc").warning("gc_refused_stale_hosts", hosts=[h["host"] for h in stale])
    return True


def delete(cfg: Config, root_fd: int, s: Survey, local: set[Key], out: TextIO) -> bool:
    """Moves every candidate still unused into the trash; True when none failed."""
    w = out.write
    who = gctrash.operator(cfg.host_id)
    days = (time.time() - s.cutoff) / 86400
    for c in s.candidates:
        try:
            moved = guarded(
                functools.partial(
                    gctrash.move,
                    root_fd,
                    c,
                    still_unused=functools.partial(_still_unused, cfg, root_fd, c, s, local),
                    reason=f"unused for {days:.0f} days (last use {last_use(c)})",
                    who=who,
                ),
                f"moving {c.path}",
            )
        except (VolagentError, OSError) as exc:
            log.get("gc", path=c.path).error("gc_move_failed", reason=str(exc))
            w(f"failed  {_p(c.path)}: {_p(str(exc))}\n")
            return False
        if moved.outcome == gctrash.Outcome.KEPT:
            w(f"kept    {_p(c.path)}: used since the listing\n")
        elif moved.outcome == gctrash.Outcome.GONE:
            w(f"gone    {_p(c.path)}: removed by someone else meanwhile\n")
        else:
            w(f"trashed {_p(c.path)} ({format_size(c.size)}) as {_p(str(moved.entry))}\n")
    pruned = guarded(lambda p: prune_old_records(root_fd, s.cutoff, p), "pruning old records")
    if pruned:
        w(f"removed {pruned} records older than the window from {records.AGENT_DIR}/\n")
    return True


def _still_unused(cfg: Config, root_fd: int, c: Candidate, s: Survey, local: set[Key]) -> bool:
    # this host's daemon asked again, just before (it refuses if the mount went bad)
    keys = local | local_use(cfg)[0]
    return gcsurvey.still_unused(
        root_fd,
        c,
        s.cutoff,
        keys,
        mount_point=cfg.mount_point,
        expire_after_s=cfg.health.forget_after_s,
    )


def restore(root_fd: int, name: str, cfg: Config) -> int:
    if trash.parse(name) is None:
        print(f"volagent gc: {_p(repr(name))} is not a trash entry name; `volagent gc` lists them")
        return 1
    try:
        done = guarded(
            lambda p: gctrash.restore(root_fd, name, cfg.mount_point), f"restoring {name}"
        )
    except gctrash.TrashError as exc:
        log.get("gc", entry=name).warning("gc_restore_refused", reason=str(exc))
        print(f"volagent gc: cannot restore: {_p(str(exc))}", file=sys.stderr)
        return 1
    print(_p(str(done)))
    return 0


def purge(root_fd: int, days: float, cfg: Config) -> int:
    cutoff = time.time() - days * 86400
    results = guarded(
        lambda p: gctrash.purge(root_fd, cutoff, cfg.mount_point, p), "purging the trash"
    )
    if not results:
        print(f"nothing has been in the trash for {days:g} days")
    for r in results:
        print(f"{r.outcome:<7} {_p(str(r.entry))}" + (f": {_p(r.detail)}" if r.detail else ""))
    return 0 if all(r.outcome == gctrash.Outcome.PURGED for r in results) else 1


def usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with gc's command line, or None: the command line refuses it as it
    refuses any bad value (the usage, exit 64). `--older-than` takes a positive number of
    days up to MAX_DAYS, 0 too with `--purge` (everything in the trash); `--ignore-stale`
    goes with `--delete`."""
    if getattr(args, "ignore_stale", None) and not getattr(args, "delete", False):
        return "--ignore-stale goes with --delete"
    days = args.older_than
    if days is None:
        return None
    if not math.isfinite(days) or not 0 <= days <= MAX_DAYS:
        return f"--older-than {days:g}: must be a positive number of days up to {MAX_DAYS:g}"
    if days == 0 and not getattr(args, "purge", False):
        return "--older-than 0 goes with --purge only (it empties the trash)"
    return None


def _days(args: argparse.Namespace, purging: bool) -> float:
    default = PURGE_DEFAULT_DAYS if purging else DEFAULT_DAYS
    return default if args.older_than is None else float(args.older_than)


def window_cutoff(days: float, now: float) -> float:
    """The time before which a directory's last use must lie for it to be unused for `days`.
    A create marks a directory's mtime only when it is more than TOUCH_AFTER_S old, so a
    recent mtime may stand for a use up to that much later: the window is widened by it,
    and a create racing gc always finds the namespace kept or in the trash."""
    return now - days * 86400 - trashcheck.TOUCH_AFTER_S


def main(args: argparse.Namespace, cfg: Config) -> int:
    restoring = getattr(args, "restore", None)
    purging = bool(getattr(args, "purge", False))
    deleting = bool(getattr(args, "delete", False))
    ignore = list(getattr(args, "ignore_stale", None) or [])
    problem = usage_problem(args)
    if problem is not None:  # cli.main refuses such a command line first, with the usage
        raise ValueError(f"volagent gc: {problem}")
    days = _days(args, purging)
    log.configure(cfg.log_level, stderr=True)
    cutoff = window_cutoff(days, time.time())
    try:
        local, daemon_state = local_use(cfg)
        if daemon_state is None:
            print("note: the volagent daemon did not answer; checking the mount table instead")
        root = open_shared(cfg, daemon_state)
    except VolagentError as exc:
        print(f"volagent gc: refused: {_p(str(exc))}", file=sys.stderr)
        return 1
    with safedir.closing(root):
        try:
            if restoring:
                return restore(root, restoring, cfg)
            if purging:
                return purge(root, days, cfg)
            result = guarded(
                lambda p: survey(
                    root,
                    cfg.mount_point,
                    cutoff=cutoff,
                    local=local,
                    stale_after_s=cfg.health.stale_after_s,
                    expire_after_s=cfg.health.forget_after_s,
                    progress=p,
                ),
                f"surveying {cfg.mount_point}",
            )
            print_survey(result, days, sys.stdout)
            guarded(lambda p: print_trash(root, cfg.mount_point, sys.stdout), "listing the trash")
            if not deleting:
                if result.candidates:
                    print("run with --delete to move them into the trash")
                return 0
            if refuse_stale(result, ignore, sys.stdout):
                return 1
            return 0 if delete(cfg, root, result, local, sys.stdout) else 1
        except VolagentError as exc:
            print(f"volagent gc: {_p(str(exc))}", file=sys.stderr)
            return 1
