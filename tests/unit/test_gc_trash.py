"""The trash on real directories: entry names, the move (claimed, judged again, one rename),
the preparer's refusal of a trashed namespace, restore, purge, and the survey counting every
kind of use (dot directories, whole namespaces, the mount point itself)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.unit.aged import CUTOFF, DAY, NOW, make_dir, record, still_unused, survey

from volagent.config import from_dict
from volagent.errors import NamespaceTrashed
from volagent.ops.gc import command as gc
from volagent.ops.gc import survey as gcsurvey
from volagent.ops.gc import trashing, tree
from volagent.rack import trash
from volagent.values import Owner
from volagent.volumes import trashcheck

OWNER = Owner(os.getuid(), os.getgid())  # the caller itself: no root needed
WHO = {"host": "host-a", "user": "root", "pid": 1}


def candidates(mp: Path, root: int) -> list[gcsurvey.Candidate]:
    return survey(mp, root).candidates


def move(root: int, c: gcsurvey.Candidate, unused: bool = True) -> trashing.Moved:
    return trashing.move(
        root, c, tree.Progress(), still_unused=lambda: unused, reason="test", who=WHO
    )


def test_entry_names_say_what_and_when_and_read_back() -> None:
    whole = trash.EntryName("r1-web", None, trash.stamp_of(0))
    assert whole.name == "r1-web@19700101T000000Z"
    assert trash.parse(whole.name) == whole
    assert trash.parse(whole.name + ".json") == whole
    odd = trash.EntryName("r1-web", ".sh@r+d %x", trash.stamp_of(0, 2))
    assert "/" not in odd.name and odd.name.count("@") == 1
    assert trash.parse(odd.name) == odd
    assert odd.relative == "r1-web/.sh@r+d %x"
    for bad in ("r1-web", "r1-web@today", ".r1-web@19700101T000000Z", "a/b@19700101T000000Z"):
        assert trash.parse(bad) is None, bad


def test_dot_dirs_whole_namespaces_and_the_mount_point_count_as_use(mp: Path, root: int) -> None:
    make_dir(mp, "r1-dot/.shared/db")
    make_dir(mp, "r1-dot/web")
    record(mp, "r1-dot/.shared", "host-b", time.time() - 60)
    make_dir(mp, "r1-whole/web")
    make_dir(mp, "r1-whole/api")
    record(mp, "r1-whole", "host-b", time.time() - 60)  # a bind of <mp>/r1-whole itself
    found = {(c.namespace, c.directory) for c in candidates(mp, root)}
    assert found == {("r1-dot", "web")}
    # a bind of the mount point itself: anything may be in use, but only while it exists
    record(mp, "", "host-c", time.time() - 60)
    assert candidates(mp, root) == []
    record(mp, "", "host-c", time.time() - 3600)  # not refreshed for an hour: gone
    assert len(candidates(mp, root)) == 1
    rec = {"host": "host-c", "time": time.time() - 60, "containers": []}  # its last containers left
    (mp / ".volagent" / "usage" / "host-c.json").write_text(json.dumps(rec))
    assert len(candidates(mp, root)) == 1


def test_move_is_one_rename_with_a_record(mp: Path, root: int) -> None:
    make_dir(mp, "r1-old/web/deep", data=b"x" * 100)
    [c] = candidates(mp, root)
    moved = move(root, c)
    assert moved.outcome == "moved" and moved.entry is not None
    assert not (mp / "r1-old").exists()
    entry = mp / ".volagent" / "trash" / moved.entry
    assert (entry / "web" / "deep" / "file").read_bytes() == b"x" * 100
    rec = json.loads(entry.with_name(moved.entry + ".json").read_text())
    assert rec["state"] == "trashed" and rec["by"] == WHO and rec["path"] == f"{mp}/r1-old"
    trash_fd = trash.open_trash(root, create=False)
    assert trash_fd is not None
    try:
        assert trash.holding(trash_fd, "r1-old", "web") == moved.entry
    finally:
        os.close(trash_fd)


def test_a_candidate_used_since_the_listing_is_kept_and_unclaimed(mp: Path, root: int) -> None:
    make_dir(mp, "r1-old/web")
    [c] = candidates(mp, root)
    assert move(root, c, unused=False).outcome == "kept"
    assert (mp / "r1-old" / "web").is_dir()
    assert list((mp / ".volagent" / "trash").iterdir()) == []


@pytest.mark.root  # the preparer makes a parent: root 0755 (rule 2)
def test_the_preparer_touches_then_refuses_a_trashed_namespace(mp: Path, root: int) -> None:
    make_dir(mp, "r1-old/web")
    [c] = candidates(mp, root)
    # the preparer marks the namespace used before it looks at the trash: gc then keeps it
    trashcheck.prepare_path(str(mp), ("r1-old", "web", "data"), OWNER, 0o750, None)
    assert os.stat(mp / "r1-old").st_mtime >= CUTOFF
    assert not still_unused(mp, root, c, CUTOFF)
    make_dir(mp, "r1-old/web")
    [c] = candidates(mp, root)
    moved = move(root, c)
    with pytest.raises(NamespaceTrashed) as refused:
        trashcheck.prepare_path(str(mp), ("r1-old", "web", "data"), OWNER, 0o750, None)
    assert refused.value.entry == moved.entry
    assert f"volagent gc --restore {moved.entry}" in str(refused.value)
    assert not (mp / "r1-old").exists(), "nothing fresh made in its place"
    # another namespace is not affected
    trashcheck.prepare_path(str(mp), ("r1-new", "web", "data"), OWNER, 0o750, None)
    assert (mp / "r1-new" / "web" / "data").is_dir()


@pytest.mark.root  # the preparer makes a parent: root 0755 (rule 2)
def test_a_namespace_marked_within_the_hour_is_kept_by_a_window_of_seconds(
    mp: Path, root: int
) -> None:
    # the preparer leaves a recent mtime alone (no write round trip): gc's shortest window
    # widens every window by that hour, so a move racing the create keeps it
    recent = time.time() - trashcheck.TOUCH_AFTER_S / 2
    make_dir(mp, "r1-busy/web", when=recent)
    trashcheck.prepare_path(str(mp), ("r1-busy", "web", "data"), OWNER, 0o750, None)
    assert os.stat(mp / "r1-busy").st_mtime == pytest.approx(recent)
    cutoff = gc.window_cutoff(0.001, time.time())  # a window of 86 s
    c = gcsurvey.Candidate("r1-busy", None, str(mp / "r1-busy"), None, "", recent)
    assert not still_unused(mp, root, c, cutoff)


@pytest.mark.root  # the preparer makes a parent: root 0755 (rule 2)
def test_a_namespace_this_host_recorded_within_the_hour_is_kept_untouched(
    mp: Path, root: int
) -> None:
    # the preparer leaves an old mtime alone when this host's usage record of the directory
    # is recent: gc's last judgement reads that record and keeps the directory
    make_dir(mp, "r1-busy/web")
    recorded = time.time() - trashcheck.TOUCH_AFTER_S / 2
    record(mp, "r1-busy/web", "host-a", recorded)
    trashcheck.prepare_path(
        str(mp), ("r1-busy", "web", "data"), OWNER, 0o750, None, recorded_at=recorded
    )
    assert os.stat(mp / "r1-busy").st_mtime < CUTOFF  # not touched
    cutoff = gc.window_cutoff(0.001, time.time())  # a window of 86 s
    for directory in (None, "web"):
        c = gcsurvey.Candidate("r1-busy", directory, str(mp / "r1-busy"), None, "", 0.0)
        assert not still_unused(mp, root, c, cutoff)


@pytest.mark.root  # the preparer makes a parent: root 0755 (rule 2)
def test_a_start_walk_after_its_namespace_went_to_the_trash_is_refused(mp: Path, root: int) -> None:
    # what the create walk recorded is of directories now in the trash: the start does not
    # take the path for the one it judged, and looks in the trash again
    make_dir(mp, "r1-old/web/data")
    walked = trashcheck.prepare_path(str(mp), ("r1-old", "web", "data"), OWNER, 0o750, None)
    make_dir(mp, "r1-old/web")
    [c] = candidates(mp, root)
    moved = move(root, c)
    with pytest.raises(NamespaceTrashed) as refused:
        trashcheck.prepare_path(
            str(mp), ("r1-old", "web", "data"), OWNER, 0o750, None, known=walked.identity
        )
    assert refused.value.entry == moved.entry
    assert not (mp / "r1-old").exists(), "nothing fresh made in its place"


def test_a_claim_alone_refuses_creates_while_the_move_is_under_way(mp: Path, root: int) -> None:
    make_dir(mp, "r1-old/web")
    [c] = candidates(mp, root)
    seen: list[str] = []

    def judge() -> bool:  # runs between the claim and the rename
        with pytest.raises(NamespaceTrashed) as refused:
            trashcheck.prepare_path(str(mp), ("r1-old", "web"), OWNER, 0o750, None)
        seen.append(refused.value.entry)
        return True

    moved = trashing.move(root, c, tree.Progress(), still_unused=judge, reason="test", who=WHO)
    assert seen == [moved.entry]


def test_a_judgement_that_fails_leaves_no_claim_behind(mp: Path, root: int) -> None:
    make_dir(mp, "r1-old/web")
    [c] = candidates(mp, root)

    def judge() -> bool:
        raise gc.GcRefused("the mount went bad")

    with pytest.raises(gc.GcRefused):
        trashing.move(root, c, tree.Progress(), still_unused=judge, reason="test", who=WHO)
    assert list((mp / ".volagent" / "trash").iterdir()) == []
    assert (mp / "r1-old" / "web").is_dir()


def test_a_service_directory_entry_refuses_only_that_directory(mp: Path, root: int) -> None:
    make_dir(mp, "r1-mixed/old")
    make_dir(mp, "r1-mixed/live", when=time.time())
    [c] = candidates(mp, root)
    assert (c.namespace, c.directory) == ("r1-mixed", "old")
    moved = move(root, c)
    assert moved.entry is not None and moved.entry.startswith("r1-mixed+old@")
    with pytest.raises(NamespaceTrashed):
        trashcheck.prepare_path(str(mp), ("r1-mixed", "old", "x"), OWNER, 0o750, None)
    trashcheck.prepare_path(str(mp), ("r1-mixed", "live", "x"), OWNER, 0o750, None)
    assert trashing.restore(root, moved.entry, str(mp)).startswith("restored")
    assert (mp / "r1-mixed" / "old").is_dir()


def test_restore_puts_it_back_marked_used_and_never_over_a_new_one(mp: Path, root: int) -> None:
    make_dir(mp, "r1-old/web", data=b"keep")
    [c] = candidates(mp, root)
    moved = move(root, c)
    assert moved.entry is not None
    (mp / "r1-old").mkdir()  # made again meanwhile (empty: a plain rename would replace it)
    with pytest.raises(trashing.TrashError, match="exists again") as refused:
        trashing.restore(root, moved.entry, str(mp))
    assert f"volagent gc --restore {moved.entry}" in str(refused.value)
    assert (mp / ".volagent" / "trash" / moved.entry / "web" / "file").exists()
    (mp / "r1-old").rmdir()
    trashing.restore(root, moved.entry, str(mp))
    assert (mp / "r1-old" / "web" / "file").read_bytes() == b"keep"
    assert os.stat(mp / "r1-old").st_mtime >= CUTOFF  # not a candidate again at once
    assert candidates(mp, root) == []
    assert list((mp / ".volagent" / "trash").iterdir()) == []
    with pytest.raises(trashing.TrashError, match="no trash entry"):
        trashing.restore(root, moved.entry, str(mp))


def test_purge_removes_only_old_entries_nobody_uses(mp: Path, root: int) -> None:
    for ns in ("r1-a", "r1-b", "r1-c"):
        make_dir(mp, f"{ns}/web", data=b"z")
    moved = {c.namespace: move(root, c).entry for c in candidates(mp, root)}
    trash_dir = mp / ".volagent" / "trash"
    for ns in ("r1-a", "r1-b"):  # trashed ten days ago
        path = trash_dir / f"{moved[ns]}.json"
        rec = json.loads(path.read_text())
        path.write_text(json.dumps({**rec, "time": NOW - 10 * DAY}))
    record(mp, "r1-b/web", "host-b", time.time() - 60)  # a host still reports it in use
    results = trashing.purge(root, NOW - 7 * DAY, str(mp), tree.Progress())
    outcome = {r.entry: r.outcome for r in results}
    assert outcome == {moved["r1-a"]: "purged", moved["r1-b"]: "kept"}
    left = sorted(p.name for p in trash_dir.iterdir())
    kept = [str(moved[ns]) + suffix for ns in ("r1-b", "r1-c") for suffix in ("", ".json")]
    assert left == sorted(kept)


def test_purging_entries_cannot_be_restored_and_say_so_to_creates(mp: Path, root: int) -> None:
    make_dir(mp, "r1-old/web")
    [c] = candidates(mp, root)
    moved = move(root, c)
    assert moved.entry is not None
    path = mp / ".volagent" / "trash" / f"{moved.entry}.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "state": "purging"}))
    with pytest.raises(trashing.TrashError, match="being purged"):
        trashing.restore(root, moved.entry, str(mp))
    with pytest.raises(NamespaceTrashed, match="being purged"):
        trashcheck.prepare_path(str(mp), ("r1-old", "web"), OWNER, 0o750, None)


# --- the command, on a real mount ------------------------------------------------------
@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "mounted"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def run_gc(mounted: Path, tmp_path: Path, **args: object) -> int:
    cfg = from_dict(
        {
            "rack": "r1",
            "mount_point": str(mounted),
            "mount": {"type": "nfs4"},
            "api": {"socket": str(tmp_path / "nobody.sock")},
        }
    )
    defaults: dict[str, object] = {
        "older_than": None,
        "delete": False,
        "restore": None,
        "purge": False,
        "ignore_stale": None,
    }
    return gc.main(argparse.Namespace(**{**defaults, **args}), cfg)


@pytest.mark.mount
def test_delete_refuses_while_a_host_is_stale_unless_named(
    mounted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dir(mounted, "r1-old/web")
    hosts = mounted / ".volagent" / "hosts"
    hosts.mkdir(parents=True)
    now = time.time()  # not the module's NOW: a slow run must not make "live" stale
    for host, when in (("gone-1", now - 3600), ("gone-2", now - 7200), ("live", now)):
        (hosts / f"{host}.json").write_text(json.dumps({"host": host, "time": when}))
    assert run_gc(mounted, tmp_path, delete=True) == 1
    out = capsys.readouterr().out
    assert "refused" in out and "gone-1" in out and "gone-2" in out
    assert "--ignore-stale gone-1 gone-2" in out
    assert (mounted / "r1-old").is_dir()
    assert run_gc(mounted, tmp_path, delete=True, ignore_stale=["gone-1"]) == 1
    assert "gone-1" not in capsys.readouterr().out.split("refused")[1]
    assert (mounted / "r1-old").is_dir()
    assert run_gc(mounted, tmp_path, delete=True, ignore_stale=["gone-1", "gone-2"]) == 0
    out = capsys.readouterr().out
    assert f"trashed {mounted}/r1-old" in out
    assert not (mounted / "r1-old").exists()
    # only with --delete: the command line refuses it (exit 64, test_cli.py), gc never runs
    with pytest.raises(ValueError, match="--ignore-stale goes with --delete"):
        run_gc(mounted, tmp_path, ignore_stale=["gone-1"])


@pytest.mark.mount
def test_list_restore_and_purge_from_the_command(
    mounted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dir(mounted, "r1-old/web", data=b"q" * 3000)
    assert run_gc(mounted, tmp_path, delete=True) == 0
    captured = capsys.readouterr()
    [name] = [p.name for p in (mounted / ".volagent" / "trash").iterdir() if p.is_dir()]
    events = [json.loads(line)["event"] for line in captured.err.splitlines()]
    assert events == ["gc_trash_claimed", "gc_moved"]
    assert run_gc(mounted, tmp_path) == 0
    listing = capsys.readouterr().out
    assert name in listing and f"volagent gc --restore {name}" in listing
    assert f"was {mounted}/r1-old" in listing and "unused for 30 days" in listing
    assert run_gc(mounted, tmp_path, restore="r1-old") == 1  # not an entry name
    capsys.readouterr()
    assert run_gc(mounted, tmp_path, restore=name) == 0
    assert (mounted / "r1-old" / "web" / "file").read_bytes() == b"q" * 3000
    make_dir(mounted, "r1-old/web")
    assert run_gc(mounted, tmp_path, delete=True) == 0
    assert run_gc(mounted, tmp_path, purge=True) == 0  # not a week old yet
    assert "nothing has been in the trash for 7 days" in capsys.readouterr().out
    assert run_gc(mounted, tmp_path, purge=True, older_than=0) == 0
    assert "purged  r1-old@" in capsys.readouterr().out
    assert list((mounted / ".volagent" / "trash").iterdir()) == []


@pytest.mark.mount
def test_the_listing_escapes_what_containers_named(
    mounted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a directory a container's bind named, holding a terminal escape and a carriage return
    make_dir(mounted, "r1-old/\x1b[2J\rOK web")
    make_dir(mounted, "r1-old/web", when=time.time())  # in use: the other is listed alone
    assert run_gc(mounted, tmp_path) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out
    assert "r1-old/\\x1b[2J\\rOK web" in out, out
