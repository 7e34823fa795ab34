"""The check after a start on real directories: a prepared bind source walked again, no
symlink followed, its leaf's inode against the one recorded when it was prepared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from volagent.errors import MountUnhealthy
from volagent.volumes.start_check import PreparedBind, check_binds, check_outside


def prepared(path: Path, container: str = "/data") -> PreparedBind:
    st = os.stat(path)
    return PreparedBind(str(path), container, (st.st_dev, st.st_ino))


@pytest.fixture
def leaf(mp: Path) -> Path:
    path = mp / "r1-a" / "web" / "data"
    path.mkdir(parents=True)
    return path


def dev_of(mp: Path) -> int:
    return os.stat(mp).st_dev


def test_the_directory_prepared_is_no_mismatch(mp: Path, leaf: Path) -> None:
    assert check_binds(str(mp), dev_of(mp), [prepared(leaf)]) == []


def test_a_leaf_swapped_for_a_symlink(mp: Path, leaf: Path, tmp_path: Path) -> None:
    bind = prepared(leaf)
    other = mp / "r1-b" / "web" / "data"
    other.mkdir(parents=True)
    leaf.rename(leaf.with_name("data.moved"))
    leaf.symlink_to(other)
    [found] = check_binds(str(mp), dev_of(mp), [bind])
    assert found.host == str(leaf) and found.container == "/data"
    assert "is a symlink now" in found.reason


def test_a_parent_swapped_for_a_symlink(mp: Path, leaf: Path) -> None:
    bind = prepared(leaf)
    parent = leaf.parent
    other = mp / "r1-b" / "web"
    (other / "data").mkdir(parents=True)
    parent.rename(parent.with_name("web.moved"))
    parent.symlink_to(other)
    [found] = check_binds(str(mp), dev_of(mp), [bind])
    assert f"{parent} is a symlink now" in found.reason


def test_a_leaf_swapped_for_another_directory(mp: Path, leaf: Path) -> None:
    bind = prepared(leaf)
    leaf.rename(leaf.with_name("data.moved"))
    leaf.mkdir()
    [found] = check_binds(str(mp), dev_of(mp), [bind])
    assert "is another directory now" in found.reason


def test_a_leaf_gone_or_prepared_on_an_earlier_mount_is_not_compared(mp: Path, leaf: Path) -> None:
    bind = prepared(leaf)
    earlier = PreparedBind(bind.host, bind.container, (bind.leaf[0] + 1, bind.leaf[1] + 1))
    assert check_binds(str(mp), dev_of(mp), [earlier]) == []
    leaf.rmdir()
    assert check_binds(str(mp), dev_of(mp), [bind]) == []


def test_a_mount_point_that_is_not_the_shared_filesystem(mp: Path, leaf: Path) -> None:
    with pytest.raises(MountUnhealthy):
        check_binds(str(mp), dev_of(mp) + 1, [prepared(leaf)])


def test_a_host_symlink_outside_the_mount_point_repointed_into_it(
    mp: Path, leaf: Path, tmp_path: Path
) -> None:
    scratch = tmp_path / "scratch"
    (scratch / "harmless").mkdir(parents=True)
    link = scratch / "link"
    link.symlink_to(scratch / "harmless")
    binds = [(str(link), "/data")]
    assert check_outside(str(mp), binds, prepared=[]) == []
    link.unlink()
    link.symlink_to(leaf)
    [found] = check_outside(str(mp), binds, prepared=[])
    assert found.host == str(leaf) and found.container == "/data"
    assert "did not prepare" in found.reason
    # where it leads is what volagent prepared for this container: no mismatch
    assert check_outside(str(mp), binds, prepared=[str(leaf)]) == []
