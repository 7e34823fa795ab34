"""The start of a path this host's entries in the registry hold: its components only looked at
(O_PATH, answered from the kernel's caches), and compared with what the create walk recorded.
Every change a look can see is still refused or judged from scratch as before: a symlink or a
mount in place of any component, another directory at the path, a leaf gone, a namespace moved
into the trash, a mount point that is no longer the shared filesystem. Each test fails on a
start that takes the record for the path without looking (tried once)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from tests.testbed.disk import tree
from tests.unit.aged import make_dir, survey

from volagent.errors import MountUnhealthy, NamespaceTrashed, NamespaceViolation
from volagent.ops.gc import trashing
from volagent.ops.gc import tree as gctree
from volagent.values import Owner
from volagent.volumes import trashcheck
from volagent.volumes.directories import Identity, Prepared

pytestmark = pytest.mark.root  # the walk makes parents root 0755 (rule 2)

OWNER = Owner(1234, 1234)
PARTS = ("r1-a", "web", "var", "data")
WHO = {"host": "host-b", "user": "root", "pid": 1}


def create(mp: Path, parts: tuple[str, ...] = PARTS) -> Prepared:
    return trashcheck.prepare_path(str(mp), parts, OWNER, 0o750, os.stat(mp).st_dev)


def held_start(mp: Path, known: Identity, parts: tuple[str, ...] = PARTS) -> Prepared:
    """The start's walk as the preparer asks it of a path the registry holds for this host."""
    return trashcheck.prepare_path(
        str(mp), parts, OWNER, 0o750, os.stat(mp).st_dev, known=known, held=True
    )


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret").write_text("host")
    return path


def test_the_same_directories_are_the_create_walks(mp: Path) -> None:
    got = create(mp)
    again = held_start(mp, got.identity)
    assert (again.identity, again.created) == (got.identity, 0)
    assert (again.uid, again.gid, again.mode) == (1234, 1234, 0o750)


@pytest.mark.parametrize("level", range(len(PARTS)))
@pytest.mark.parametrize("target", ["outside", "other-app"])
def test_a_component_swapped_for_a_symlink_after_the_create_is_refused(
    mp: Path, outside: Path, level: int, target: str
) -> None:
    (mp / "r1-b/web/data").mkdir(parents=True)
    (mp / "r1-b/web/data/secret").write_text("b")
    got = create(mp)
    swapped = mp.joinpath(*PARTS[: level + 1])
    swapped.rename(swapped.with_name("moved"))
    swapped.symlink_to(outside if target == "outside" else mp / "r1-b/web")
    before_mp, before_out = tree(mp), tree(outside)
    with pytest.raises(NamespaceViolation) as info:
        held_start(mp, got.identity)
    assert info.value.rule == 4
    assert "symlink" in str(info.value)
    assert tree(mp) == before_mp
    assert tree(outside) == before_out


@pytest.mark.mount
@pytest.mark.parametrize("level", range(1, len(PARTS)))
def test_a_mount_on_a_component_after_the_create_is_refused(mp: Path, level: int) -> None:
    got = create(mp)
    on = mp.joinpath(*PARTS[: level + 1])
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(on)], check=True)
    try:
        with pytest.raises(NamespaceViolation) as info:
            held_start(mp, got.identity)
        assert info.value.rule == 3
        assert os.listdir(on) == [], "nothing made on the other filesystem"
    finally:
        subprocess.run(["umount", "-l", str(on)], check=False)


def test_another_directory_at_the_path_is_judged_from_scratch(mp: Path) -> None:
    got = create(mp)
    (mp / "r1-a/web/var").rename(mp / "r1-a/web/old")
    again = held_start(mp, got.identity)
    # made afresh, with the owner and mode asked, as at a create
    assert again.identity != got.identity
    assert (again.created, again.leaf_created) == (2, True)
    assert again.identity[-1][1] == os.stat(mp / "r1-a/web/var/data").st_ino
    assert os.stat(mp / "r1-a/web/var/data").st_uid == 1234


def test_a_leaf_removed_after_the_create_is_made_again(mp: Path) -> None:
    got = create(mp)
    (mp / "r1-a/web/var/data").rmdir()
    again = held_start(mp, got.identity)
    assert again.leaf_created and (again.uid, again.gid, again.mode) == (1234, 1234, 0o750)


def test_a_namespace_gc_moved_into_the_trash_is_refused(mp: Path, root: int) -> None:
    # gc's own move (its record, then the rename): the start does not find the directories
    # recorded at its path, judges it as a create and looks in the trash
    make_dir(mp, "r1-old/web/data")
    got = create(mp, ("r1-old", "web", "data"))
    make_dir(mp, "r1-old/web")  # unused for days again, as gc judges it
    [c] = survey(mp, root).candidates
    moved = trashing.move(
        root, c, gctree.Progress(), still_unused=lambda: True, reason="test", who=WHO
    )
    with pytest.raises(NamespaceTrashed) as refused:
        held_start(mp, got.identity, ("r1-old", "web", "data"))
    assert refused.value.entry == moved.entry
    assert not (mp / "r1-old").exists(), "nothing fresh made in its place"


@pytest.mark.mount
def test_a_mount_point_that_is_no_longer_the_shared_filesystem_is_refused(mp: Path) -> None:
    got = create(mp)
    dev = os.stat(mp).st_dev
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mp)], check=True)
    try:
        with pytest.raises(MountUnhealthy):
            trashcheck.prepare_path(
                str(mp), PARTS, OWNER, 0o750, dev, known=got.identity, held=True
            )
        assert os.listdir(mp) == [], "nothing made on the filesystem mounted over it"
    finally:
        subprocess.run(["umount", "-l", str(mp)], check=False)


def _descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_the_looks_leave_no_descriptor_open(mp: Path) -> None:
    got = create(mp)
    before = _descriptors()
    held_start(mp, got.identity)
    (mp / "r1-a/web/var").rename(mp / "r1-a/web/old")
    held_start(mp, got.identity)  # judged from scratch after the looks
    assert _descriptors() <= before
