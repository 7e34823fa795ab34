"""Before the preparer creates anything: mark the namespace as used now, and refuse a
namespace that is in the trash.

The order is what makes gc safe (see ops/gc/trashing.py). gc writes the entry's record first, then
judges the candidate a last time (its mtime among the rest), then renames it. The preparer
marks the namespace and the bind's directory in it used first (their mtime is recent), then
looks for a trash entry. So either the preparer looks after the record exists, and refuses; or
it marked before the record existed, hence before gc's last judgement, and gc keeps the
directory. Without this, a create that comes after the rename would make a fresh, empty
namespace, and its container would start on it with its data in the trash.

A directory whose mtime, or this host's usage record of it (rack/usage/recorder.py), is within
TOUCH_AFTER_S of now is marked already: gc widens every window by TOUCH_AFTER_S
(ops/gc/command.py window_cutoff) and counts both the mtime and every host's records, so its
last judgement keeps it as surely as after a touch, and the touch (a write round trip, which
also makes the kernel's NFS client revalidate the directory's caches) is left out. The usage
record of the container keeps it from then on.

Since 0.5 the mark is left out of a create whose binds the guard claimed in the rack's
registry just before, while every host sharing the filesystem runs a gc that reads the
registry (the heartbeat task judges that: rack/heartbeat.py). The claim takes the mark's
place: it is written before the look in the trash, and gc's last judgement reads the
registry under its lock after writing its record (ops/gc/registered.py).

A create the guard claims opens what exists of its path while the claim's transaction is
under way (`open_ahead`; since 0.7 only once the claim holds the namespace's lock): the
opens order nothing for gc, and create, mark and look in the trash nothing. The walk proper
(`prepare_path` given those descriptors) comes after the claim, as before: so the look in
the trash still comes after the claim's entry is in place, and nothing is made for a bind
the claim refused. The walk takes the descriptors only while the mount point is still the
root of the filesystem they were opened on (an unmount or a mount over it meanwhile: it
opens afresh, and is refused). Their components are judged as of the look ahead, under the
lock: a bind above the path that a claim allowed, or that a keeper registered, on any host
of the rack, has its entry in the file by then, which the claim meets (rule 7), and one that
went before the lock did whatever it did before the look (0.6 looked before the lock, so
such a bind could change the path, go, and leave the claim nothing to meet). Binds allowed
without an entry (`when_unhealthy = "allow"` while the mount was unhealthy, `violations =
"warn"`, a host forgotten while its containers run) are outside rule 7 across hosts anyway.
During the rest of the transaction only root, or a host without volagent, can change the
path: a component renamed and replaced by a symlink, or a mount made on one, then gets the
directory made in the directory opened, inside the namespace; a leaf removed meanwhile is
not made again at the create.

A start walks the path again. When the create walk here recorded it (device and inode of
every component) and every component is still the same directory, nothing else is asked:
the directories are the ones judged at create, which were marked then and not in the trash
(a move into the trash takes the directory away from its path: it would not be found there).
Anything else is judged from scratch, as a create.

Since 0.7 the start of a path this host's entries in the registry have held without a break
since the walk that recorded it (as a claim needing no transaction judges it, then and now:
Registry.holding_of), and that comes within LOOK_WITHIN_S of when that walk fetched its
directories (`held`: a start after the guard's create, or of a service in use here;
volumes/preparer.py decides), only looks at each component (O_PATH: the kernel's NFS client
answers from its caches, without the revalidation of an open) and compares it with the
record. What the look cannot see is a change another host made on the server since the walk
fetched the component's parent, and while the entry stands nobody the rules let in can make
one: a component's name lives in its parent, which only a bind of a directory above the path
reaches, and rule 7 across the rack refuses every such bind while the entry holds the path
(one that went before the claim's lock did what it did before the walk looked); gc keeps
what the registry holds (ops/gc/registered.py), so it moves nothing of it into the trash.
Whatever this host did (its containers, Docker, an operator here) is in its caches at once,
so a symlink, a mount or another directory at the path is seen as before. A change made
outside the rules (root on another host, or a host the registry does not hold back: its
agent down for `forget_after_s` while its containers run) is not seen, where an open would
see it. Docker binds the path through the same caches, which keep what the walk fetched for
`acdirmin` (30 s by default) at least, so within the bound it mostly binds what the walk
judged (the directory since renamed, not a symlink put in its place); but anything on this
host that revalidates a directory of the path in between (another walk through it) makes
Docker's lookup ask the server, and the check after the start (volumes/mount_check.py) is
then what finds the mount that is not the directory prepared. A look that meets a directory
removed on the server (ESTALE) judges the path afresh. A start of a path the entries do not
hold, later than the bound, or that does not compare, opens every component as a create
does.

Blocking: runs in the timed worker.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from volagent import safedir
from volagent.errors import NamespaceTrashed
from volagent.rack import records, trash
from volagent.values import Owner
from volagent.volumes import directories

# how recent an mtime counts as marked; gc widens its window by as much (clocks of the hosts
# and of the server differ by far less than an hour)
TOUCH_AFTER_S = 3600.0
# the components gc judges by their mtime: the namespace, and the bind's directory in it
MARKED = 2


def mark_used(
    opened: Sequence[tuple[int, os.stat_result]], recorded_at: float | None = None
) -> int:
    """Sets the mtime of `<ns>` and `<ns>/<dir>` (those the walk opened) to now where it is
    older than TOUCH_AFTER_S: a directory changed within gc's window is never a candidate.
    Nothing is touched when this host's usage record of the directory (`recorded_at`) is
    that recent: gc keeps what a record of its window names. How many were touched."""
    now = time.time()
    if recorded_at is not None and recorded_at >= now - TOUCH_AFTER_S:
        return 0
    touched = 0
    for fd, st in opened:
        if st.st_mtime < now - TOUCH_AFTER_S:
            with contextlib.suppress(OSError):  # a failure is the walk's to report
                os.utime(fd)
                touched += 1
    return touched


def refuse_if_trashed(mount_point: str, root_fd: int, parts: Sequence[str]) -> None:
    """Raises NamespaceTrashed when the bind's namespace, or its directory, is in the trash."""
    if not parts:
        return
    trash_fd = trash.open_trash(root_fd, create=False)
    if trash_fd is None:
        return
    with safedir.closing(trash_fd):
        entry = trash.holding(trash_fd, parts[0], parts[1] if len(parts) > 1 else None)
        if entry is None:
            return
        record = records.read_one(trash_fd, entry + records.SUFFIX, trash.TrashRecord)
    held = trash.parse(entry)
    shown = f"{mount_point.rstrip('/')}/{held.relative if held else parts[0]}"
    if record is not None and record.state == trash.PURGING:
        raise NamespaceTrashed(
            entry,
            f"{shown} is being purged from the trash ({entry}) by `volagent gc --purge`: its "
            "data is going for good; create containers that use it once the purge has "
            "finished (`volagent gc` lists the trash)",
        )
    raise NamespaceTrashed(
        entry,
        f"{shown} is in the trash as {entry} (moved there by `volagent gc --delete` as "
        f"unused); restore it with `volagent gc --restore {entry}` before creating containers "
        "that use it",
    )


@dataclass
class Ahead:
    """What exists of a create's path, opened from the mount point before its claim has
    ended: handed to `prepare_path`, which closes it, or closed."""

    parts: tuple[str, ...]
    root: int
    existing: directories.Existing
    _taken: bool = False
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> Ahead | None:
        """This, to the first caller only: who closes it, or hands it to `prepare_path`."""
        with self._guard:
            taken, self._taken = self._taken, True
        return None if taken else self

    def close(self) -> None:
        self.existing.close()
        if self.root >= 0:
            os.close(self.root)
            self.root = -1


def open_ahead(mount_point: str, parts: Sequence[str], expected_dev: int | None) -> Ahead:
    """The mount point and what exists of the path below it, opened and judged (a symlink or
    a mount on the way is a violation), nothing made, marked or looked up in the trash."""
    root = safedir.open_mount_point(mount_point, expected_dev)
    try:
        return Ahead(tuple(parts), root, directories.open_existing(root, mount_point, parts))
    except BaseException:
        os.close(root)
        raise


def _still_there(ahead: Ahead, mount_point: str, expected_dev: int | None) -> bool:
    """Whether what was opened ahead is of the filesystem expected now, and its mount point
    is still that filesystem's root at its path (one unmounted or covered meanwhile is not
    the shared one). Asked of the client's caches: a mount is the host's own table."""
    if expected_dev is not None and ahead.existing.dev != expected_dev:
        return False
    try:
        here = os.stat(mount_point)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == ahead.existing.root_id


def prepare_path(
    mount_point: str,
    parts: Sequence[str],
    owner: Owner,
    mode: int,
    expected_dev: int | None,
    *,
    known: directories.Identity = (),
    held: bool = False,
    recorded_at: float | None = None,
    mark: bool = True,
    ahead: Ahead | None = None,
) -> directories.Prepared:
    """directories.prepare_below from the mount point's path, with the namespace marked used
    and known not to be in the trash before anything is created; the mount point is opened
    once for all three. With `known` (what the create walk recorded), a path whose
    components are all still those directories is only walked (a start); `held`: the
    registry has held the bind for this host since that walk, a moment ago, so they are
    only looked at (see the module's docstring). `recorded_at`: the
    time of this host's last usage record of the bind's directory, if any (see `mark_used`).
    `mark` False: the registry holds the bind and every host's gc reads it, so the mark is
    left out (ops/gc/registered.py). `ahead`: the mount point and what exists of the path,
    opened by `open_ahead` (then not opened again); closed here."""
    if ahead is not None and (known or ahead.parts != tuple(parts)):
        ahead.close()
        raise ValueError("a path opened ahead is for the create walk of that path")
    if known and held:
        with safedir.closing(safedir.look_at_mount_point(mount_point, expected_dev)) as top:
            same = directories.verify_below(top, mount_point, parts, known, look=True)
        if same is not None:
            return same
        known = ()  # not the same directories: judged from scratch, opening each
    try:
        if ahead is not None and not _still_there(ahead, mount_point, expected_dev):
            ahead.close()  # another filesystem than the one expected now, or not at its place
            ahead = None
    except BaseException:
        if ahead is not None:
            ahead.close()
        raise
    root = safedir.open_mount_point(mount_point, expected_dev) if ahead is None else ahead.root
    existing = None if ahead is None else ahead.existing
    if ahead is not None:
        ahead.root = -1  # this function's to close now, as the walk's descriptors are
    with safedir.closing(root):
        if known:
            same = directories.verify_below(root, mount_point, parts, known)
            if same is not None:
                return same

        def marked_and_not_trashed(opened: list[tuple[int, os.stat_result]]) -> None:
            if mark:
                mark_used(opened, recorded_at=recorded_at)
            refuse_if_trashed(mount_point, root, parts)

        return directories.prepare_below(
            root,
            mount_point,
            parts,
            owner,
            mode,
            held=MARKED,
            before_create=marked_and_not_trashed,
            existing=existing,
        )
