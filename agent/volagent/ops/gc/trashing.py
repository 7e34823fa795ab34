"""gc's second phase: moving candidates into the trash, restoring them, purging the trash.

A move is one rename on the shared filesystem, so no container ever sees a namespace half
removed: it is all there, or all in the trash. The steps, each logged:

1. claim an entry: write its record (`moving`, who, when, why) exclusively;
2. judge the candidate a last time (usage records of every host, this host's containers,
   its mtime, which the preparer touches before it creates: see volumes/trashcheck.py); kept: the
   record goes again;
3. rename `<mp>/<ns>` (or `<mp>/<ns>/<dir>`) to `<mp>/.volagent/trash/<entry>`, through
   directory descriptors, so no symlink is followed;
4. record it `trashed`.

Restoring renames it back (never over anything that exists again) and marks it used now, so
the next gc does not take it at once. Purging is the slow file-by-file removal, and only of
data nobody can be using: creates into a trashed namespace are refused, and an entry a host
still reports in use is kept. Blocking: command.py runs these in watched threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import getpass
import os
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from volagent import log, safedir
from volagent.errors import VolagentError
from volagent.ops.gc import tree
from volagent.ops.gc.survey import LIVE_S, Candidate, collect_usage
from volagent.rack import records, trash
from volagent.rack.usage.recorder import MOUNT_ROOT
from volagent.state import now_iso

RENAME_NOREPLACE = 1


class TrashError(VolagentError):
    """A restore or purge that cannot be done as asked; the message says what to do."""


def operator(host_id: str) -> dict[str, Any]:
    """Who is acting: this host, the user (the one behind sudo too) and the process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    sudo = os.environ.get("SUDO_USER")
    return {
        "host": host_id or socket.gethostname(),
        "user": f"{sudo} (sudo)" if sudo else user,
        "pid": os.getpid(),
    }


class Outcome(StrEnum):
    """What gc did with a candidate or a trash entry, as the first column it prints."""

    MOVED, KEPT, GONE, PURGED, PARTLY = "moved", "kept", "gone", "purged", "partly"


@dataclass
class Moved:
    """What became of one candidate: `entry` is its trash entry when it was moved."""

    candidate: Candidate
    entry: str | None
    outcome: Outcome  # MOVED, KEPT or GONE


def move(
    root_fd: int,
    c: Candidate,
    progress: tree.Progress,
    *,
    still_unused: Callable[[], bool],
    reason: str,
    who: dict[str, Any],
) -> Moved:
    """Moves one candidate into the trash, judged again (`still_unused`) once its entry is
    claimed."""
    bound = log.get("gc", path=c.path)
    trash_fd = records.ensure_dir(root_fd, (records.AGENT_DIR, trash.TRASH_DIR))
    with safedir.closing(trash_fd):
        now = time.time()
        record = trash.TrashRecord(
            trash.MOVING, c.namespace, c.directory, c.path, now, now_iso(now), who, reason,
            c.size, c.last_used, c.last_host,
        )  # fmt: skip
        for _ in range(10):  # another gc may claim the same name at the same second
            entry = trash.new_entry(c.namespace, c.directory, now, trash_fd)
            record.entry = entry.name
            if trash.claim(trash_fd, entry, record):
                break
        else:
            raise TrashError(f"{c.path}: could not claim a trash entry")
        bound.info("gc_trash_claimed", entry=entry.name, reason=reason)
        progress.tick()
        try:
            unused = still_unused()
        except BaseException:
            trash.forget(trash_fd, entry)  # a claim left behind would refuse creates
            raise
        if not unused:
            trash.forget(trash_fd, entry)
            bound.info("gc_kept", entry=entry.name, why="used since the listing")
            return Moved(c, None, Outcome.KEPT)
        if c.directory is None:
            parent: int | None = os.dup(root_fd)
        else:
            parent = records.open_dir(root_fd, (c.namespace,), create=False)
        if parent is None:
            trash.forget(trash_fd, entry)
            return Moved(c, None, Outcome.GONE)
        with safedir.closing(parent):
            try:
                name = c.namespace if c.directory is None else c.directory
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode) or st.st_dev != os.fstat(root_fd).st_dev:
                    raise TrashError(f"{c.path} is no longer a directory of the shared filesystem")
                os.rename(name, entry.name, src_dir_fd=parent, dst_dir_fd=trash_fd)
            except FileNotFoundError:
                trash.forget(trash_fd, entry)
                bound.info("gc_gone", entry=entry.name)
                return Moved(c, None, Outcome.GONE)
            except BaseException:
                trash.forget(trash_fd, entry)
                raise
        progress.tick()
        bound.info("gc_moved", entry=entry.name, size=c.size)
        record.state = trash.TRASHED
        trash.write(trash_fd, entry, record)
        return Moved(c, entry.name, Outcome.MOVED)


def rename_noreplace(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str) -> None:
    """Renames, and fails with FileExistsError instead of replacing what is at `dst` (a
    plain rename would silently replace an empty directory)."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        done = renameat2(src_dir_fd, src.encode(), dst_dir_fd, dst.encode(), RENAME_NOREPLACE)
        if done == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), dst)
    # the filesystem cannot refuse a replacement itself (older NFS clients): look first
    try:
        os.stat(dst, dir_fd=dst_dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        return
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)


def restore(root_fd: int, name: str, mount_point: str) -> str:
    """Puts a trashed entry back where it was; what was done, in words."""
    mp = mount_point.rstrip("/")
    bound = log.get("gc", entry=name)
    trash_fd = trash.open_trash(root_fd, create=False)
    if trash_fd is None:
        raise TrashError(f"the trash is empty: there is no {name!r}")
    with safedir.closing(trash_fd):
        found = next((e for e in trash.entries(trash_fd) if e.entry.name == name), None)
        if found is None:
            raise TrashError(f"no trash entry {name!r}; `volagent gc` lists the trash")
        held = found.entry
        target = f"{mp}/{held.relative}"
        if found.state == trash.PURGING:
            raise TrashError(
                f"{name} is being purged (what is left of it is incomplete); finish with "
                "`volagent gc --purge`"
            )
        if not found.has_directory:
            trash.forget(trash_fd, held)
            bound.info("gc_restore_nothing", why="the move never happened")
            return f"nothing to restore: {target} was never moved; removed the record of {name}"
        parts = (held.namespace,) if held.directory is not None else ()
        parent = records.ensure_dir(root_fd, parts)
        leaf = held.namespace if held.directory is None else held.directory
        with safedir.closing(parent):
            try:
                rename_noreplace(trash_fd, name, parent, leaf)
                with contextlib.suppress(OSError):
                    _mark_used(parent, leaf, whole=held.directory is None)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                raise TrashError(
                    f"{target} exists again (made after the move, e.g. by a container started "
                    f"without the guard): move whatever in it matters into "
                    f"{mp}/{records.AGENT_DIR}/{trash.TRASH_DIR}/{name}, remove {target}, "
                    f"then run `volagent gc --restore {name}` again"
                ) from None
        trash.forget(trash_fd, held)
        bound.info("gc_restored", path=target)
        return f"restored {target} from {name}"


def _mark_used(parent_fd: int, leaf: str, whole: bool) -> None:
    """Sets the mtime of a restored directory (and of a namespace's directories) to now:
    the next gc must not take it again at once."""
    fd = records.open_dir(parent_fd, (leaf,), create=False)
    if fd is None:
        return
    with safedir.closing(fd):
        os.utime(fd)
        for d in safedir.subdirs(fd, dots=True) if whole else ():
            os.utime(d, dir_fd=fd, follow_symlinks=False)


@dataclass
class Purged:
    entry: str
    outcome: Outcome  # PURGED, KEPT or PARTLY
    detail: str = ""


def purge(root_fd: int, cutoff: float, mount_point: str, progress: tree.Progress) -> list[Purged]:
    """Removes every entry moved into the trash before `cutoff`, unless a host still reports
    its path in use."""
    mp = mount_point.rstrip("/")
    trash_fd = trash.open_trash(root_fd, create=False)
    if trash_fd is None:
        return []
    out: list[Purged] = []
    dev = os.fstat(root_fd).st_dev
    with safedir.closing(trash_fd):
        for found in list(trash.entries(trash_fd)):
            progress.tick()
            held = found.entry
            moved_at = found.moved_at
            if moved_at is None and found.has_directory:
                moved_at = os.stat(held.name, dir_fd=trash_fd, follow_symlinks=False).st_ctime
            if moved_at is None or moved_at >= cutoff:
                continue
            bound = log.get("gc", entry=held.name)
            user = _still_used(root_fd, held, moved_at)
            if user:
                bound.warning("gc_purge_kept", why=user)
                out.append(Purged(held.name, Outcome.KEPT, user))
                continue
            if found.has_directory:
                record = found.record or trash.TrashRecord(entry=held.name, time=moved_at)
                record.state, record.purging_since = trash.PURGING, now_iso()
                trash.write(trash_fd, held, record)
                bound.info("gc_purge_started", path=f"{mp}/{held.relative}")
                shown = f"{mp}/{records.AGENT_DIR}/{trash.TRASH_DIR}/{held.name}"
                removal = tree.remove_tree(trash_fd, held.name, dev, shown, progress)
                if not removal.complete:
                    bound.error("gc_purge_partly", problems=removal.problems[:5])
                    out.append(Purged(held.name, Outcome.PARTLY, "; ".join(removal.problems[:5])))
                    continue
            trash.forget(trash_fd, held)
            bound.info("gc_purged")
            out.append(Purged(held.name, Outcome.PURGED))
    return out


def _still_used(root_fd: int, held: trash.EntryName, moved_at: float) -> str:
    """Why the entry must stay: a host reported its path in use after the move, lately (a
    container bound it before the move, or names it still); "" when nobody does."""
    usage, _ = collect_usage(root_fd, only_namespace=held.namespace)
    recent = time.time() - LIVE_S
    for key, (t, host) in sorted(usage.items()):
        relevant = key == MOUNT_ROOT or key[1] == "" or held.directory in (None, key[1])
        if relevant and t > moved_at and t >= recent:
            where = "/".join(p for p in key if p)
            return (
                f"host {host} reported {where} in use at {now_iso(t)}, after it was trashed: "
                "check that host's containers (`volagent status`), then restore or purge it"
            )
    return ""
