"""Before the preparer creates anything: mark the namespace as used now, and refuse a
namespace that is in the trash.

The order is what makes gc safe (see ops/gc/trashing.py). gc writes the entry's record first, then
judges the candidate a last time (its mtime among the rest), then renames it. The preparer
touches the mtime of the namespace and of the bind's directory in it first, then looks for a
trash entry. So either the preparer looks after the record exists, and refuses; or it
touched before the record existed, hence before gc's last judgement, and gc keeps the
directory. Without this, a create that comes after the rename would make a fresh, empty
namespace, and its container would start on it with its data in the trash.

Blocking: runs in the timed worker, in place of `directories.prepare_path`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

from volagent import safedir
from volagent.errors import NamespaceTrashed
from volagent.rack import records, trash
from volagent.values import Owner
from volagent.volumes import directories


def restore_command(entry: str) -> str:
    return f"volagent gc --restore {entry}"


def touch_in_use(root_fd: int, parts: Sequence[str]) -> None:
    """Sets the mtime of `<ns>` and `<ns>/<dir>` (those that exist) to now: a directory
    changed within gc's window is never a candidate. Never follows a symlink; a missing or
    odd component is left to the walk that creates, which reports it."""
    with contextlib.suppress(OSError, safedir.OtherDevice):
        for fd in safedir.descend(root_fd, parts[:2]):
            os.utime(fd)


def refuse_if_trashed(mount_point: str, root_fd: int, parts: Sequence[str]) -> None:
    """Raises NamespaceTrashed when the bind's namespace, or its directory, is in the trash."""
    if not parts:
        return
    trash_fd = trash.open_trash(root_fd, create=False)
    if trash_fd is None:
        return
    try:
        entry = trash.holding(trash_fd, parts[0], parts[1] if len(parts) > 1 else None)
        if entry is None:
            return
        record = records.read_record(trash_fd, entry + records.SUFFIX) or {}
    finally:
        os.close(trash_fd)
    held = trash.parse(entry)
    shown = f"{mount_point.rstrip('/')}/{held.relative if held else parts[0]}"
    if record.get("state") == trash.PURGING:
        raise NamespaceTrashed(
            entry,
            f"{shown} is being purged from the trash ({entry}) by `volagent gc --purge`: its "
            "data is going for good; create containers that use it once the purge has "
            "finished (`volagent gc` lists the trash)",
        )
    raise NamespaceTrashed(
        entry,
        f"{shown} is in the trash as {entry} (moved there by `volagent gc --delete` as "
        f"unused); restore it with `{restore_command(entry)}` before creating containers "
        "that use it",
    )


def prepare_path(
    mount_point: str, parts: Sequence[str], owner: Owner, mode: int, expected_dev: int | None
) -> directories.Prepared:
    """directories.prepare_path, once the namespace is marked used and known not to be in
    the trash; the mount point is opened once for all three."""
    root = safedir.open_mount_point(mount_point, expected_dev)
    try:
        with contextlib.suppress(OSError):
            touch_in_use(root, parts)
        refuse_if_trashed(mount_point, root, parts)
        return directories.prepare_below(root, mount_point, parts, owner, mode)
    finally:
        os.close(root)
