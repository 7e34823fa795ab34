"""The safe directory walk on real directories: symlinks refused at every level with nothing
created through them, existing directories untouched, created ones owned as asked, and
nothing made on another filesystem."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from tests.testbed.disk import owner_mode, tree

from volagent import safedir
from volagent.errors import MountUnhealthy, NamespaceViolation
from volagent.values import Owner
from volagent.volumes import directories as fs

# tests marked `root` give directories to other users, or have volagent make a parent
# (root 0755, rule 2); tests marked `mount` mount a tmpfs

OWNER = Owner(1234, 1234)
PARTS = ("r1-a", "web", "var", "data")


def prepare_path(
    mount_point: str, parts: Sequence[str], owner: Owner, mode: int, expected_dev: int | None
) -> fs.Prepared:
    """The walk from the mount point by its path, as the preparer's does it (without the
    trash check and the marking, which tests/unit/test_gc_trash.py covers)."""
    root = safedir.open_mount_point(mount_point, expected_dev)
    try:
        return fs.prepare_below(root, mount_point, parts, owner, mode)
    finally:
        os.close(root)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    return path


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "tmpfs"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.root
def test_creates_leaf_with_owner_and_mode_and_parents_root_0755(mp: Path) -> None:
    old = os.umask(0o077)  # the modes must not depend on the process umask
    try:
        got = prepare_path(str(mp), PARTS, OWNER, 0o750, os.stat(mp).st_dev)
    finally:
        os.umask(old)
    assert got.created == 4
    assert got.leaf_created
    assert (got.uid, got.gid, got.mode) == (1234, 1234, 0o750)
    assert owner_mode(mp / "r1-a/web/var/data") == (1234, 1234, 0o750)
    for parent in ("r1-a", "r1-a/web", "r1-a/web/var"):
        assert owner_mode(mp / parent) == (0, 0, 0o755), parent


@pytest.mark.root
def test_existing_directories_are_left_alone(mp: Path) -> None:
    leaf = mp / "r1-a/web/var/data"
    leaf.mkdir(parents=True)
    for i, path in enumerate([mp / "r1-a", mp / "r1-a/web", mp / "r1-a/web/var", leaf]):
        os.chown(path, 4000 + i, 5000 + i)
        os.chmod(path, 0o700 + i)
    before = {p: owner_mode(mp / p) for p in tree(mp)}
    got = prepare_path(str(mp), PARTS, OWNER, 0o750, None)
    assert (got.created, got.leaf_created) == (0, False)
    assert (got.uid, got.gid, got.mode) == (4003, 5003, 0o703)
    assert {p: owner_mode(mp / p) for p in tree(mp)} == before


@pytest.mark.root
def test_only_missing_tail_is_created(mp: Path) -> None:
    (mp / "r1-a/web").mkdir(parents=True)
    os.chown(mp / "r1-a/web", 99, 99)
    os.chmod(mp / "r1-a/web", 0o711)  # noqa: S103 - an odd mode that must survive
    got = prepare_path(str(mp), PARTS, OWNER, 0o700, None)
    assert got.created == 2
    assert owner_mode(mp / "r1-a/web") == (99, 99, 0o711)
    assert owner_mode(mp / "r1-a/web/var") == (0, 0, 0o755)
    assert owner_mode(mp / "r1-a/web/var/data") == (1234, 1234, 0o700)


@pytest.mark.parametrize("level", range(len(PARTS)))
@pytest.mark.parametrize("target", ["outside", "other-app", "dangling", "file"])
def test_symlink_at_every_level_is_refused(
    mp: Path, outside: Path, level: int, target: str
) -> None:
    (mp / "r1-b").mkdir()
    for i in range(level):
        (mp.joinpath(*PARTS[: i + 1])).mkdir()
    link = mp.joinpath(*PARTS[: level + 1])
    pointee = {
        "outside": outside,
        "other-app": mp / "r1-b",
        "dangling": outside / "nothing-here",
        "file": outside / "a-file",
    }[target]
    if target == "file":
        pointee.write_text("x")
    link.symlink_to(pointee)
    before_mp, before_out = tree(mp), tree(outside)

    with pytest.raises(NamespaceViolation) as info:
        prepare_path(str(mp), PARTS, OWNER, 0o750, None)
    assert info.value.rule == 4
    assert "symlink" in str(info.value)
    assert tree(mp) == before_mp
    assert tree(outside) == before_out
    assert os.listdir(mp / "r1-b") == []


@pytest.mark.root
def test_mount_point_given_as_a_symlink_counts_only_by_its_device(
    tmp_path: Path, outside: Path
) -> None:
    # An operator may point mount_point at a symlink; what decides is the device behind it.
    mp = tmp_path / "mp-link"
    mp.symlink_to(outside)
    with pytest.raises(MountUnhealthy):
        prepare_path(str(mp), PARTS, OWNER, 0o750, os.stat(outside).st_dev + 1)
    assert tree(outside) == []
    prepare_path(str(mp), PARTS, OWNER, 0o750, os.stat(outside).st_dev)
    assert tree(outside) == ["r1-a", "r1-a/web", "r1-a/web/var", "r1-a/web/var/data"]


def test_a_file_in_the_way_is_refused(mp: Path) -> None:
    (mp / "r1-a").mkdir()
    (mp / "r1-a/web").write_text("not a dir")
    with pytest.raises(NamespaceViolation) as info:
        prepare_path(str(mp), PARTS, OWNER, 0o750, None)
    assert "file" in str(info.value)
    assert tree(mp) == ["r1-a", "r1-a/web"]


def test_another_device_than_expected_is_refused(mp: Path) -> None:
    wrong_dev = os.stat(mp).st_dev + 1
    with pytest.raises(MountUnhealthy):
        prepare_path(str(mp), PARTS, OWNER, 0o750, wrong_dev)
    assert tree(mp) == []


@pytest.mark.mount
def test_right_device_is_accepted(tmpfs: Path) -> None:
    got = prepare_path(str(tmpfs), PARTS, OWNER, 0o750, os.stat(tmpfs).st_dev)
    assert got.leaf_created
    assert os.stat(tmpfs / "r1-a/web/var/data").st_dev == os.stat(tmpfs).st_dev


@pytest.mark.mount
def test_a_mount_inside_the_namespace_is_refused(mp: Path, tmp_path: Path) -> None:
    inner = mp / "r1-a/web"
    inner.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(inner)], check=True)
    try:
        with pytest.raises(NamespaceViolation) as info:
            prepare_path(str(mp), PARTS, OWNER, 0o750, os.stat(mp).st_dev)
        assert info.value.rule == 3
        assert "another filesystem" in str(info.value)
        assert os.listdir(inner) == []
    finally:
        subprocess.run(["umount", "-l", str(inner)], check=False)


@pytest.mark.root
def test_bad_components_are_refused(mp: Path) -> None:
    for parts in [("r1-a", "..", "x"), ("r1-a", "a/b"), ("r1-a", "."), ("r1-a", ""), ()]:
        with pytest.raises(NamespaceViolation):
            prepare_path(str(mp), parts, OWNER, 0o750, None)
    # the first component may have been made before the bad one was met; nothing else
    assert set(tree(mp)) <= {"r1-a"}
