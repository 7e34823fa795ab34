"""Small JSON records the hosts of a rack share under `<mount point>/.volagent/`.

Heartbeats (`hosts/`) and usage records (`usage/`) live on the shared filesystem so that every
host sees every other host's. The same safety as the directory walk applies: every component
is opened relative to its parent with O_NOFOLLOW, every descriptor must be on the shared
filesystem's device, and a record is replaced atomically (a temporary file, then a rename in
the same directory), so a reader never sees half a record and a planted symlink is replaced,
never followed. These functions block: call them through a TimedWorker.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from volagent import safedir
from volagent.codec import Record
from volagent.errors import RecordError

AGENT_DIR = ".volagent"
HOSTS_DIR = "hosts"
USAGE_DIR = "usage"
SUFFIX = ".json"
MAX_RECORD_BYTES = 64 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
R = TypeVar("R", bound=Record)
_serial = itertools.count()  # next() of it is atomic: one name for each temporary file


def file_name(name: str) -> str:
    """A record name that is one safe path component: other characters become `_`, no
    leading dot (dot files are temporary files), at most 200 bytes."""
    safe = _UNSAFE.sub("_", name).lstrip(".")[:200]
    return safe or "unnamed"


def open_dir(root_fd: int, parts: Sequence[str], create: bool) -> int | None:
    """The directory `parts` below `root_fd`, created (0755) where missing when `create`;
    None when it is missing and not created. Never leaves the device of `root_fd`."""
    dev = os.fstat(root_fd).st_dev
    fd = os.dup(root_fd)
    try:
        for name in parts:
            # opened first, made only where missing: on NFS a mkdir of an existing name costs
            # a fresh lookup before the server's EEXIST
            try:
                child = _open_or_make(fd, name, create)
            except FileNotFoundError:
                if create:
                    raise RecordError(f"{name} vanished while it was being opened") from None
                os.close(fd)
                return None
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise RecordError(f"{name} is not a directory (a symlink or a file)") from None
                raise RecordError(f"cannot open {name}: {exc.strerror}") from None
            os.close(fd)
            fd = child
            if os.fstat(fd).st_dev != dev:
                raise RecordError(f"{name} is on another filesystem")
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_each(
    parent_fd: int, names: Iterable[str], *, skip_unusable: bool = False
) -> Iterator[tuple[str, int]]:
    """(name, descriptor) of each directory `names` below `parent_fd` that is still there; the
    descriptor is closed when the next one is asked for. With `skip_unusable`, a name that is
    not a directory of this filesystem is passed over instead of raising RecordError."""
    for name in names:
        try:
            fd = open_dir(parent_fd, (name,), create=False)
        except RecordError:
            if not skip_unusable:
                raise
            continue
        if fd is None:
            continue
        with safedir.closing(fd):
            yield name, fd


def _open_or_make(parent_fd: int, name: str, create: bool) -> int:
    try:
        return safedir.open_below(parent_fd, name)
    except FileNotFoundError:
        if not create:
            raise
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o755, dir_fd=parent_fd)
    return safedir.open_below(parent_fd, name)


def open_own_dir(root_fd: int, parts: Sequence[str]) -> int:
    """`ensure_dir` for directories of volagent's own under `.volagent` (usage records): one
    lookup of the whole path where it exists (on NFS, one round trip instead of one for each
    component); where only the last is missing (a directory's first record), one lookup of
    its parent and the last made there; the walk that makes what is missing otherwise."""
    fd = open_own_existing(root_fd, parts)
    if fd is not None:
        return fd
    parent = open_own_existing(root_fd, parts[:-1]) if len(parts) > 1 else None
    if parent is None:
        return ensure_dir(root_fd, parts)
    with safedir.closing(parent):
        try:
            fd = _open_or_make(parent, parts[-1], True)
        except OSError as exc:
            raise RecordError(f"cannot make {'/'.join(parts)}: {exc.strerror}") from None
    if os.fstat(fd).st_dev != os.fstat(root_fd).st_dev:  # pragma: no cover - a mount made now
        os.close(fd)
        raise RecordError(f"{'/'.join(parts)} is on another filesystem")
    return fd


def open_own_existing(root_fd: int, parts: Sequence[str]) -> int | None:
    """`safedir.open_at_once` for volagent's own directories, None where a component is
    missing (or the kernel has no openat2: then `open_dir` walks them)."""
    try:
        fd = safedir.open_at_once(root_fd, parts)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise RecordError(f"{'/'.join(parts)} crosses into another filesystem") from None
        if exc.errno in (errno.ENOENT, errno.ENOSYS, errno.E2BIG):
            return None
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise RecordError(
                f"{'/'.join(parts)} is not a directory (a symlink or a file)"
            ) from None
        raise RecordError(f"cannot open {'/'.join(parts)}: {exc.strerror}") from None
    if os.fstat(fd).st_dev != os.fstat(root_fd).st_dev:  # pragma: no cover - RESOLVE_NO_XDEV
        os.close(fd)
        raise RecordError(f"{'/'.join(parts)} is on another filesystem")
    return fd


def ensure_dir(root_fd: int, parts: Sequence[str]) -> int:
    """The directory `parts` below `root_fd`, created (0755) where missing."""
    fd = open_dir(root_fd, parts, create=True)
    if fd is None:  # pragma: no cover - open_dir creates or raises
        raise RecordError(f"cannot create {'/'.join(parts)}")
    return fd


def write_record(dir_fd: int, name: str, record: dict[str, Any]) -> None:
    """Replaces `<name>.json` in `dir_fd` atomically with `record`."""
    replace_json(dir_fd, file_name(name) + SUFFIX, record)


def replace_json(dir_fd: int, final: str, record: dict[str, Any]) -> None:
    """Replaces the file `final` in `dir_fd` atomically with `record` as JSON."""
    tmp = _temporary_of(dir_fd, final, record)
    try:
        # rename replaces whatever has the final name, a symlink included, without following it
        os.rename(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def create_json(dir_fd: int, final: str, record: dict[str, Any]) -> bool:
    """Writes the file `final` in `dir_fd` with `record` as JSON only if it does not exist
    yet: False when it does."""
    try:
        fd = _create(dir_fd, final)
    except FileExistsError:
        return False
    _write_synced(fd, record)
    return True


def publish_json(dir_fd: int, final: str, record: dict[str, Any]) -> bool:
    """Makes the file `final` in `dir_fd` hold `record` as JSON only if it does not exist
    yet, never seen empty or half written (a temporary file, then a hard link to the final
    name, which fails as a whole when the name is taken): False when it was taken."""
    tmp = _temporary_of(dir_fd, final, record)
    try:
        os.link(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
    return True


def _temporary_of(dir_fd: int, final: str, record: dict[str, Any]) -> str:
    """The name of a temporary file in `dir_fd` beside `final`, holding `record` written and
    synced; removed again when the write fails."""
    # a name no other write of this process uses, so a thread given up on mid-write never
    # shares the file; made without O_EXCL, which on NFSv4.1 costs a SETATTR after the OPEN
    # (the server keeps the exclusive create's verifier in the file's times)
    tmp = f".{final}.{os.getpid()}.{next(_serial)}.tmp"
    fd = _open_temporary(dir_fd, tmp)
    try:
        _write_synced(fd, record)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    return tmp


def _open_temporary(dir_fd: int, name: str) -> int:
    """A temporary file of ours, empty; one of an earlier process of the same id, left
    behind, is taken over. Anything but a regular file under its name is refused."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(name, flags | os.O_DSYNC, 0o644, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RecordError(f"{name} is not a regular file")
    return fd


def _create(dir_fd: int, name: str) -> int:
    # O_DSYNC: the write reaches the server's disk as it is made (on NFS a stable WRITE),
    # so the fsync after it has nothing left to commit (no COMMIT round trip)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_DSYNC
    return os.open(name, flags, 0o644, dir_fd=dir_fd)


def _write_synced(fd: int, record: dict[str, Any]) -> None:
    """Writes `record` as JSON to `fd`, syncs and closes it."""
    with safedir.closing(fd):
        view = memoryview(json.dumps(record, sort_keys=True).encode())
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)  # a network filesystem answers now, not at some later write-back


def remove_record(dir_fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(file_name(name) + SUFFIX, dir_fd=dir_fd)


def read_record(dir_fd: int, file: str) -> dict[str, Any] | None:
    """One record by its file name; None when it is not a regular file of valid JSON."""
    # O_NONBLOCK: a FIFO planted under a record's name must not block the reader
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(file, flags, dir_fd=dir_fd)
    except OSError:
        return None
    with safedir.closing(fd):
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, MAX_RECORD_BYTES + 1)
    if len(data) > MAX_RECORD_BYTES:
        return None
    try:
        record = json.loads(data)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def read_one(dir_fd: int, file: str, kind: type[R]) -> R | None:
    """The record of `kind` in `file`; None when there is none this volagent reads."""
    with contextlib.suppress(RecordError):
        return kind.decode(read_record(dir_fd, file), file)
    return None


def read_all(dir_fd: int, kind: type[R]) -> Iterator[tuple[str, R]]:
    """Every record of `kind` in `dir_fd` this volagent reads, as `read_records`; others are
    skipped (one written by a newer host must not hide the rest)."""
    for name, raw in read_records(dir_fd):
        with contextlib.suppress(RecordError):
            yield name, kind.decode(raw, name + SUFFIX)


def read_records(dir_fd: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every valid record in `dir_fd`, as (name without .json, record). Temporary files,
    symlinks and anything else are skipped."""
    for file in safedir.list_names(dir_fd):
        if file.startswith(".") or not file.endswith(SUFFIX):
            continue
        record = read_record(dir_fd, file)
        if record is not None:
            yield file[: -len(SUFFIX)], record
