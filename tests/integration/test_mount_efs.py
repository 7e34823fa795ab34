"""EFS for real, against the stand-in: discovery through moto and the IMDSv2 emulator, the
exact mount argv, clear errors that keep retrying, and a watcher that notices an umount, a
hang (SIGSTOP of the stand-in's server) and a death (SIGKILL) by itself."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.testbed.aws import OTHER_ZONE, EfsWorld, Imds, NfsPorts, standin_resolver
from tests.testbed.efs_standin import Scratch, running_manager, scratch_area, sh
from tests.testbed.waiting import eventually
from volagent.config import DEFAULT_NFS_OPTIONS, Config
from volagent.mount import find_mount

pytestmark = pytest.mark.mount
TAG = "convox:rack=myrack"


@dataclass
class Bed:
    scratch: Scratch
    world: EfsWorld
    imds: Imds
    ports: NfsPorts

    def aws(self) -> dict[str, str]:
        return {"imds_endpoint": self.imds.url, "endpoint_url": self.world.url}

    def config(self, **mount: Any) -> Config:
        mount.setdefault("discover_tag", TAG)
        return self.scratch.shared_config(aws=self.aws(), **mount)

    def rack_fs(self, ip: str | None = None, zone: str | None = None) -> tuple[str, str]:
        """A filesystem tagged for the rack with a mount target; returns (id, DNS name)."""
        fs = self.world.file_system({"convox:rack": "myrack"})
        kw = {"zone": zone} if zone else {}
        self.world.mount_target(fs, ip or self.ports.open_ip, **kw)
        return fs, f"{fs}.efs.us-east-1.amazonaws.com"


@pytest.fixture
def bed(tmp_path: Path, efs_world: EfsWorld, imds: Imds, nfs_ports: NfsPorts) -> Iterator[Bed]:
    with scratch_area(tmp_path) as scratch:
        yield Bed(scratch, efs_world, imds, nfs_ports)


async def test_discovery_by_tag_mounts_the_dns_name_with_the_exact_options(bed: Bed) -> None:
    fs, dns = bed.rack_fs()
    export = bed.scratch.export(dns)
    mp = bed.scratch.mount_point

    resolve = standin_resolver({dns: bed.ports.open_ip})
    async with running_manager(bed.config(), resolve=resolve) as r:
        await r.wait_state("mounted")
        st = r.state
        assert st.mount.file_system_id == fs
        assert st.mount.source == f"{dns}:/" and st.mount.type == "nfs4"
        assert st.mount_dev == os.stat(mp).st_dev != os.stat(bed.scratch.root).st_dev
        assert st.mount.error is None and st.warnings == []
        Path(mp, "hello").write_text("shared")
        assert (export / "hello").read_text() == "shared"
    assert bed.scratch.mount_calls() == [
        [bed.scratch.mount_program, "-t", "nfs4", "-o", DEFAULT_NFS_OPTIONS, f"{dns}:/", mp]
    ]
    # IMDSv2: a token first, then every read with it
    first = bed.imds.requests[0]
    assert first[0] == "PUT" and first[2]["x-aws-ec2-metadata-token-ttl-seconds"].isdigit()
    assert all("x-aws-ec2-metadata-token" in h for m, _, h in bed.imds.requests if m == "GET")


async def test_unresolvable_dns_name_mounts_the_mount_target_ip(bed: Bed) -> None:
    bed.rack_fs()
    bed.scratch.export(bed.ports.open_ip)
    # an IMDS without the AZ ID: the zone name is mapped through DescribeAvailabilityZones
    del bed.imds.values["placement/availability-zone-id"]
    # and a flaky one: the first answers are errors, retried
    bed.imds.fail_next(2, 503)

    async with running_manager(bed.config(), resolve=standin_resolver({})) as r:
        await r.wait_state("mounted")
        assert r.state.mount.source == f"{bed.ports.open_ip}:/"
    [argv] = bed.scratch.mount_calls()
    assert argv[-2:] == [f"{bed.ports.open_ip}:/", bed.scratch.mount_point]


async def test_type_efs_asks_for_tls_and_the_mount_target_ip(bed: Bed) -> None:
    fs, _ = bed.rack_fs()
    bed.scratch.export(fs)

    cfg = bed.config(type="efs")
    async with running_manager(cfg, resolve=standin_resolver({})) as r:
        await r.wait_state("mounted")
    [argv] = bed.scratch.mount_calls()
    options = f"{DEFAULT_NFS_OPTIONS},tls,mounttargetip={bed.ports.open_ip}"
    assert argv[1:] == ["-t", "efs", "-o", options, f"{fs}:/", bed.scratch.mount_point]


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("no_mount_target_here", "no mount target of"),
        ("port_closed", "TCP port 2049"),
        ("no_filesystem", f"no EFS filesystem tagged {TAG}"),
        ("unknown_id", "not found"),
    ],
)
async def test_discovery_failures_are_clear_and_retried(
    bed: Bed, setup: str, expected: str
) -> None:
    mount: dict[str, Any] = {}
    if setup == "no_mount_target_here":
        bed.rack_fs(ip="127.0.3.5", zone=OTHER_ZONE)
    elif setup == "port_closed":
        bed.rack_fs(ip=bed.ports.closed_ip)
    elif setup == "unknown_id":
        mount = {"file_system_id": "fs-0badc0ffee", "discover_tag": ""}

    with capture_logs() as logs:
        async with running_manager(bed.config(**mount), resolve=standin_resolver({})) as r:
            failures = lambda: [e for e in logs if e["event"] == "mount.attempt_failed"]  # noqa: E731
            await eventually(lambda: len(failures()) >= 3, "three failed attempts")
            assert r.state.mount.state == "mounting"
            assert r.state.verdict() == "critical" and r.state.mount_dev is None
            error = r.state.mount.error or ""
            assert expected in error and "fix:" in error
            assert all(expected in e["error"] for e in failures())
            # nothing lands on local disk meanwhile
            assert "i" in sh("lsattr", "-d", bed.scratch.mount_point).stdout.split()[0]
    assert bed.scratch.mount_calls() == []


async def test_imds_down_at_boot_then_up_mounts(bed: Bed) -> None:
    _, dns = bed.rack_fs()
    bed.scratch.export(dns)
    bed.imds.down()

    resolve = standin_resolver({dns: bed.ports.open_ip})
    async with running_manager(bed.config(), resolve=resolve) as r:
        await r.until(lambda: "instance metadata" in (r.state.mount.error or ""), "an IMDS error")
        assert r.state.mount.state == "mounting"
        bed.imds.up()
        await r.wait_state("mounted")


async def test_without_fallback_missing_efs_is_critical_with_fallback_local(bed: Bed) -> None:
    cfg = bed.config(allow_local_fallback=True)
    async with running_manager(cfg, resolve=standin_resolver({})) as r:
        await r.wait_state("local")
        r.state.set_docker_state("connected")  # no engine here: only the mount counts
        assert r.state.verdict() == "degraded"
        assert any("data is not shared" in w for w in r.state.warnings)
        assert os.stat(bed.scratch.mount_point).st_ino == os.stat(bed.scratch.local_path).st_ino


def _mounted_bed(bed: Bed) -> tuple[Config, Any]:
    _, dns = bed.rack_fs()
    bed.scratch.export(dns)
    return bed.config(stalled_remount_after=1000), standin_resolver({dns: bed.ports.open_ip})


async def test_external_umount_comes_back_by_itself(bed: Bed) -> None:
    cfg, resolve = _mounted_bed(bed)

    async with running_manager(cfg, resolve=resolve) as r:
        await r.wait_state("mounted")
        sh("umount", bed.scratch.mount_point)
        await eventually(lambda: len(r.healthy_calls) == 2, "mounted again")
        assert r.state.metrics.registry.get_sample_value("volagent_remounts_total") == 1
    assert len(bed.scratch.mount_calls()) == 2


async def test_sigstop_is_stalled_and_sigcont_is_mounted(bed: Bed) -> None:
    cfg, resolve = _mounted_bed(bed)

    async with running_manager(cfg, resolve=resolve) as r:
        await r.wait_state("mounted")
        pid = bed.scratch.server_pid()
        assert pid is not None
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        os.kill(pid, signal.SIGSTOP)
        try:
            await r.wait_state("stalled")
            assert r.state.mount_dev is None and r.state.verdict() == "critical"
            assert "not answering" in (r.state.mount.error or "")
            # the loop keeps running while the probe hangs in its thread
            before = ticks
            await eventually(lambda: ticks > before + 20, "the event loop ticking")
            assert r.state.status_document()["mount"]["state"] == "stalled"
        finally:
            os.kill(pid, signal.SIGCONT)
        await r.wait_state("mounted")
        assert bed.scratch.server_pid() == pid  # the same mount came back
        t.cancel()


async def test_sigkill_is_remounted_without_help(bed: Bed) -> None:
    cfg, resolve = _mounted_bed(bed)

    with capture_logs() as logs:
        async with running_manager(cfg, resolve=resolve) as r:
            await r.wait_state("mounted")
            pid = bed.scratch.server_pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await eventually(lambda: len(r.healthy_calls) == 2, "mounted again")
            assert bed.scratch.server_pid() not in (None, pid)
    lost = [e for e in logs if e["event"] == "mount.lost"]
    assert lost and lost[0]["reason"] in ("dead", "gone")


async def test_a_mount_stalled_too_long_is_remounted(bed: Bed) -> None:
    cfg, resolve = _mounted_bed(bed)
    cfg = bed.config(stalled_remount_after=2)

    async with running_manager(cfg, resolve=resolve) as r:
        await r.wait_state("mounted")
        pid = bed.scratch.server_pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        await r.wait_state("stalled")
        await eventually(lambda: len(r.healthy_calls) == 2, "mounted anew")
        assert bed.scratch.server_pid() not in (None, pid)


async def test_restart_adopts_its_own_mount_without_discovery(bed: Bed) -> None:
    cfg, resolve = _mounted_bed(bed)

    async with running_manager(cfg, resolve=resolve) as r:
        await r.wait_state("mounted")
    bed.imds.down()
    async with running_manager(cfg, resolve=resolve) as r:
        await r.wait_state("mounted")
        assert r.state.metrics.registry.get_sample_value("volagent_remounts_total") == 0
    assert len(bed.scratch.mount_calls()) == 1


async def test_a_foreign_filesystem_is_refused(bed: Bed) -> None:
    cfg, resolve = _mounted_bed(bed)
    os.makedirs(bed.scratch.mount_point)
    sh("mount", "-t", "tmpfs", "-o", "size=1m", "otherhost:/", bed.scratch.mount_point)

    async with running_manager(cfg, resolve=resolve) as r:
        await r.until(lambda: r.state.mount.error, "an error")
        assert r.state.mount.state == "unmounted"
        assert "never mounts on top" in (r.state.mount.error or "")
    assert bed.scratch.mount_calls() == []
    entry = find_mount(bed.scratch.mount_point)
    assert entry is not None and entry.source == "otherhost:/"
