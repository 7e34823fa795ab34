"""The kernel's mount table: `/proc/self/mountinfo` parsed, and watched for changes.

Reading mountinfo never touches the mounted filesystems themselves (the kernel formats it from
its own records), so it is safe on the event loop even while a mount hangs. The file is
pollable: the kernel flags POLLPRI on it whenever a mount is added or removed in this mount
namespace, so a change is noticed as it happens instead of on a timer.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
from collections.abc import Callable, Iterable
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"
_ESCAPE = re.compile(r"\\([0-7]{3})")
# The kernel's NFS client shows "/" as the root of every mount in mountinfo and puts the
# directory in the source instead: a bind of /volumes/a/b reads `/ ... nfs4 server:/export/a/b`
_NFS_TYPES = frozenset({"nfs", "nfs4"})


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo (proc(5)): a mount of `source` (`fstype`) at `mount_point`."""

    mount_id: int
    parent_id: int
    dev: int  # st_dev of files on this mount, from major:minor
    root: str  # the directory of the filesystem mounted here ("/" unless a bind of a subdir;
    # for NFS the server's path from the source, which is where the kernel shows it)
    mount_point: str
    options: str
    fstype: str
    source: str
    super_options: str


def _unescape(text: str) -> str:
    # the kernel escapes space, tab, newline and backslash as three octal digits
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


def parse_line(line: str) -> MountEntry | None:
    """Parses one mountinfo line; None for a line that is not one (never raises)."""
    fields = line.split()
    try:
        sep = fields.index("-", 6)
        major, minor = fields[2].split(":")
        fstype = fields[sep + 1]
        source = _unescape(fields[sep + 2])
        root = _unescape(fields[3])
        if fstype in _NFS_TYPES and root == "/":
            root = _nfs_path(source) or root
        return MountEntry(
            mount_id=int(fields[0]),
            parent_id=int(fields[1]),
            dev=os.makedev(int(major), int(minor)),
            root=root,
            mount_point=_unescape(fields[4]),
            options=fields[5],
            fstype=fstype,
            source=source,
            super_options=fields[sep + 3] if len(fields) > sep + 3 else "",
        )
    except (ValueError, IndexError):
        return None


def _nfs_path(source: str) -> str:
    """The server's path of an NFS source (`host:/path`, `[v6]:/path`), cleaned; "" if none."""
    rest = source.partition("]:")[2] if source.startswith("[") else source.partition(":")[2]
    if not rest.startswith("/"):
        return ""
    return "/" + "/".join(p for p in rest.split("/") if p and p != ".")


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Every mount in the table, in the kernel's order (later lines are mounted on top)."""
    return [e for e in (parse_line(line) for line in text.splitlines()) if e is not None]


def read_table(path: str = MOUNTINFO, at: str | None = None) -> list[MountEntry]:
    """The mount table; with `at`, only the mounts at exactly that (normalized) mount point,
    the other lines not even parsed: a host running hundreds of containers has hundreds of
    mounts, and the mount side looks at the table, on the event loop, at every change."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        text = f.read()
    if at is None:
        return parse_mountinfo(text)
    needle = f" {_escape(at)} "
    lines = (line for line in text.splitlines() if needle in line)
    return [e for e in map(parse_line, lines) if e is not None and e.mount_point == at]


def _escape(path: str) -> str:
    # as the kernel writes a path in mountinfo
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)


def mount_at(entries: Iterable[MountEntry], mount_point: str) -> MountEntry | None:
    """The mount visible at exactly `mount_point` (the topmost one), or None."""
    found = None
    target = os.path.normpath(mount_point)
    for e in entries:
        if e.mount_point == target:
            found = e
    return found


def find_mount(mount_point: str, path: str = MOUNTINFO) -> MountEntry | None:
    """What is mounted at `mount_point` right now, or None."""
    target = os.path.normpath(mount_point)
    return mount_at(read_table(path, at=target), target)


class TableWatch:
    """Calls `on_change()` on the event loop each time the mount table changes.

    An epoll set holding mountinfo with EPOLLPRI only becomes readable on a change (mountinfo
    itself always polls readable, so it cannot be given to the loop directly).
    """

    def __init__(self, on_change: Callable[[], None], path: str = MOUNTINFO) -> None:
        self._on_change = on_change
        self._path = path
        self._fd = -1
        self._epoll: select.epoll | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        self._epoll = select.epoll()
        self._epoll.register(self._fd, select.EPOLLPRI | select.EPOLLERR)
        self._loop.add_reader(self._epoll.fileno(), self._ready)

    def _ready(self) -> None:
        if self._epoll is None:
            return
        # the loop's own readiness check already consumed the kernel's change mark, so the
        # set polls empty here: being called at all is the news
        self._epoll.poll(0)
        self._on_change()

    def close(self) -> None:
        if self._epoll is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
