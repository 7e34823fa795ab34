"""The usage walk: bytes and inodes of one namespace `<mp>/<rack>-<app>`, per service
directory, measured a few filesystem operations at a time.

A walk of a big tree on EFS costs many requests (and burst credits), so it is:
- budgeted: a token bucket paces it to `[usage] ops_per_second`, counting one operation per
  entry examined (an lstat), per directory opened, and per 1024 names listed;
- bounded in memory: an explicit stack of open directories, each read lazily through
  scandir, at most MAX_DEPTH deep; no listing of the tree is ever held;
- resumable: the stack is a cursor, `[[name, entries done], ...]`, saved with the partial
  totals in the namespace's record under `<mp>/.volagent/sizes/`; a walk (on this host after
  a restart, or on the host the namespace moved to) carries on from there. An entry counts as
  done once it has been taken from its directory, so totals and cursor always agree; if a
  directory changed meanwhile, the figure is off until the next pass, never corrupt;
- safe: every directory is opened relative to its parent with O_NOFOLLOW, a symlink is
  counted as itself and never followed, and nothing off the shared filesystem's device is
  counted or entered.
Hard-linked files count their blocks divided by their link count, so a file linked twice in
one tree counts once without remembering inodes. Everything here blocks: run it in a worker
thread.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from volagent import safedir
from volagent.errors import RecordError
from volagent.rack import owners, records

SIZES_DIR = "sizes"
MAX_DEPTH = 64
NAMES_PER_OP = 1024
# the namespace's own entries (files next to the service directories, the directory itself)
LOOSE = "."

Totals = dict[str, list[int]]  # service -> [bytes, inodes]


class Budget:
    """A token bucket of filesystem operations: `spend(n)` sleeps until n more fit in
    `ops_per_second`, allowing a burst of BURST_S worth."""

    BURST_S = 0.1

    def __init__(
        self,
        ops_per_second: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_spend: Callable[[int], None] | None = None,
    ) -> None:
        self.rate = ops_per_second
        self.clock = clock
        self.sleep = sleep
        self.on_spend = on_spend  # told of every spend at once (a metric), from any thread
        self.spent = 0
        self._lock = threading.Lock()
        self._next = clock()

    def spend(self, n: int = 1) -> None:
        with self._lock:
            now = self.clock()
            self._next = max(self._next, now - self.BURST_S) + n / self.rate
            self.spent += n
            wait = self._next - now - self.BURST_S
        if self.on_spend is not None:
            self.on_spend(n)
        if wait > 0:
            self.sleep(wait)


@dataclass
class _Frame:
    """One open directory of the walk."""

    name: str
    fd: int
    entries: Iterator[os.DirEntry[str]]
    done: int = 0

    def close(self) -> None:
        close = getattr(self.entries, "close", None)
        if close is not None:
            close()
        os.close(self.fd)


@dataclass
class NamespaceWalk:
    """The walk of one namespace; `step()` advances it and says whether it finished."""

    root_fd: int
    namespace: str
    budget: Budget
    totals: Totals = field(default_factory=dict)
    cursor: list[list[Any]] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    cancelled: bool = False
    _frames: list[_Frame] = field(default_factory=list)
    _dev: int = 0
    _opened: bool = False

    # --- the cursor --------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """What a later walk resumes from (saved with the record)."""
        stack = [[f.name, f.done] for f in self._frames] if self._opened else self.cursor
        totals = {k: list(v) for k, v in self.totals.items()}
        return {"started": self.started, "stack": stack, "totals": totals}

    @classmethod
    def resume(
        cls, root_fd: int, namespace: str, budget: Budget, saved: dict[str, Any] | None
    ) -> NamespaceWalk:
        """A walk carrying on from `saved` (a snapshot), or from the start when it is unusable."""
        walk = cls(root_fd, namespace, budget)
        if saved and _valid_snapshot(saved, namespace):
            walk.cursor = [[str(n), int(d)] for n, d in saved["stack"]]
            walk.totals = {str(k): [int(v[0]), int(v[1])] for k, v in saved["totals"].items()}
            walk.started = float(saved["started"])
        return walk

    # --- walking ------------------------------------------------------------------------
    def step(self, max_ops: int, max_s: float = 3600.0) -> bool:
        """Walks until `max_ops` operations are spent or `max_s` seconds have passed, whichever
        comes first (a slow filesystem gets its cursor saved as often as a fast one); True
        when the namespace is done."""
        deadline = time.monotonic() + max_s
        if not self._opened:
            self._open()
        # counted after the (re)opening, so every step makes progress however small
        limit = self.budget.spent + max_ops
        while self._frames and self.budget.spent < limit:
            if self.cancelled:
                return False
            frame = self._frames[-1]
            try:
                entry = next(frame.entries, None)
            except OSError:
                entry = None  # the directory went away while it was read: done with it
            if entry is None:
                self._frames.pop().close()
                continue
            frame.done += 1
            if frame.done % NAMES_PER_OP == 0:
                self.budget.spend(1)
            self._visit(frame, entry)
            if frame.done % 64 == 0 and time.monotonic() > deadline:
                break
        return not self._frames

    def close(self) -> None:
        """Closes what the walk holds open (after it finished or was given up)."""
        self.cancelled = True
        while self._frames:
            self._frames.pop().close()

    def _open(self) -> None:
        self._opened = True
        self._dev = os.fstat(self.root_fd).st_dev
        stack = self.cursor or [[self.namespace, 0]]
        fresh = not self.cursor
        try:
            parent = self.root_fd
            for name, done in stack[:MAX_DEPTH]:
                frame = self._open_frame(parent, name)
                if frame is None:
                    raise RecordError(f"{name} is gone")
                self._frames.append(frame)
                for _ in range(done):
                    if next(frame.entries, None) is None:
                        break
                    frame.done += 1
                self.budget.spend(1 + done // NAMES_PER_OP)
                parent = frame.fd
        except (OSError, RecordError):
            # the tree changed under the cursor: this namespace starts over
            self.close()
            self.cancelled = False
            self.totals = {}
            self.started = time.time()
            fresh = True
            frame = self._open_frame(self.root_fd, self.namespace)
            if frame is not None:
                self._frames.append(frame)
        if fresh and self._frames:
            st = os.fstat(self._frames[0].fd)
            self._add(LOOSE, st)

    def _open_frame(self, parent_fd: int, name: str) -> _Frame | None:
        self.budget.spend(1)
        try:
            fd = safedir.open_on(parent_fd, name, self._dev)
        except (OSError, safedir.OtherDevice):
            return None  # gone, swapped for a symlink or a file, or another filesystem
        try:
            return _Frame(name, fd, os.scandir(fd))
        except OSError:
            os.close(fd)
            return None

    def _visit(self, frame: _Frame, entry: os.DirEntry[str]) -> None:
        self.budget.spend(1)
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            return  # removed meanwhile
        if st.st_dev != self._dev:
            return  # another filesystem mounted inside the namespace: not ours to count
        depth = len(self._frames)
        if depth == 1:
            service = entry.name if stat.S_ISDIR(st.st_mode) else LOOSE
        else:
            service = self._frames[1].name
        self._add(service, st)
        if stat.S_ISDIR(st.st_mode) and depth < MAX_DEPTH:
            child = self._open_frame(frame.fd, entry.name)
            if child is not None:
                self._frames.append(child)

    def _add(self, service: str, st: os.stat_result) -> None:
        used = st.st_blocks * 512
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            used //= st.st_nlink
        t = self.totals.setdefault(service, [0, 0])
        t[0] += used
        t[1] += 1


def _valid_snapshot(saved: dict[str, Any], namespace: str) -> bool:
    try:
        stack, totals = saved["stack"], saved["totals"]
        float(saved["started"])
        ok = (
            isinstance(stack, list)
            and all(isinstance(n, str) and isinstance(d, int) and d >= 0 for n, d in stack)
            and isinstance(totals, dict)
            and all(isinstance(v, list) and len(v) == 2 for v in totals.values())
        )
        return ok and bool(stack) and stack[0][0] == namespace
    except (KeyError, TypeError, ValueError):
        return False


# --- the records ------------------------------------------------------------------------
def namespaces(root_fd: int, prefix: str, budget: Budget) -> list[str]:
    """The namespace directories `<prefix>*` at the top of the mount point (another rack's
    among them when its name starts with this one's and a dash: `owned_elsewhere`)."""
    names = safedir.list_names(root_fd)
    budget.spend(1 + len(names) // NAMES_PER_OP)
    out = []
    for name in names:
        if name.startswith(".") or not name.startswith(prefix) or len(name) <= len(prefix):
            continue
        budget.spend(1)
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(os.stat(name, dir_fd=root_fd, follow_symlinks=False).st_mode):
                out.append(name)
    return sorted(out)


def owned_elsewhere(root_fd: int, found: list[str], rack: str, budget: Budget) -> set[str]:
    """Those of `found` whose owner record names another rack than `rack` (rack `r1`'s prefix
    `r1-` matches rack `r1-east`'s namespaces too: rack/owners.py)."""
    d = records.open_dir(root_fd, (records.AGENT_DIR, owners.OWNERS_DIR), create=False)
    if d is None:
        return set()
    with safedir.closing(d):
        recorded = set(safedir.list_names(d))
        budget.spend(1 + len(recorded) // NAMES_PER_OP)
        others = set()
        for ns in found:
            file = records.file_name(ns) + records.SUFFIX
            if file not in recorded:
                continue
            budget.spend(1)
            owner = records.read_one(d, file, owners.NamespaceOwner)
            if owner is not None and owner.rack != rack:
                others.add(ns)
    return others


def sizes_dir(root_fd: int) -> int | None:
    """The size records' directory, None when no host has made it yet."""
    return records.open_dir(root_fd, (records.AGENT_DIR, SIZES_DIR), create=False)


def read_sizes(root_fd: int) -> dict[str, dict[str, Any]]:
    """Every namespace's size record, by namespace."""
    d = sizes_dir(root_fd)
    if d is None:
        return {}
    with safedir.closing(d):
        return {name: rec for name, rec in records.read_records(d) if isinstance(rec, dict)}


def list_sizes(root_fd: int) -> list[str]:
    """The namespaces that have a size record."""
    d = sizes_dir(root_fd)
    if d is None:
        return []
    with safedir.closing(d):
        return [
            f[: -len(records.SUFFIX)]
            for f in safedir.list_names(d)
            if f.endswith(records.SUFFIX) and not f.startswith(".")
        ]


def read_sizes_of(root_fd: int, namespaces: list[str]) -> dict[str, dict[str, Any]]:
    """The size records of these namespaces (those gone or not valid left out)."""
    d = sizes_dir(root_fd)
    if d is None:
        return {}
    out = {}
    with safedir.closing(d):
        for ns in namespaces:
            rec = records.read_record(d, records.file_name(ns) + records.SUFFIX)
            if rec is not None:
                out[ns] = rec
    return out


def save(root_fd: int, namespace: str, record: dict[str, Any]) -> None:
    with safedir.closing(records.ensure_dir(root_fd, (records.AGENT_DIR, SIZES_DIR))) as d:
        records.write_record(d, namespace, record)


def forget(root_fd: int, gone: list[str]) -> None:
    """Removes the records of namespaces that no longer exist."""
    d = sizes_dir(root_fd)
    if d is None:
        return
    with safedir.closing(d):
        for ns in gone:
            records.remove_record(d, ns)


def record_of(
    previous: dict[str, Any] | None,
    walk: NamespaceWalk,
    host: str,
    finished: bool,
    rack: str = "",
) -> dict[str, Any]:
    """The namespace's record: the last finished measure, and the walk under way if any;
    `rack`, the measuring host's (since 0.3.3: rack `r1` tells rack `r1-east`'s records
    from its own, both named `r1-*`)."""
    now = time.time()
    rec = dict(previous or {})
    rec.update({"namespace": walk.namespace, "host": host})
    if rack:
        rec["rack"] = rack
    if finished:
        rec.update(
            time=now,
            totals={k: list(v) for k, v in walk.totals.items()},
            pass_s=round(now - walk.started, 3),
            walk=None,
        )
    else:
        rec["walk"] = {"host": host, "saved": now, **walk.snapshot()}
    return rec
