"""After a container starts: are its binds on the shared filesystem still the directories
volagent prepared, as the host resolves them now?

Docker starts containers by restart policy and after its own restart without asking the
start guard, and follows symlinks in a bind source at every start. A container whose
entrypoint does its work and exits at once leaves no process whose mounts could be read
(volumes/mount_check.py needs one). So at every start, whether or not a process is left,
each prepared bind source is walked again from the mount point with the safe walk (no
symlink followed, every directory on the shared filesystem's device), and the leaf's inode
is held against the one recorded when volagent prepared it.

Binds spelled outside the mount point are resolved on the host again (symlinks, then the
mount table: volumes/locate.py): one that was judged to lead elsewhere may lead onto the
shared filesystem now, through a host symlink that a container binding its directory
repointed, and Docker followed it at this start.

What a walk after the start can see is the path as it is now: a symlink or another
directory swapped in and still there. A swap undone before the walk is left to the
mountinfo check, which needs the process.

Blocking: runs in the timed worker.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from volagent import safedir
from volagent.volumes import locate
from volagent.volumes.mount_check import Mismatch


@dataclass(frozen=True)
class PreparedBind:
    """One bind volagent prepared: its host path under the mount point, where it is in the
    container, and (device, inode) of the directory it prepared there."""

    host: str
    container: str
    leaf: tuple[int, int]


def check_binds(
    mount_point: str, expected_dev: int, binds: Sequence[PreparedBind]
) -> list[Mismatch]:
    """The binds whose path no longer leads, without a symlink and on the shared
    filesystem, to the directory prepared for it. Raises MountUnhealthy when the mount
    point is not the shared filesystem (nothing to compare with then)."""
    with safedir.closing(safedir.open_mount_point(mount_point, expected_dev)) as root:
        out = []
        for bind in binds:
            reason = _changed(root, mount_point, bind, expected_dev)
            if reason is not None:
                out.append(Mismatch(bind.host, bind.container, reason))
        return out


def _changed(root: int, mount_point: str, bind: PreparedBind, dev: int) -> str | None:
    rel = bind.host[len(mount_point.rstrip("/")) :].strip("/")
    parts = rel.split("/") if rel else []
    if not parts:
        return None
    shown = mount_point.rstrip("/")
    parent = os.dup(root)
    try:
        for name in parts:
            shown = f"{shown}/{name}"
            try:
                child = safedir.open_on(parent, name, dev)
            except FileNotFoundError:
                # gone since: nothing here to have been mounted instead (Docker makes a
                # missing bind source itself, and then this walk finds a new directory)
                return None
            except safedir.OtherDevice:
                return f"{shown} is on another filesystem now, not the directory volagent prepared"
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    kind = safedir.kind_of(parent, name)
                    return (
                        f"{shown} is a {kind} now, not the directory volagent prepared: Docker "
                        "followed it at the start"
                    )
                raise
            os.close(parent)
            parent = child
        st = os.fstat(parent)
    finally:
        os.close(parent)
    prepared_dev, prepared_ino = bind.leaf
    if prepared_dev == st.st_dev and prepared_ino != st.st_ino:
        # (the device of a mount changes when it is mounted again: inodes are compared only
        # within one mount of the filesystem)
        return (
            f"{bind.host} is another directory now (inode {st.st_ino}) than the one volagent "
            f"prepared (inode {prepared_ino})"
        )
    return None


def check_outside(
    mount_point: str, binds: Sequence[tuple[str, str]], prepared: Collection[str]
) -> list[Mismatch]:
    """The binds spelled outside the mount point ((host as written, container path) pairs)
    that the host resolves onto the shared filesystem now, at a directory volagent did not
    prepare for this container (`prepared`: their paths under the mount point), or that
    carry the shared filesystem along."""
    if not binds:
        return []
    landings = locate.locate_all(mount_point, [host for host, _ in binds])
    out = []
    for (host, ctr), landing in zip(binds, landings, strict=True):
        if landing.kind == locate.OUTSIDE or landing.path in prepared:
            continue
        if landing.kind == locate.INSIDE:
            reason = (
                f"{host} leads to {landing.path} of the shared filesystem now, which volagent "
                "did not prepare for this container: Docker followed it at the start"
            )
            out.append(Mismatch(landing.path, ctr, reason))
        else:
            reason = f"{host} contains {landing.path} now: Docker followed it at the start"
            out.append(Mismatch(host, ctr, reason))
    return out
