"""gc on real directories: what counts as unused (records of every host, directory times,
this host's containers), removal that never follows a symlink nor enters another filesystem,
and the command refusing to run anywhere but on a mounted filesystem."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.unit.aged import CUTOFF, OLD, make_dir, record, still_unused, survey

from volagent.config import Config, from_dict
from volagent.errors import FilesystemHung
from volagent.ops.gc import command as gc
from volagent.ops.gc import survey as gcsurvey
from volagent.ops.gc import tree
from volagent.rack import records


def root_fd(mp: Path) -> int:
    return os.open(mp, os.O_RDONLY | os.O_DIRECTORY)


def run_survey(mp: Path, local: set[tuple[str, str]] | None = None) -> gcsurvey.Survey:
    fd = root_fd(mp)
    try:
        return survey(mp, fd, local)
    finally:
        os.close(fd)


def test_survey_judges_namespaces_and_service_dirs(mp: Path) -> None:
    make_dir(mp, "r1-old/web", data=b"x" * 10000)
    make_dir(mp, "r1-old/worker")
    record(mp, "r1-old/web", "host-b", OLD)
    make_dir(mp, "r1-live/web")
    make_dir(mp, "r1-live/gone")
    record(mp, "r1-live/web", "host-b", time.time() - 60)  # used on another host a minute ago
    record(mp, "r1-live/gone", "host-b", OLD)
    make_dir(mp, "r1-mine/web")  # old, unrecorded, but a container here uses it now
    make_dir(mp, "r1-new/web", when=time.time() - 60)  # unrecorded, but made a minute ago
    make_dir(mp, "lost+found")
    os.utime(mp / "r1-live", (OLD, OLD))
    s = run_survey(mp, local={("r1-mine", "web")})
    found = {(c.namespace, c.directory): c for c in s.candidates}
    assert set(found) == {("r1-old", None), ("r1-live", "gone")}
    whole = found[("r1-old", None)]
    assert whole.kind == "namespace"
    assert whole.last_host == "host-b"
    assert whole.size >= 10000
    assert whole.path == f"{mp}/r1-old"
    assert s.kept == 3  # r1-live/web, r1-mine/web, r1-new/web
    assert s.records == 3


def test_a_new_use_after_the_survey_keeps_the_directory(mp: Path) -> None:
    make_dir(mp, "r1-old/web")
    s = run_survey(mp)
    [cand] = s.candidates
    fd = root_fd(mp)
    try:
        assert still_unused(mp, fd, cand)
        record(mp, "r1-old/web", "host-c", time.time())
        assert not still_unused(mp, fd, cand)
    finally:
        os.close(fd)


def test_a_new_service_dir_keeps_the_namespace(mp: Path) -> None:
    make_dir(mp, "r1-old/web")
    [cand] = run_survey(mp).candidates
    (mp / "r1-old" / "api").mkdir()  # the namespace's mtime moves
    fd = root_fd(mp)
    try:
        assert not still_unused(mp, fd, cand)
    finally:
        os.close(fd)


def test_remove_tree_removes_links_not_their_targets(mp: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep")
    d = make_dir(mp, "r1-old/web/deep/er", data=b"data")
    (d / "link").symlink_to(victim)
    (mp / "r1-old" / "web" / "dirlink").symlink_to(victim)
    fd = root_fd(mp)
    try:
        result = tree.remove_tree(fd, "r1-old", os.fstat(fd).st_dev, f"{mp}/r1-old")
    finally:
        os.close(fd)
    assert result.complete, result.problems
    assert not (mp / "r1-old").exists()
    assert (victim / "precious").read_text() == "keep"


@pytest.mark.mount
def test_remove_tree_leaves_a_filesystem_mounted_inside(mp: Path) -> None:
    inner = make_dir(mp, "r1-old/web/mnt")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(inner)], check=True)
    try:
        (inner / "data").write_text("other filesystem")
        (mp / "r1-old" / "web" / "file").write_text("x")
        fd = root_fd(mp)
        try:
            result = tree.remove_tree(fd, "r1-old", os.fstat(fd).st_dev, f"{mp}/r1-old")
        finally:
            os.close(fd)
        assert not result.complete
        assert "another filesystem" in result.problems[0]
        assert (inner / "data").read_text() == "other filesystem"
        assert not (mp / "r1-old" / "web" / "file").exists()
    finally:
        subprocess.run(["umount", "-l", str(inner)], check=False)


def test_prune_removes_only_records_older_than_the_window(mp: Path) -> None:
    record(mp, "r1-a/web", "old-host", OLD)
    record(mp, "r1-a/web", "new-host", time.time())
    record(mp, "r1-b/web", "old-host", OLD)
    hosts = mp / ".volagent" / "hosts"
    hosts.mkdir(parents=True)
    (hosts / "gone.json").write_text(json.dumps({"host": "gone", "time": OLD}))
    (hosts / "here.json").write_text(json.dumps({"host": "here", "time": time.time()}))
    fd = root_fd(mp)
    try:
        assert gcsurvey.prune_old_records(fd, CUTOFF, tree.Progress()) == 3
    finally:
        os.close(fd)
    usage = mp / ".volagent" / "usage"
    assert sorted(p.name for p in (usage / "r1-a" / "web").iterdir()) == ["new-host.json"]
    assert not (usage / "r1-b").exists()
    assert sorted(p.name for p in hosts.iterdir()) == ["here.json"]


def test_guarded_gives_up_on_a_walk_that_stops_moving() -> None:
    release = threading.Event()
    try:
        with pytest.raises(FilesystemHung, match="no progress"):
            gc.guarded(lambda p: release.wait(), "walking", stall_s=0.2)
    finally:
        release.set()


def test_guarded_passes_results_and_errors() -> None:
    assert gc.guarded(lambda p: 42, "x") == 42
    with pytest.raises(KeyError):
        gc.guarded(lambda p: {}["missing"], "x")


# --- the command, on a real mount ------------------------------------------------------
def config_for(mp: Path, tmp_path: Path) -> Config:
    return from_dict(
        {
            "rack": "r1",
            "mount_point": str(mp),
            "mount": {"type": "nfs4"},
            "api": {"socket": str(tmp_path / "nobody.sock")},
        }
    )


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "mounted"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.mount
def test_gc_lists_then_deletes_only_the_unused(
    mounted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dir(mounted, "r1-old/web", data=b"y" * 5000)
    make_dir(mounted, "r1-used/web")
    record(mounted, "r1-used/web", "host-b", time.time() - 3600)
    cfg = config_for(mounted, tmp_path)
    assert gc.main(argparse.Namespace(older_than=30.0, delete=False), cfg) == 0
    out = capsys.readouterr().out
    assert f"{mounted}/r1-old" in out
    assert "r1-used" not in out
    assert "--delete" in out
    assert (mounted / "r1-old").exists()
    assert gc.main(argparse.Namespace(older_than=30.0, delete=True), cfg) == 0
    out = capsys.readouterr().out
    assert f"trashed {mounted}/r1-old" in out
    assert not (mounted / "r1-old").exists()
    assert (mounted / "r1-used" / "web").is_dir()
    [entry] = [p for p in (mounted / ".volagent" / "trash").iterdir() if p.is_dir()]
    assert entry.name.startswith("r1-old@")
    assert (entry / "web" / "file").read_bytes() == b"y" * 5000


@pytest.mark.mount
def test_gc_with_a_short_window_keeps_a_namespace_marked_within_the_hour(
    mounted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the preparer counts an mtime of the last hour as marked and leaves it alone: a window
    # of minutes must not take a directory a create may be using since
    make_dir(mounted, "r1-old/web")
    make_dir(mounted, "r1-busy/web", when=time.time() - 1800)
    os.utime(mounted / "r1-busy", (time.time() - 1800,) * 2)
    cfg = config_for(mounted, tmp_path)
    assert gc.main(argparse.Namespace(older_than=0.01, delete=True), cfg) == 0
    out = capsys.readouterr().out
    assert f"trashed {mounted}/r1-old" in out
    assert "r1-busy" not in out
    assert (mounted / "r1-busy" / "web").is_dir()


def test_gc_refuses_a_mount_point_that_is_not_mounted(
    mp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dir(mp, "r1-old/web")
    cfg = config_for(mp, tmp_path)
    assert gc.main(argparse.Namespace(older_than=30.0, delete=True), cfg) == 1
    assert "nothing is mounted" in capsys.readouterr().err
    assert (mp / "r1-old" / "web").is_dir()


def test_records_file_name_is_one_safe_component() -> None:
    assert records.file_name("i-0abc") == "i-0abc"
    assert records.file_name("../../etc") == "_.._etc"
    assert records.file_name("...") == "unnamed"
    assert "/" not in records.file_name("a/b") and len(records.file_name("x" * 500)) == 200
