"""`volagent gc [--older-than DAYS] [--delete]`: namespace directories no container has used.

The candidates are `<mp>/<rack>-<app>` directories and the service directories in them. A
directory's last use is the newest of its usage records from every host (see usage.py) and
its own mtime (a directory made or changed lately is not orphaned, recorded or not); a
directory a container of this host uses now, by the local daemon's word, is always kept. A
namespace whose every directory is unused is listed whole; otherwise its unused service
directories are listed one by one. Nothing is removed without `--delete`, and then each
candidate is judged again just before it goes.

gc only runs on the healthy shared filesystem: the mount point must be a mount, the local
daemon (when it answers) must call it mounted or local, and the walk goes through
descriptors that never follow a symlink nor leave the filesystem (fstree.py). A walk that
stops making progress is a hung mount: gc gives up instead of hanging with it.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO, TypeVar

from volagent import client, fstree, records
from volagent.config import Config
from volagent.errors import FilesystemHung, MountUnhealthy, VolagentError
from volagent.gcsurvey import Candidate, Survey, prune_old_records, still_unused, survey
from volagent.mount.table import find_mount
from volagent.state import now_iso
from volagent.usage import Key, key_of

DEFAULT_DAYS = 30.0
STALL_S = 30.0
DAEMON_TIMEOUT_S = 3.0
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

T = TypeVar("T")


class GcRefused(VolagentError):
    """gc will not run: the mount point is not (known to be) the healthy shared filesystem."""


def guarded(fn: Callable[[fstree.Progress], T], what: str, stall_s: float = STALL_S) -> T:
    """Runs fn in a daemon thread; gives up when it makes no progress for `stall_s`."""
    progress = fstree.Progress()
    results: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(fn(progress))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"gc-{what}", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
        if thread.is_alive() and progress.idle_for() > stall_s:
            raise FilesystemHung(
                f"{what} made no progress for {stall_s:g} s: the filesystem is not answering"
            )
    if errors:
        raise errors[0]
    return results[0]


def local_use(cfg: Config) -> tuple[set[Key], str | None]:
    """What this host's daemon says its containers use, and its mount state (None: the daemon
    did not answer). Refuses when it answers that the mount is not healthy."""
    sock = os.environ.get("VOLAGENT_SOCKET") or cfg.api.socket
    try:
        _, doc = client.get_json(sock, "/v1/status", timeout=DAEMON_TIMEOUT_S)
    except client.Unreachable:
        return set(), None
    mount = doc.get("mount") or {}
    state = str(mount.get("state") or "unknown")
    if state not in ("mounted", "local"):
        raise GcRefused(
            f"the mount at {cfg.mount_point} is {state} (volagent status): gc runs only on the "
            "healthy shared filesystem, never on what lies underneath"
        )
    keys: set[Key] = set()
    for c in doc.get("containers") or ():
        for v in c.get("volumes") or ():
            key = key_of(cfg.mount_point, str(v.get("host") or ""))
            if key is not None:
                keys.add(key)
    return keys, state


def open_shared(cfg: Config, daemon_state: str | None) -> int:
    """A descriptor of the mount point, once it is known to be the mounted filesystem."""
    mp = os.path.normpath(cfg.mount_point)
    if find_mount(mp) is None:
        raise GcRefused(f"nothing is mounted at {mp}: gc runs only on the shared filesystem")

    def open_it(_: fstree.Progress) -> int:
        fd = os.open(mp, _DIR_FLAGS)
        os.fstatvfs(fd)  # answers, or hangs here, where the watchdog sees it
        if daemon_state is None and cfg.mount.type != "local":
            parent = os.stat(os.path.dirname(mp) or "/")
            if parent.st_dev == os.fstat(fd).st_dev:
                os.close(fd)
                raise GcRefused(
                    f"{mp} is on the same device as its parent and the daemon is not "
                    "answering: it may be local disk; start volagent and try again"
                )
        return fd

    try:
        return guarded(open_it, f"opening {mp}", stall_s=10.0)
    except OSError as exc:
        raise MountUnhealthy(f"cannot open {mp}: {exc.strerror}") from None


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def print_survey(s: Survey, days: float, out: TextIO) -> None:
    w = out.write
    when = now_iso(s.cutoff)
    if not s.candidates:
        w(f"nothing unused for {days:g} days (since {when}); {s.kept} directories in use\n")
    else:
        w(f"not used for {days:g} days (since {when}):\n")
        for c in s.candidates:
            last = now_iso(c.last_used) + f" on {c.last_host}" if c.last_used else "never recorded"
            w(f"  {human_size(c.size):>10}  {c.path}  ({c.kind}; last use {last})\n")
        total = sum(c.size for c in s.candidates)
        w(f"{len(s.candidates)} unused, {human_size(total)}; {s.kept} directories in use\n")
    if not s.records:
        w("note: no usage records yet; last use is judged by directory times alone\n")
    for h in s.stale_hosts:
        w(
            f"note: host {h['host']} was last seen {h['last_seen']}: what its containers "
            "used is known only until then\n"
        )


def delete(cfg: Config, root_fd: int, s: Survey, local: set[Key], out: TextIO) -> bool:
    """Removes every candidate still unused; True when all went."""
    w = out.write
    dev = os.fstat(root_fd).st_dev
    ok = True
    for c in s.candidates:

        def judge_and_remove(p: fstree.Progress, c: Candidate = c) -> fstree.Removal | None:
            if not still_unused(root_fd, c, s.cutoff, local):
                return None
            return remove_candidate(root_fd, c, dev, p)

        try:
            removal = guarded(judge_and_remove, f"removing {c.path}")
        except (VolagentError, OSError) as exc:
            w(f"failed  {c.path}: {exc}\n")
            return False
        if removal is None:
            w(f"kept    {c.path}: used since the listing\n")
        elif removal.complete:
            w(f"deleted {c.path} ({human_size(c.size)})\n")
        else:
            ok = False
            w(f"partly  {c.path}: " + "; ".join(removal.problems[:5]) + "\n")
    pruned = guarded(lambda p: prune_old_records(root_fd, s.cutoff, p), "pruning old records")
    if pruned:
        w(f"removed {pruned} records older than the window from {records.AGENT_DIR}/\n")
    return ok


def remove_candidate(
    root_fd: int, c: Candidate, dev: int, progress: fstree.Progress
) -> fstree.Removal:
    if c.directory is None:
        return fstree.remove_tree(root_fd, c.namespace, dev, c.path, progress)
    ns = records.open_dir(root_fd, (c.namespace,), create=False)
    if ns is None:
        return fstree.Removal()
    try:
        return fstree.remove_tree(ns, c.directory, dev, c.path, progress)
    finally:
        os.close(ns)


def main(args: argparse.Namespace, cfg: Config) -> int:
    days = DEFAULT_DAYS if args.older_than is None else float(args.older_than)
    if not days > 0:
        print("volagent gc: --older-than must be a positive number of days", file=sys.stderr)
        return 2
    now = time.time()
    cutoff = now - days * 86400
    try:
        local, daemon_state = local_use(cfg)
        if daemon_state is None:
            print("note: the volagent daemon did not answer; checking the mount table instead")
        root = open_shared(cfg, daemon_state)
    except VolagentError as exc:
        print(f"volagent gc: refused: {exc}", file=sys.stderr)
        return 1
    try:
        result = guarded(
            lambda p: survey(
                root,
                cfg.mount_point,
                cutoff=cutoff,
                local=local,
                stale_after_s=cfg.health.stale_after_s,
                progress=p,
            ),
            f"surveying {cfg.mount_point}",
        )
        print_survey(result, days, sys.stdout)
        if not args.delete:
            if result.candidates:
                print("run with --delete to remove them")
            return 0
        return 0 if delete(cfg, root, result, local, sys.stdout) else 1
    except VolagentError as exc:
        print(f"volagent gc: {exc}", file=sys.stderr)
        return 1
    finally:
        os.close(root)
