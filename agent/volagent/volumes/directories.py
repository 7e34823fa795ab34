"""Safe directory creation under the mount point, in as few filesystem round trips as the
rules allow.

The walk opens every component relative to its parent's descriptor with O_NOFOLLOW and
O_DIRECTORY, so a symlink anywhere on the path, planted before or during the walk, stops it
(rule 4). Every descriptor is checked to be on the shared filesystem's device, so nothing is
ever created on the local disk underneath a vanished mount (rule 3). Existing directories are
opened, never chowned or chmodded (rule 2).

On NFS each of these is a network round trip, so the walk asks only what it needs:
- an existing component is opened first, and `mkdir` is tried only where the open found
  nothing (a `mkdir` of an existing name makes the kernel's client look the name up afresh
  before the server answers EEXIST);
- one `fstat` per component; it answers the device, the time for gc and, at the leaf, the
  owner and mode reported;
- a created directory is made with its final mode, and chowned or chmodded only where the
  result differs from what was asked (a parent made by root as 0755 needs neither);
- each component is opened by a fresh `open` (the client revalidates the directory it opens:
  close-to-open), so every name is looked up in a parent whose attributes were just fetched
  from the server: a swap made from another host is seen, not answered from a cache.

`Prepared.identity` records (device, inode) of every component; `verify_below` walks the
path again and compares, which is what a start needs when the create walk judged the same
path (see volumes/trashcheck.py). These functions block: call them through a TimedWorker.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from volagent import safedir
from volagent.errors import MountUnhealthy, NamespaceViolation, VolagentError
from volagent.values import Owner

PARENT_MODE = 0o755
# errors of a filesystem that is gone or broken underneath, not of the path
_UNHEALTHY = (errno.ENOTCONN, errno.ESTALE, errno.EIO)

Identity = tuple[tuple[int, int], ...]  # (st_dev, st_ino) of each component, top first


class PrepareFailed(VolagentError):
    """Creating a directory failed for a reason other than the rules (EACCES, ENOSPC, ...)."""


@dataclass(frozen=True)
class Prepared:
    """The outcome of one preparation: how many directories were created, the leaf as it is
    now, and what each component of the path was (for the walk at the next start)."""

    created: int
    leaf_created: bool
    uid: int
    gid: int
    mode: int
    identity: Identity = ()

    @property
    def leaf(self) -> tuple[int, int]:
        """The leaf's (st_dev, st_ino), for the check after a start (volumes/start_check.py);
        (0, 0) when nothing was walked."""
        return self.identity[-1] if self.identity else (0, 0)


def _open_child(parent_fd: int, name: str, shown: str, *, look: bool = False) -> int | None:
    """The directory `name` in `parent_fd` (only looked at: `safedir.look_below`); None when
    there is none."""
    try:
        return (safedir.look_below if look else safedir.open_below)(parent_fd, name)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if look and exc.errno == errno.ESTALE:
            return None  # a directory cached here, removed on the server: judged afresh
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            kind = safedir.kind_of(parent_fd, name)
            raise NamespaceViolation(
                4,
                f"{shown} is a {kind}, not a directory; volagent "
                "never follows links under the mount point",
            ) from None
        if exc.errno in _UNHEALTHY:
            raise MountUnhealthy(f"cannot open {shown}: {exc.strerror}") from None
        raise PrepareFailed(f"cannot open {shown}: {exc.strerror}") from None


def _checked_stat(fd: int, dev: int, shown: str) -> os.stat_result:
    st = os.fstat(fd)
    if st.st_dev != dev:
        # not the shared filesystem: whatever were made there would not be shared
        raise NamespaceViolation(
            3, f"{shown} is on another filesystem (a mount inside the namespace)"
        )
    return st


def _check_names(parts: Sequence[str]) -> None:
    if not parts:
        raise NamespaceViolation(5, "nothing to create below the mount point")
    for name in parts:
        if name in ("", ".", "..") or "/" in name:
            raise NamespaceViolation(5, f"bad path component {name!r}")


def _shown(mount_point: str, parts: Sequence[str]) -> list[str]:
    """The mount point and each component's path, as messages name them."""
    shown = [mount_point.rstrip("/")]
    for name in parts:
        shown.append(f"{shown[-1]}/{name}")
    return shown


@dataclass
class Existing:
    """The existing part of a path, opened (each component's descriptor and stat, from the
    top, up to the first missing one): the caller's to close, or to hand to `prepare_below`."""

    root_id: tuple[int, int]  # the mount point's device (the shared filesystem's) and inode
    fds: list[int]
    stats: list[os.stat_result]

    @property
    def dev(self) -> int:
        return self.root_id[0]

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def open_existing(root_fd: int, mount_point: str, parts: Sequence[str]) -> Existing:
    """Opens what exists of `mount_point/parts...` from a descriptor of the mount point,
    judging each component as `prepare_below` does (a symlink or a mount on the way is a
    violation); creates nothing."""
    _check_names(parts)
    top = os.fstat(root_fd)
    dev = top.st_dev
    shown = _shown(mount_point, parts)
    found = Existing((dev, top.st_ino), [], [])
    try:
        parent = root_fd
        for k, name in enumerate(parts):
            child = _open_child(parent, name, shown[k + 1])
            if child is None:
                break
            found.fds.append(child)
            found.stats.append(_checked_stat(child, dev, shown[k + 1]))
            parent = child
    except BaseException:
        found.close()
        raise
    return found


def prepare_below(
    root_fd: int,
    mount_point: str,
    parts: Sequence[str],
    owner: Owner,
    mode: int,
    *,
    held: int = 0,
    before_create: Callable[[list[tuple[int, os.stat_result]]], None] | None = None,
    existing: Existing | None = None,
) -> Prepared:
    """Creates every missing directory of `mount_point/parts...`, from a descriptor of the
    mount point (`mount_point` only names it). The leaf, if created, gets owner and mode;
    parents created on the way get root:root 0755.

    The existing part of the path is opened first (or taken as `existing` opened it from
    the same descriptor, its descriptors then closed here); then `before_create` is called
    (always, whether anything is missing or not) with the descriptors and stats of those of
    the first `held` components that exist, and only then is the missing rest created."""
    _check_names(parts)
    shown = _shown(mount_point, parts)
    if existing is None:
        existing = open_existing(root_fd, mount_point, parts)
    # every component's descriptor, closed at the end (a path is short)
    dev, fds, stats = existing.dev, existing.fds, existing.stats
    try:
        parent = fds[-1] if fds else root_fd
        if before_create is not None:
            before_create(list(zip(fds[:held], stats[:held], strict=True)))
        created = 0
        leaf_created = False
        found = (0, 0, 0)
        for k in range(len(fds), len(parts)):
            is_leaf = k == len(parts) - 1
            wanted = (owner.uid, owner.gid, mode) if is_leaf else (0, 0, PARENT_MODE)
            made = _make(parent, parts[k], wanted[2], shown[k + 1])
            child = _open_child(parent, parts[k], shown[k + 1])
            if child is None:
                raise PrepareFailed(f"{shown[k + 1]} vanished while it was being created")
            fds.append(child)
            st = _checked_stat(child, dev, shown[k + 1])
            stats.append(st)
            parent = child
            if made:
                created += 1
                leaf_created = is_leaf
                found = _settle(child, st, *wanted)
        leaf = stats[-1]
        if not leaf_created:
            found = (leaf.st_uid, leaf.st_gid, stat.S_IMODE(leaf.st_mode))
        identity = tuple((s.st_dev, s.st_ino) for s in stats)
        return Prepared(created, leaf_created, *found, identity=identity)
    finally:
        existing.close()  # `fds` among them: none closed twice


def _make(parent_fd: int, name: str, bits: int, shown: str) -> bool:
    """mkdir with the final mode (the umask may take bits away: `_settle` puts them back);
    False when the name exists already (made by another host or Docker meanwhile)."""
    try:
        os.mkdir(name, bits, dir_fd=parent_fd)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno in _UNHEALTHY:
            raise MountUnhealthy(f"cannot create {shown}: {exc.strerror}") from None
        raise PrepareFailed(f"cannot create {shown}: {exc.strerror}") from None
    return True


def _settle(fd: int, st: os.stat_result, uid: int, gid: int, bits: int) -> tuple[int, int, int]:
    """Gives a directory volagent has just made its owner and mode, each only where it is
    not so already (root made it, so a root-owned parent needs no chown)."""
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.fchown(fd, uid, gid)
    # a chown of a directory keeps its mode bits; a setgid parent's bit, inherited, goes
    if stat.S_IMODE(st.st_mode) != bits:
        os.fchmod(fd, bits)
    return uid, gid, bits


def verify_below(
    root_fd: int, mount_point: str, parts: Sequence[str], identity: Identity, *, look: bool = False
) -> Prepared | None:
    """The path walked again, opening only: the leaf as `Prepared` when every component is
    still the directory `identity` recorded (same device and inode), None when any differs
    or is missing (then judge it from scratch). A symlink or a mount met on the way is
    refused as in `prepare_below`. `look`: each component looked at (O_PATH) instead of
    opened, so the kernel's NFS client answers from its caches (trashcheck.py says what
    that relies on)."""
    _check_names(parts)
    if len(identity) != len(parts):
        return None
    dev = os.fstat(root_fd).st_dev
    shown = mount_point.rstrip("/")
    fds: list[int] = []
    try:
        parent = root_fd
        leaf: Prepared | None = None
        for name, known in zip(parts, identity, strict=True):
            shown = f"{shown}/{name}"
            child = _open_child(parent, name, shown, look=look)
            if child is None:
                return None
            fds.append(child)
            try:
                st = _checked_stat(child, dev, shown)
            except OSError as exc:
                if look and exc.errno == errno.ESTALE:
                    return None  # removed on the server since it was cached: judged afresh
                raise
            if (st.st_dev, st.st_ino) != known:
                return None
            parent = child
            leaf = Prepared(0, False, st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), identity)
        return leaf
    finally:
        for fd in fds:
            os.close(fd)
