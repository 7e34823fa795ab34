"""Mount type `local`: a real bind mount of local_path, adopted when already there, refused
when something else is mounted, kept when the manager stops, restored after an umount."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testbed.efs_standin import (
    Scratch,
    running_manager,
    scratch_area,
    sh,
)
from tests.testbed.waiting import eventually
from volagent.mount import child, find_mount

pytestmark = pytest.mark.mount


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Scratch]:
    with scratch_area(tmp_path) as s:
        yield s


def _same_dir(a: str, b: str) -> bool:
    sa, sb = os.stat(a), os.stat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


async def test_mounts_local_path_and_reports_local(scratch: Scratch) -> None:
    async with running_manager(scratch.config()) as r:
        await r.wait_state("local")
        st = r.state
        assert st.mount_dev == os.stat(scratch.local_path).st_dev
        assert st.mount.type == "local" and st.mount.source == scratch.local_path
        assert st.mount.error is None and st.mount.last_probe_ms is not None
        assert any("data is not shared" in w for w in st.warnings)
        assert len(r.healthy_calls) == 1
        assert _same_dir(scratch.mount_point, scratch.local_path)
        Path(scratch.mount_point, "hello").write_text("x")
        assert Path(scratch.local_path, "hello").read_text() == "x"
        assert st.metrics.registry.get_sample_value("volagent_probe_seconds_sum") > 0
    # stopping never unmounts: containers keep using the mount
    assert find_mount(scratch.mount_point) is not None
    # the directory underneath is immutable: nothing can land there if the mount goes
    await child.lazy_unmount(scratch.mount_point, 30)
    with pytest.raises(PermissionError) as info:
        Path(scratch.mount_point, "x").mkdir()
    assert info.value.errno == errno.EPERM


async def test_adopts_an_existing_bind_of_local_path(scratch: Scratch) -> None:
    os.makedirs(scratch.local_path)
    os.makedirs(scratch.mount_point)
    sh("mount", "--bind", scratch.local_path, scratch.mount_point)
    before = find_mount(scratch.mount_point)
    assert before is not None

    async with running_manager(scratch.config()) as r:
        await r.wait_state("local")
        after = find_mount(scratch.mount_point)
        assert after is not None and after.mount_id == before.mount_id
        assert r.state.metrics.registry.get_sample_value("volagent_remounts_total") == 0


async def test_foreign_filesystem_is_critical_and_never_mounted_over(scratch: Scratch) -> None:
    os.makedirs(scratch.mount_point)
    sh("mount", "-t", "tmpfs", "-o", "size=1m", "elsewhere", scratch.mount_point)

    async with running_manager(scratch.config()) as r:
        await r.until(lambda: r.state.mount.error, "an error in the status")
        assert r.state.mount.state == "unmounted"
        assert "never mounts on top" in (r.state.mount.error or "")
        assert r.state.verdict() == "critical" and r.state.mount_dev is None
        # still exactly one mount there, the foreign one
        entry = find_mount(scratch.mount_point)
        assert entry is not None and entry.fstype == "tmpfs"
        # the operator removes it: volagent mounts local_path by itself
        sh("umount", scratch.mount_point)
        await r.wait_state("local")
        assert _same_dir(scratch.mount_point, scratch.local_path)


async def test_external_umount_is_noticed_and_restored(scratch: Scratch) -> None:
    async with running_manager(scratch.config()) as r:
        await r.wait_state("local")
        first = find_mount(scratch.mount_point)
        assert first is not None
        sh("umount", scratch.mount_point)
        # it may be back before a poll here could see it gone: count the comebacks
        await eventually(lambda: len(r.healthy_calls) == 2, "local again")
        await r.wait_state("local")
        # mount ids are reused by the kernel: the counters tell it was mounted anew
        assert find_mount(scratch.mount_point) is not None
        assert len(r.healthy_calls) == 2
        assert r.state.metrics.registry.get_sample_value("volagent_remounts_total") == 1


async def test_requested_remount_mounts_again(scratch: Scratch) -> None:
    async with running_manager(scratch.config()) as r:
        await r.wait_state("local")
        r.manager.request_remount()
        await eventually(
            lambda: r.state.metrics.registry.get_sample_value("volagent_remounts_total") == 1,
            "a new mount",
        )
        await r.wait_state("local")
        assert len(r.healthy_calls) == 2
        # the old mount was detached, not stacked under the new one
        with open("/proc/self/mountinfo") as f:
            assert sum(f" {scratch.mount_point} " in line for line in f) == 1


async def test_a_probe_that_fails_without_a_dead_mount_keeps_it_and_says_so(
    scratch: Scratch,
) -> None:
    os.makedirs(scratch.local_path)
    Path(scratch.local_path, ".volagent").write_text("not a directory")

    async with running_manager(scratch.config()) as r:
        await r.until(lambda: r.state.mount.error, "a probe error")
        assert r.state.mount.state == "local" and r.state.mount_dev is not None
        assert "probe failed" in (r.state.mount.error or "")
        assert any("probe failed" in w for w in r.state.warnings)
        Path(scratch.local_path, ".volagent").unlink()
        await r.until(lambda: r.state.mount.error is None, "the error cleared")
        assert not any("probe failed" in w for w in r.state.warnings)


async def test_a_new_local_path_in_a_live_config_is_mounted_instead(scratch: Scratch) -> None:
    other = str(scratch.root / "other")

    async with running_manager(scratch.config()) as r:
        await r.wait_state("local")
        r.state.config = scratch.config({"local_path": other})
        await eventually(lambda: r.state.mount.source == other, "the new source")
        await r.wait_state("local")
        await eventually(lambda: _same_dir(scratch.mount_point, other), "the new directory mounted")
        with open("/proc/self/mountinfo") as f:
            assert sum(f" {scratch.mount_point} " in line for line in f) == 1


async def test_a_mount_point_given_as_a_symlink_is_mounted_at_its_target(scratch: Scratch) -> None:
    real = scratch.root / "real-volumes"
    real.mkdir()
    os.symlink(real, scratch.mount_point)

    async with running_manager(scratch.config()) as r:
        await r.wait_state("local")
        assert find_mount(str(real)) is not None
        assert _same_dir(scratch.mount_point, scratch.local_path)


async def test_an_unexpected_os_error_is_shown_and_retried(scratch: Scratch) -> None:
    blocker = scratch.root / "blocker"
    blocker.write_text("a file where a directory should be")
    mp = str(blocker / "volumes")

    async with running_manager(scratch.config(mount_point=mp)) as r:
        await r.until(
            lambda: "cannot prepare the mount point" in (r.state.mount.error or ""), "error"
        )
        assert r.state.mount.state == "mounting" and not r.task.done()
        blocker.unlink()
        await r.wait_state("local")
        assert _same_dir(mp, scratch.local_path)


async def test_a_dead_local_path_is_reported_and_retried_with_backoff(scratch: Scratch) -> None:
    # local_path is itself a FUSE mount, and its server dies under the bind.
    export = scratch.root / "export"
    export.mkdir()
    os.makedirs(scratch.local_path)
    server = subprocess.Popen(["bindfs", "-f", str(export), scratch.local_path])
    try:
        await eventually(lambda: find_mount(scratch.local_path), "bindfs at local_path")
        async with running_manager(scratch.config()) as r:
            await r.wait_state("local")
            server.kill()
            server.wait()
            await r.until(
                lambda: "not accessible" in (r.state.mount.error or ""),
                "the dead local_path named in the status",
            )
            assert "Transport endpoint is not connected" in str(r.state.mount.error)
            assert r.state.mount_dev is None
            await asyncio.sleep(2.0)
            # without backoff this would remount hundreds of times a second; with it, a
            # handful of times however slow or fast the machine is
            assert r.state.metrics.registry.get_sample_value("volagent_remounts_total") < 20
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        for _ in range(5):
            if find_mount(scratch.mount_point) is None:
                break
            await child.lazy_unmount(scratch.mount_point, 30)
        await child.lazy_unmount(scratch.local_path, 30)
