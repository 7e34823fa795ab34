"""Where a bind source really lands: the host-side resolution behind "one path, one verdict".

Docker follows symlinks in a bind source and mounts whatever the kernel finds there, so a
source spelled outside the mount point can still be the shared filesystem:
`/proc/self/root/volumes/other-app`, a host symlink to the mount point, or another mount of
the same filesystem (`mount --bind /volumes/other-app /mnt/x`). `locate` resolves a source
the way the kernel will (symlinks followed, then the mount table) and says whether it lands
inside the shared filesystem (and at which path under the mount point it would be reached),
contains it (a recursive bind of `/` carries every app's data along), or lies elsewhere.
`resolve` follows the path step by step as the kernel does and records every location it
visits on the way: rule 7 for host paths (nesting.host_path_nested) needs them, since
whoever binds a directory above any of them can change where the path leads at the next
start.

Sources spelled under the mount point are not resolved here: the directory walk judges
those without following anything. These functions block (a lookup on a hung mount blocks
in the kernel): call them through a TimedWorker.
"""

from __future__ import annotations

import errno
import os
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from volagent.mount.table import MountEntry, read_table
from volagent.nesting import strictly_under, under
from volagent.volumes.namespace import go_clean

OUTSIDE = "outside"  # not the shared filesystem: not volagent's business
INSIDE = "inside"  # on the shared filesystem, reached at `path` under the mount point
CONTAINS = "contains"  # a recursive bind of it would carry the shared filesystem along
NESTED = "nested"  # the preparer's verdict: it leads through another bind (rule 7), `path` says how
MAX_LINKS = 40  # the kernel's own limit of symlinks followed in one lookup (ELOOP beyond)


@dataclass(frozen=True)
class Landing:
    """Where one bind source lands. `path` is, for INSIDE, the path under the mount point
    that names the same directory; for CONTAINS, the shared mount it would carry along."""

    source: str
    kind: str
    path: str = ""
    # the source with every symlink followed, and each location visited on the way there
    resolved: str = ""
    visited: tuple[str, ...] = ()


def resolve(source: str) -> tuple[str, tuple[str, ...]]:
    """Where `source` (absolute) leads, followed one component at a time as the kernel does,
    and every location visited: each directory of the path as written, each symlink met and
    each step of where it leads, the resolved path last. A component that does not exist
    ends the following there (the rest is taken as written, as Docker creates it). Raises
    OSError(ELOOP) past MAX_LINKS symlinks."""
    todo = [p for p in reversed(go_clean(source).split("/")) if p]
    here = "/"
    visited: list[str] = []
    links = 0
    while todo:
        name = todo.pop()
        if name == ".":
            continue
        if name == "..":
            here = posixpath.dirname(here)  # of the resolved directory, as the kernel does
            visited.append(here)
            continue
        step = posixpath.join(here, name)
        visited.append(step)
        try:
            # readlink answers at once on a mounted directory (EINVAL) without asking it
            target = os.readlink(step)
        except OSError:
            here = step  # not a symlink, or not there: taken as written
            continue
        links += 1
        if links > MAX_LINKS:
            raise OSError(errno.ELOOP, f"more than {MAX_LINKS} symlinks", source)
        if target.startswith("/"):
            here = "/"
        todo.extend(p for p in reversed(target.split("/")) if p)
    visited.append(here)
    return here, tuple(dict.fromkeys(visited))


def _within(entry: MountEntry, path: str) -> str:
    """The path of `path` inside the filesystem mounted by `entry` (`path` lies under its
    mount point)."""
    rest = path[len(entry.mount_point) :].lstrip("/") if entry.mount_point != "/" else path
    return posixpath.join(entry.root, rest.lstrip("/")) if rest.strip("/") else entry.root


def _mount_of(entries: Sequence[MountEntry], path: str) -> MountEntry | None:
    """The mount a resolved path is on: the longest mount point above it, the topmost one
    where several share it (later lines are mounted on top)."""
    best: MountEntry | None = None
    for e in entries:
        if under(path, e.mount_point) and (
            best is None or len(e.mount_point) >= len(best.mount_point)
        ):
            best = e
    return best


def locate_all(mount_point: str, sources: Iterable[str], table: str = "") -> list[Landing]:
    """Resolves each source; one read of the mount table for all of them."""
    shared = SharedFilesystem(mount_point, read_table(table) if table else read_table())
    return [shared.locate(s) for s in sources]


class SharedFilesystem:
    """The shared filesystem as the kernel knows it: the mount at the mount point, its
    device, and the directory of that filesystem the mount point shows."""

    def __init__(self, mount_point: str, entries: Sequence[MountEntry]) -> None:
        self.mp = go_clean(mount_point)
        self.real_mp = _real_mount_point(self.mp)
        self.entries = entries
        self.mount = _mount_of(entries, self.real_mp)
        self.dir = _within(self.mount, self.real_mp) if self.mount is not None else ""

    def inner(self, path: str) -> str:
        """The directory of the filesystem that `path` (under the mount point) names, as
        mountinfo writes it."""
        return (
            posixpath.join(self.dir, go_clean(path)[len(self.mp) :].lstrip("/")).rstrip("/") or "/"
        )

    def outer(self, inner: str) -> str:
        """The path under the mount point of a directory of the shared filesystem."""
        return _join(self.mp, inner[len(self.dir) :] if self.dir != "/" else inner)

    def locate(self, source: str) -> Landing:
        resolved, visited = resolve(source)
        land = self._land(source, resolved)
        return Landing(land.source, land.kind, land.path, resolved, visited)

    def _land(self, source: str, resolved: str) -> Landing:
        if under(resolved, self.real_mp):
            return Landing(source, INSIDE, _join(self.mp, resolved[len(self.real_mp) :]))
        if strictly_under(self.real_mp, resolved):
            return Landing(source, CONTAINS, f"the shared filesystem at {self.mp}")
        if under(go_clean(source), "/proc") or under(resolved, "/proc"):
            # /proc/<pid>/root and /cwd lead into other mount namespaces: a container's
            # binds, another app's directories among them
            return Landing(source, CONTAINS, "/proc, whose <pid>/root leads into every container")
        shared = self.mount
        if shared is None:
            return Landing(source, OUTSIDE)
        on = _mount_of(self.entries, resolved)
        if on is not None and on.dev == shared.dev:
            inner = _within(on, resolved)
            if under(inner, self.dir):
                return Landing(source, INSIDE, _join(self.mp, inner[len(self.dir) :]))
        for e in self.entries:
            # another mount of the shared filesystem below the source: a recursive bind
            # carries it along (mounts of other parts of that filesystem do not matter)
            overlaps = under(e.root, self.dir) or under(self.dir, e.root)
            if e.dev == shared.dev and strictly_under(e.mount_point, resolved) and overlaps:
                return Landing(source, CONTAINS, f"the shared filesystem at {e.mount_point}")
        return Landing(source, OUTSIDE)


def _real_mount_point(mp: str) -> str:
    """The mount point with symlinks resolved, without a stat of the mount point itself:
    that would ask the shared filesystem, which may be hung. readlink on a mounted
    directory fails at once (EINVAL) without asking it."""
    parent = os.path.realpath(posixpath.dirname(mp) or "/")
    here = posixpath.join(parent, posixpath.basename(mp))
    try:
        target = os.readlink(here)
    except OSError:
        return here
    return os.path.realpath(posixpath.join(parent, target))


def _join(mp: str, rest: str) -> str:
    rest = rest.strip("/")
    return f"{mp.rstrip('/')}/{rest}" if rest else mp
