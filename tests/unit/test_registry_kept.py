"""The registry's files kept open between transactions on one mount: what a transaction no
longer opens, and the exclusion that must hold as before (the lock free between
transactions, held through each, taken on the file every host opens by name after a remount,
another tree of the filesystem mounted, or the lock file removed by hand). Another process
stands in for another host: fcntl locks exclude processes, not the threads of one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.testbed.mounts import umount_lazy
from tests.unit.test_registry import hold, let_go
from tests.unit.test_roundtrips import counting_mount

from volagent.errors import MountUnhealthy
from volagent.rack import registry, registry_claim
from volagent.rack.registry import Entry, RegistryError

NS = "r1-kept"


def claim(
    mp: Path, path: str, *, epoch: int | None, dev: int | None = -1, within_s: float = 5.0
) -> registry_claim.ClaimResult:
    return registry_claim.claim(
        str(mp),
        os.stat(mp).st_dev if dev == -1 else dev,
        NS,
        host="h1",
        wanted=[Entry("h1", "c1", "", f"{NS}/{path}", time.time())],
        expire_after_s=900.0,
        deadline=time.monotonic() + within_s,
        epoch=epoch,
    )


def lock_file(mp: Path) -> Path:
    return mp / ".volagent" / "registry" / f"{NS}.lock"


def free_for_another_process(lock: Path) -> bool:
    """Whether another process can take the lock now (it lets go at once)."""
    probe = (
        "import fcntl, os, sys\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR)\n"
        "try:\n"
        "    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    return subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


@pytest.fixture
def holder() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes holding a lock file (`hold`), let go at the end."""
    held: list[subprocess.Popen[str]] = []
    yield held
    let_go(held)


def test_a_second_claim_on_the_same_mount_opens_no_lock_file(mp: Path) -> None:
    claim(mp, "web/a", epoch=None)  # the registry file there already
    first = claim(mp, "web/b", epoch=1)
    second = claim(mp, "web/c", epoch=1)
    fresh = claim(mp, "web/d", epoch=None)
    # the first opened the lock file, read the entries and wrote them; the second only
    # read and wrote; a caller that names no epoch opens it each time, as before
    assert (first.counts.opens, second.counts.opens, fresh.counts.opens) == (3, 2, 3)
    assert first.written and second.written and fresh.written


def test_the_lock_is_free_for_another_host_between_transactions(mp: Path) -> None:
    claim(mp, "web/a", epoch=1)
    assert free_for_another_process(lock_file(mp))
    claim(mp, "web/a", epoch=1)  # held already: nothing written, the lock taken and let go
    assert free_for_another_process(lock_file(mp))


def test_the_lock_is_held_through_a_transaction_after_the_epoch_changed(
    mp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe that failed and a mount found healthy again: a new epoch on the same mount.
    The lock file kept from before is the same file: closing it would drop the lock the
    new transaction holds (a close aside is slow, as on a network filesystem)."""

    def slow_close(fd: int) -> None:  # the thread that closes aside
        time.sleep(0.2)
        os.close(fd)

    monkeypatch.setattr(registry, "_close_quietly", slow_close)
    dev = os.stat(mp).st_dev
    claim(mp, "web/a", epoch=1)
    with registry.locked(str(mp), dev, NS, time.monotonic() + 5, epoch=2):
        time.sleep(0.5)
        assert not free_for_another_process(lock_file(mp))
    assert free_for_another_process(lock_file(mp))


def test_a_lock_file_removed_by_hand_is_not_the_one_locked(
    mp: Path, holder: list[subprocess.Popen[str]]
) -> None:
    """The kept descriptor of a removed lock file guards nothing: another host opens the
    new one by its name, and holds it; the claim must wait for that one."""
    claim(mp, "web/a", epoch=1)
    lock_file(mp).unlink()
    hold(holder, lock_file(mp))
    with pytest.raises(RegistryError, match="stayed locked"):
        claim(mp, "web/b", epoch=1, within_s=0.3)


def test_another_tree_mounted_on_the_same_device_has_its_own_lock(
    tmp_path: Path, holder: list[subprocess.Popen[str]]
) -> None:
    """The mount point remounted onto another directory of the same filesystem (another
    export path): the same device, another registry, whose lock another host holds."""
    mp, other = tmp_path / "mp", tmp_path / "other"
    mp.mkdir()
    other.mkdir()
    claim(mp, "web/a", epoch=1)
    subprocess.run(["mount", "--bind", str(other), str(mp)], check=True)
    try:
        assert os.stat(mp).st_dev == os.stat(other).st_dev
        (mp / ".volagent" / "registry").mkdir(parents=True)
        hold(holder, lock_file(mp))
        with pytest.raises(RegistryError, match="stayed locked"):
            claim(mp, "web/b", epoch=2, within_s=0.3)
    finally:
        let_go(holder)
        umount_lazy(str(mp))
    assert not (other / ".volagent" / "registry" / f"{NS}.json").exists()


def test_a_claim_while_the_mount_is_unhealthy_is_refused_though_files_are_kept(
    mp: Path,
) -> None:
    claim(mp, "web/a", epoch=1)
    with pytest.raises(MountUnhealthy):
        claim(mp, "web/b", epoch=2, dev=None)
    with pytest.raises(MountUnhealthy):
        claim(mp, "web/b", epoch=1, dev=None)


def test_a_registry_set_aside_by_hand_is_not_the_one_used(
    mp: Path, holder: list[subprocess.Popen[str]]
) -> None:
    """The registry's directory renamed (set aside) and made again by another host: the kept
    descriptor is of the one set aside, which no host opens by name any more."""
    claim(mp, "web/a", epoch=1)
    registry_dir = mp / ".volagent" / "registry"
    registry_dir.rename(mp / ".volagent" / "registry.old")
    registry_dir.mkdir()
    hold(holder, lock_file(mp))
    with pytest.raises(RegistryError, match="stayed locked"):
        claim(mp, "web/b", epoch=1, within_s=0.3)
    let_go(holder)
    assert claim(mp, "web/b", epoch=1).written
    assert (registry_dir / f"{NS}.json").exists()


def test_a_lock_file_renamed_by_hand_is_not_the_one_locked(
    mp: Path, holder: list[subprocess.Popen[str]]
) -> None:
    """Renamed, the kept lock file still has a link: the name other hosts open is another
    file, which one of them holds."""
    claim(mp, "web/a", epoch=1)
    lock_file(mp).rename(lock_file(mp).with_name("set-aside"))
    hold(holder, lock_file(mp))
    with pytest.raises(RegistryError, match="stayed locked"):
        claim(mp, "web/b", epoch=1, within_s=0.3)


def test_a_registry_removed_and_made_again_serves_a_namespace_new_to_the_host(
    mp: Path,
) -> None:
    """The registry's directory removed by hand and made again by another host: the lock file
    of a namespace this host has not claimed yet is made in the new one, not refused for
    good (a removed directory takes no new file)."""
    claim(mp, "web/a", epoch=1)
    registry_dir = mp / ".volagent" / "registry"
    for f in registry_dir.iterdir():
        f.unlink()
    registry_dir.rmdir()
    registry_dir.mkdir()
    dev = os.stat(mp).st_dev
    with registry.locked(str(mp), dev, "r1-other", time.monotonic() + 5, epoch=1) as tx:
        tx.write([Entry("h1", "c1", "", "r1-other/web/a", time.time())])
    assert (registry_dir / "r1-other.json").exists()


@pytest.mark.mount
def test_a_lock_file_left_on_a_hung_mount_gone_does_not_hold_up_claims(tmp_path: Path) -> None:
    """The mount hung and was replaced by another (lazily unmounted: the kept files hold it):
    the lock files kept on it are let go as others are claimed, and closing a file there
    waits on a server that does not answer (the FUSE stand-in, stopped). Claims on the new
    mount must not wait on it; the namespace's later claims not find it busy forever."""
    with counting_mount(tmp_path) as (counted, server):
        mp = counted.mount_point
        try:
            with registry.locked(
                str(mp), os.stat(mp).st_dev, "r1-hung", time.monotonic() + 5, epoch=1
            ):
                pass
            umount_lazy(str(mp))
            server.send_signal(signal.SIGSTOP)
            dev = os.stat(mp).st_dev

            def claims() -> None:
                for i in range(registry.KEPT_LOCK_FILES + 1):
                    with registry.locked(str(mp), dev, f"r1-n{i}", time.monotonic() + 5, epoch=2):
                        pass
                with registry.locked(str(mp), dev, "r1-hung", time.monotonic() + 5, epoch=2):
                    pass

            worker = threading.Thread(target=claims, daemon=True)
            worker.start()
            worker.join(10)
            assert not worker.is_alive(), "a claim on the new mount waits on the hung one"
        finally:
            server.send_signal(signal.SIGCONT)  # the stand-in's end then unmounts and ends it
