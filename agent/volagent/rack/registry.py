"""The rack-wide registry of live binds: its format and its one blocking transaction.

One registry file per namespace (`<rack>-<app>`, the top-level directory a bind lies in):
rule 5 keeps every bind of an app inside its namespace, so binds can nest only within one.
`<mp>/.volagent/registry/<ns>.json` holds the entries (format below, `FORMAT` its version);
`<mp>/.volagent/registry/<ns>.lock` is the lock file, created once and never replaced, on
which every host takes an exclusive byte-range lock (`lockf`, an NFSv4 LOCK) around its
read-decide-write. The entries file is replaced atomically (a temporary file, fsync, a
rename) while the lock is held, so a reader never sees half of it and a host dying mid-write
leaves the previous version. Why this is correct on NFSv4.1 with the Linux client's caches:
docs/REGISTRY.md.

A transaction is bounded by a deadline the thread itself keeps: the lock is polled without
blocking (a host that died holding it keeps it until its lease expires), and nothing is
written once the deadline has passed, since the caller has stopped waiting by then. Blocking:
call it through a TimedWorker.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from volagent import codec, safedir
from volagent.errors import RecordError
from volagent.rack import records

REGISTRY_DIR = "registry"
KIND = "volagent.registry"
FORMAT = 1  # the version of the entries file's format; a newer one is refused, never guessed
LOCK_SUFFIX = ".lock"
# an app's binds in one file: about 250 bytes an entry, so some 16,000 binds; past it a claim
# is refused with a message, never cut silently
MAX_REGISTRY_BYTES = 4 << 20
LOCK_POLL_FIRST_S = 0.002
LOCK_POLL_MAX_S = 0.05
# lock files kept open between transactions, at most (those of the namespaces claimed lately)
KEPT_LOCK_FILES = 64


class RegistryError(RecordError):
    """The registry could not be consulted or updated: a create that could nest is refused."""


class Entry(codec.Record, frozen=True):
    """One live bind: which host's container (`ref`: its id, or `request:<digest>` for a
    create allowed and not answered yet) binds `path`, as of `time` (epoch seconds). The
    path is relative to the mount point (`<rack>-<app>/<service>/...`): hosts may mount
    the shared filesystem at different places."""

    KIND = "entry"
    host: str
    ref: str
    name: str
    path: str
    time: float

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.host, self.ref, self.path)


def file_of(namespace: str) -> str:
    return records.file_name(namespace) + records.SUFFIX


def document(namespace: str, entries: list[Entry]) -> dict[str, Any]:
    return {
        "kind": KIND,
        "format": FORMAT,
        "namespace": namespace,
        "entries": [e.encode() for e in sorted(entries, key=lambda e: e.key)],
    }


def parse(namespace: str, data: bytes) -> list[Entry]:
    """The entries of a registry file's bytes; RegistryError for anything but this format
    (or a newer minor one: fields of an entry unknown here are dropped)."""
    what = f"the registry of {namespace}"
    try:
        doc = json.loads(data)
    except ValueError:
        raise RegistryError(f"{what} is not JSON") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise RegistryError(f"{what} is not a volagent registry")
    try:
        codec.readable(doc, what, (FORMAT, 0))
        entries = [Entry.decode(raw, what) for raw in doc.get("entries") or ()]
    except RecordError as exc:
        raise RegistryError(str(exc)) from None
    for e in entries:
        parts = e.path.split("/")
        if not e.host or e.path.startswith("/") or {"", ".", ".."} & set(parts):
            raise RegistryError(f"{what}: a bad entry ({e.path!r} of {e.host!r})")
    return entries


# --- the transaction ---------------------------------------------------------------------
# fcntl locks belong to the process: two threads of this one would both get it. A lock per
# namespace in the process comes first; it is taken with the same deadline.
_local_locks: dict[str, threading.Lock] = {}
_local_locks_guard = threading.Lock()


def _local_lock(key: str) -> threading.Lock:
    with _local_locks_guard:
        return _local_locks.setdefault(key, threading.Lock())


@dataclass
class Counts:
    """File operations one transaction made on the shared filesystem (for the bench)."""

    opens: int = 0
    locks: int = 0
    reads: int = 0
    writes: int = 0


def read_entries(dir_fd: int, namespace: str, counts: Counts | None = None) -> list[Entry]:
    """The entries of the namespace's file in the registry's directory `dir_fd` (none when
    it is absent); RegistryError when it cannot be read or is not a registry. Unlocked, the
    caller may see any version a host wrote whole (they are renamed into place)."""
    counts = counts or Counts()
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(file_of(namespace), flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise RegistryError(f"cannot open the registry of {namespace}: {exc}") from None
    counts.opens += 1
    with safedir.closing(fd):
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RegistryError(f"the registry of {namespace} is not a regular file")
        chunks = []
        size = 0
        while True:
            chunk = os.read(fd, 1 << 20)
            counts.reads += 1
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_REGISTRY_BYTES:
                raise RegistryError(f"the registry of {namespace} is too large")
    return parse(namespace, b"".join(chunks))


class Transaction:
    """The registry file of one namespace, locked: `entries` as read, `write` to replace."""

    def __init__(self, dir_fd: int, namespace: str, deadline: float, counts: Counts) -> None:
        self.dir_fd = dir_fd
        self.namespace = namespace
        self.deadline = deadline
        self.counts = counts
        self.entries = self._read()

    def _read(self) -> list[Entry]:
        return read_entries(self.dir_fd, self.namespace, self.counts)

    def write(self, entries: list[Entry]) -> None:
        """Replaces the entries file (atomically); refused once the deadline has passed."""
        doc = document(self.namespace, entries)
        if len(json.dumps(doc)) > MAX_REGISTRY_BYTES:
            raise RegistryError(
                f"the registry of {self.namespace} would exceed {MAX_REGISTRY_BYTES >> 20} MiB "
                f"({len(entries)} binds): remove containers of this app first"
            )
        if time.monotonic() > self.deadline:
            raise RegistryError("the registry update came too late: the caller gave up")
        records.replace_json(self.dir_fd, file_of(self.namespace), doc)
        self.counts.opens += 1
        self.counts.writes += 1
        self.entries = entries


@contextlib.contextmanager
def locked(
    mount_point: str,
    dev: int | None,
    namespace: str,
    deadline: float,
    *,
    counts: Counts | None = None,
    epoch: int | None = None,
    taken: Callable[[], None] | None = None,
) -> Iterator[Transaction]:
    """The namespace's registry, read under its exclusive lock, until the block ends. Given
    the mount's `epoch` (which mount of the filesystem it is), the registry's directory and
    the namespace's lock file stay open for the next transaction (`_KeptHandles`). `taken`
    is called once the lock is taken, before the registry is read."""
    taken = taken or (lambda: None)
    counts = counts or Counts()
    key = f"{mount_point}\0{namespace}"
    local = _local_lock(key)
    if not local.acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise RegistryError(f"the registry of {namespace} is busy in this process")
    try:
        if epoch is None:
            with (
                safedir.closing(_open_registry_dir(mount_point, dev)[0]) as reg,
                # its close drops the lock (LOCKU); the writes were synced before
                safedir.closing(_open_lock_file(reg, namespace, counts)) as lock_fd,
            ):
                _lock(lock_fd, namespace, deadline, counts)
                taken()
                yield Transaction(reg, namespace, deadline, counts)
        else:
            reg, lock_fd = _kept.locked(mount_point, (dev, epoch), key, namespace, deadline, counts)
            with safedir.closing(reg):
                try:
                    taken()
                    yield Transaction(reg, namespace, deadline, counts)
                    fcntl.lockf(lock_fd, fcntl.LOCK_UN)
                except BaseException:
                    _kept.forget(key)  # opened afresh next time; its close drops the lock
                    raise
    finally:
        local.release()


def open_dir_at(root_fd: int) -> int | None:
    """The registry's directory below the mount point's descriptor, made by nothing (None:
    there is none, so no namespace has entries)."""
    return records.open_dir(root_fd, (records.AGENT_DIR, REGISTRY_DIR), create=False)


def read_locked(reg: int, mount_point: str, namespace: str, deadline: float) -> list[Entry]:
    """The namespace's entries in the registry's directory `reg`, read under its lock and
    creating nothing (gc's reads): none when its lock file does not exist (a writer makes it
    before the entries). Every reader holds the entries file open only under the lock, so
    no file replaced by a writer's rename is held open anywhere (docs/REGISTRY.md says why
    that matters)."""
    local = _local_lock(f"{mount_point}\0{namespace}")
    if not local.acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise RegistryError(f"the registry of {namespace} is busy in this process")
    try:
        try:
            fd = _open_lock_file(reg, namespace, Counts(), create=False)
        except FileNotFoundError:
            if _exists(reg, file_of(namespace)):
                raise RegistryError(
                    f"the registry of {namespace} has entries but no lock file"
                ) from None
            return []
        with safedir.closing(fd):  # its close drops the lock
            _lock(fd, namespace, deadline, Counts())
            return read_entries(reg, namespace)
    finally:
        local.release()


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _open_registry_dir(mount_point: str, dev: int | None) -> tuple[int, tuple[int, int]]:
    """The registry's directory, and its device and inode."""
    with safedir.closing(safedir.open_shared_root(mount_point, dev)) as root:
        # volagent's own directory, made once per rack: one lookup of the whole path
        fd = records.open_own_dir(root, (records.AGENT_DIR, REGISTRY_DIR))
    st = os.fstat(fd)
    return fd, (st.st_dev, st.st_ino)


class _KeptHandles:
    """The registry directory of each mount point and the lock files of the namespaces
    claimed lately, kept open between transactions: reopening them cost each transaction
    lookups, an OPEN and a CLOSE on NFS. A lock is then dropped by an unlock (LOCKU).

    The directory is kept per mount (device and epoch: a remount opens it afresh, through
    the mount point's health check) and handed out as a duplicate, so no descriptor is
    closed under another thread. A lock file is used only by the thread holding its
    namespace's lock in this process, and only while the registry directory opened by path
    is the one it was opened in (device and inode: the same directory after a remount of
    the same filesystem, not another tree of it) and that directory is still the one of its
    path. Closing any descriptor of a file drops every lock the process holds on it: a lock
    file of another directory on the same device is closed before the namespace's lock is
    taken again, never by another thread meanwhile (one of another device: `_close`)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        # mount point -> (device and epoch, the directory's device and inode, descriptor)
        self._dirs: dict[str, tuple[tuple[int | None, int], tuple[int, int], int]] = {}
        # (mount point, namespace) -> (its directory's device and inode, descriptor), the
        # least lately used first
        self._locks: OrderedDict[str, tuple[tuple[int, int], int]] = OrderedDict()

    def locked(  # noqa: PLR0917 - the caller's own arguments, passed on
        self,
        mount_point: str,
        mount: tuple[int | None, int],
        key: str,
        namespace: str,
        deadline: float,
        counts: Counts,
    ) -> tuple[int, int]:
        """A duplicate of the registry directory and the namespace's lock file, locked (the
        caller holds the namespace's lock in this process). A kept lock file removed or renamed
        by hand (hosts never do either) guards nothing any more: it is opened again by name."""
        for _ in range(2):
            reg, fd, kept = self._handles(mount_point, mount, key, namespace, counts)
            try:
                _lock(fd, namespace, deadline, counts)
                # the lock revalidates the file's attributes (the NFS client's cache point)
                st = os.fstat(fd)
                removed = not st.st_nlink or (kept and not _named(reg, namespace, st))
            except BaseException:
                os.close(reg)
                self.forget(key)
                raise
            if not removed:
                return reg, fd
            os.close(reg)
            self.forget(key, mount_point)
        raise RegistryError(f"the lock file of the registry of {namespace} is removed as taken")

    def _handles(
        self, mount_point: str, mount: tuple[int | None, int], key: str, ns: str, counts: Counts
    ) -> tuple[int, int, bool]:
        with self._guard:
            kept = self._dirs.get(mount_point)
            if kept is not None and kept[0] == mount and mount[0] is not None:
                reg, ident = os.dup(kept[2]), kept[1]
            else:
                kept = None
        if kept is not None and _at_path(mount_point) != ident:
            os.close(reg)  # set aside or removed by hand, or another tree mounted over it
            kept = None
        if kept is None:
            reg, ident = _open_registry_dir(mount_point, mount[0])
            with self._guard:
                old = self._dirs.get(mount_point)
                self._dirs[mount_point] = (mount, ident, os.dup(reg))
            if old is not None:
                os.close(old[2])  # a directory: its close asks the server nothing
        with self._guard:
            lock = self._locks.pop(key, None)
        try:
            fresh = lock is None or lock[0] != ident
            if lock is not None and fresh:
                _close(lock[1], lock[0][0] == ident[0])
            if lock is None or fresh:
                lock = (ident, _open_lock_file(reg, ns, counts))
        except BaseException:
            os.close(reg)
            raise
        with self._guard:
            self._locks[key] = lock
            past = list(self._locks)[: max(len(self._locks) - KEPT_LOCK_FILES, 0)]
        for other in past:  # closed unless a thread is in that namespace now
            if _local_lock(other).acquire(blocking=False):
                try:
                    with self._guard:
                        gone = self._locks.pop(other, None)
                    if gone is not None:
                        _close(gone[1], gone[0][0] == ident[0])
                finally:
                    _local_lock(other).release()
        return reg, lock[1], not fresh

    def forget(self, key: str, mount_point: str | None = None) -> None:
        """Closes the namespace's lock file (the caller holds its lock in this process); the
        registry directory of `mount_point` too, which is opened again through its path."""
        with self._guard:
            lock = self._locks.pop(key, None)
            kept = self._dirs.pop(mount_point, None) if mount_point else None
        if kept is not None:
            os.close(kept[2])
        if lock is not None:
            os.close(lock[1])


def _at_path(mount_point: str) -> tuple[int, int] | None:
    """The device and inode of the registry's directory by its path: a kept one is another
    once renamed or removed by hand (hosts open the one of that name)."""
    path = os.path.join(mount_point, records.AGENT_DIR, REGISTRY_DIR)
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _named(dir_fd: int, namespace: str, mine: os.stat_result) -> bool:
    """Whether the namespace's lock file by its name is the file `mine` is of."""
    name = records.file_name(namespace) + LOCK_SUFFIX
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _close(fd: int, same_device: bool) -> None:
    """Closes a kept lock file: one of another device than the caller's mount (a mount gone,
    perhaps hung: while a descriptor holds a device, no other mount gets its number) by a
    thread of its own, since that close may block; one that fails is gone all the same."""
    if same_device:
        os.close(fd)
    else:
        threading.Thread(
            target=_close_quietly, args=(fd,), name="registry-close", daemon=True
        ).start()


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


_kept = _KeptHandles()


def _open_lock_file(dir_fd: int, namespace: str, counts: Counts, *, create: bool = True) -> int:
    """The namespace's lock file, opened for locking; made where missing, unless not
    `create` (then FileNotFoundError)."""
    counts.opens += 1
    name = records.file_name(namespace) + LOCK_SUFFIX
    # O_CREAT without O_EXCL: hosts racing to make it all open the one file the server made
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(name, flags, 0o644, dir_fd=dir_fd)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not create:
            raise
        raise RegistryError(f"cannot open the lock of the registry of {namespace}: {exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RegistryError(f"the lock of the registry of {namespace} is not a regular file")
    return fd


def _lock(fd: int, namespace: str, deadline: float, counts: Counts) -> None:
    """Takes the exclusive lock, polling until the deadline: a blocking lock left behind by
    a caller that gave up would take the lock later and hold it for nobody."""
    pause = LOCK_POLL_FIRST_S
    while True:
        counts.locks += 1
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise RegistryError(f"cannot lock the registry of {namespace}: {exc}") from None
        left = deadline - time.monotonic()
        if left <= 0:
            raise RegistryError(
                f"the registry of {namespace} stayed locked by another host: a host that "
                "died holding it keeps it until its NFS lease expires"
            )
        time.sleep(min(pause, left))
        pause = min(pause * 2, LOCK_POLL_MAX_S)


def merged(entries: list[Entry], add: list[Entry], drop: Callable[[Entry], bool]) -> list[Entry]:
    """`entries` without those `drop` says go, with those of `add` not there yet (by host,
    ref and path: an entry already there stays as it is, so a claim repeated at a start
    writes nothing)."""
    out = {e.key: e for e in entries if not drop(e)}
    for e in add:
        out.setdefault(e.key, e)
    return list(out.values())


def changed(before: list[Entry], after: list[Entry]) -> bool:
    return {e.key for e in before} != {e.key for e in after}
