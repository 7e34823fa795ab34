"""The trash under `<mount point>/.volagent/trash/`: its entries, their records, and the
lookup the preparer asks before it creates anything: which entry holds a namespace.

`volagent gc --delete` moves an unused namespace `<mp>/<ns>` (or one directory of it,
`<mp>/<ns>/<dir>`) into the trash with one rename. An entry is named after what it holds
and when it was moved: `<ns>@<UTC time>`, or `<ns>+<dir, %-quoted>@<UTC time>` for one
directory (namespace names hold neither `+` nor `@`, quoted directory names neither).
Beside the moved directory lies `<entry>.json`, its record: what it was, who moved it, when
and why, and its state:

- `moving`: written (exclusively, which claims the name) before gc judges the candidate a
  last time and renames it; a directory of that name appears with the rename;
- `trashed`: the rename is done;
- `purging`: `gc --purge` is removing it for good; it can no longer be restored.

From the moment the record exists until the entry is restored or purged, the namespace
counts as trashed, so a create that comes after the rename can never make a fresh, empty
namespace in its place (see volumes/trashcheck.py). These functions block: call them through a
TimedWorker or a watched thread.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from volagent import codec, safedir
from volagent.errors import RecordError
from volagent.rack import records

TRASH_DIR = "trash"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_STAMP_RE = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")
_NS_RE = re.compile(r"^[^+@/]+$")
MOVING, TRASHED, PURGING = "moving", "trashed", "purging"
MAX_ENTRY_BYTES = 240  # room for `.json` and a temporary prefix within NAME_MAX


class TrashRecord(codec.Record):
    """An entry's record, `<entry>.json`: what was moved, who moved it, when and why."""

    KIND = "trash record"
    state: str = "unknown"  # MOVING, TRASHED or PURGING
    namespace: str = ""
    directory: str | None = None  # None: the whole namespace
    path: str = ""
    time: float | None = None  # of the move, epoch seconds
    moved_at: str = ""
    by: dict[str, Any] = field(default_factory=dict)  # gc's trashing.operator()
    reason: str = ""
    size: int | None = None
    last_used: float | None = None
    last_host: str = ""
    entry: str = ""
    purging_since: str | None = field(default=None, metadata=codec.OMIT_IF_NONE)


@dataclass(frozen=True)
class EntryName:
    """What an entry's name says: the namespace, the directory in it (None: all of it), and
    the time stamp of the move."""

    namespace: str
    directory: str | None
    stamp: str

    @property
    def label(self) -> str:
        """What the entry holds, as it appears in the name (without the time)."""
        if self.directory is None:
            return self.namespace
        return f"{self.namespace}+{urllib.parse.quote(self.directory, safe='')}"

    @property
    def name(self) -> str:
        return f"{self.label}@{self.stamp}"

    @property
    def relative(self) -> str:
        """The path below the mount point it was moved from."""
        return self.namespace if self.directory is None else f"{self.namespace}/{self.directory}"


def stamp_of(when: float, serial: int = 0) -> str:
    stamp = time.strftime(STAMP_FORMAT, time.gmtime(when))
    return f"{stamp}-{serial}" if serial else stamp


def parse(name: str) -> EntryName | None:
    """The entry a trash name (with or without `.json`) stands for; None for anything else."""
    if name.endswith(records.SUFFIX):
        name = name[: -len(records.SUFFIX)]
    label, at, stamp = name.rpartition("@")
    if not at or not _STAMP_RE.match(stamp) or name.startswith("."):
        return None
    ns, plus, quoted = label.partition("+")
    if not ns or not _NS_RE.match(ns):
        return None
    if not plus:
        return EntryName(ns, None, stamp)
    directory = urllib.parse.unquote(quoted)
    if not directory or "/" in directory or directory in (".", ".."):
        return None
    return EntryName(ns, directory, stamp)


def open_trash(root_fd: int, create: bool) -> int | None:
    """The trash directory below the mount point's descriptor (None: there is none)."""
    return records.open_dir(root_fd, (records.AGENT_DIR, TRASH_DIR), create=create)


@dataclass
class Entry:
    """One entry found in the trash: its name, its record (None when there is none or it
    is unreadable) and whether the moved directory is there."""

    entry: EntryName
    record: TrashRecord | None
    has_directory: bool

    @property
    def state(self) -> str:
        if self.record is None:
            return TRASHED if self.has_directory else "unknown"
        return self.record.state

    @property
    def moved_at(self) -> float | None:
        return self.record.time if self.record else None


def entries(trash_fd: int) -> Iterator[Entry]:
    """Every entry of the trash, by name."""
    names = safedir.list_names(trash_fd)
    found: dict[str, EntryName] = {}
    for n in names:
        parsed = parse(n)
        if parsed is not None:
            found.setdefault(parsed.name, parsed)
    present = set(names)
    for name, entry in sorted(found.items()):
        has_dir = False
        if name in present:
            with contextlib.suppress(OSError):
                st = os.stat(name, dir_fd=trash_fd, follow_symlinks=False)
                has_dir = stat.S_ISDIR(st.st_mode)
        record = None
        if name + records.SUFFIX in present:
            record = records.read_one(trash_fd, name + records.SUFFIX, TrashRecord)
        yield Entry(entry, record, has_dir)


def holding(trash_fd: int, namespace: str, directory: str | None = None) -> str | None:
    """The name of an entry that holds `namespace` (all of it), or `directory` of it; None
    when there is none. A record being written counts: the move may be under way."""
    # only names that start with the namespace are parsed: the trash may hold many
    prefixes = (namespace + "@", namespace + "+")
    for name in safedir.list_names(trash_fd):
        if not name.startswith(prefixes):
            continue
        entry = parse(name)
        if entry is None or entry.namespace != namespace:
            continue
        if entry.directory is None or (directory is not None and entry.directory == directory):
            return entry.name
    return None


def claim(trash_fd: int, entry: EntryName, record: TrashRecord) -> bool:
    """Writes the record of a new entry, only if no entry of that name exists: False when
    the name is taken."""
    if entry.name in safedir.list_names(trash_fd):
        return False
    return records.create_json(trash_fd, entry.name + records.SUFFIX, record.encode())


def write(trash_fd: int, entry: EntryName, record: TrashRecord) -> None:
    """Replaces an entry's record atomically (a temporary file, then a rename)."""
    records.replace_json(trash_fd, entry.name + records.SUFFIX, record.encode())


def forget(trash_fd: int, entry: EntryName) -> None:
    """Removes an entry's record (its directory must be gone or restored first)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(entry.name + records.SUFFIX, dir_fd=trash_fd)


def new_entry(namespace: str, directory: str | None, when: float, trash_fd: int) -> EntryName:
    """A fresh entry name for a move now; the caller claims it (and tries the next serial
    when the claim fails)."""
    taken = set(safedir.list_names(trash_fd))
    for serial in range(1000):
        entry = EntryName(namespace, directory, stamp_of(when, serial))
        if len(entry.name.encode()) > MAX_ENTRY_BYTES:
            raise RecordError(
                f"{entry.relative}: its name is too long for a trash entry; remove it by hand"
            )
        if entry.name not in taken and entry.name + records.SUFFIX not in taken:
            return entry
    raise RecordError(f"{namespace}: no free trash entry name for {stamp_of(when)}")
