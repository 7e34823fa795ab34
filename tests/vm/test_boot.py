"""Scenario 1, boot: volagent is READY before dockerd starts, the NFS export is mounted at
/volumes, and a `--restart always` container with a volume comes back after a reboot with
its data, which lives on the NFS export and not on the machine's disk."""

from __future__ import annotations

import json
import time

import pytest

from tests.vm.helpers import (
    EXPORT,
    RACK,
    inspect,
    local_disk_under_mount_point,
    run_container,
    status,
    unit_monotonic,
    wait_until,
)
from tests.vm.machine import Machine

pytestmark = pytest.mark.timeout(1800)
MOUNT_EVENTS = ("mount.mounted", "mount.adopted")


def mounted_at_us(vm: Machine) -> int:
    """When volagent logged `mount.mounted` (or `mount.adopted`) in this boot, in µs."""
    out = vm.sh("journalctl -b -u volagent -o json --no-pager").out
    for line in out.splitlines():
        entry = json.loads(line)
        message = entry.get("MESSAGE", "")
        if isinstance(message, str) and (
            '"mount.mounted"' in message or '"mount.adopted"' in message
        ):
            return int(entry["__MONOTONIC_TIMESTAMP"])
    raise AssertionError(f"no mount.mounted in volagent's journal of this boot:\n{out[-3000:]}")


def assert_boot_order(vm: Machine) -> None:
    ready = unit_monotonic(vm, "volagent.service", "ActiveEnterTimestampMonotonic")
    dockerd = unit_monotonic(vm, "docker.service", "ExecMainStartTimestampMonotonic")
    mounted = mounted_at_us(vm)
    print(f"mounted {mounted / 1e6:.2f}s, READY {ready / 1e6:.2f}s, dockerd {dockerd / 1e6:.2f}s")
    assert 0 < mounted <= ready < dockerd


def test_ready_before_dockerd_with_nfs_mounted(vm: Machine) -> None:
    assert_boot_order(vm)
    fs = vm.sh("findmnt -n -o FSTYPE,SOURCE,OPTIONS /volumes").out.split()
    assert fs[:2] == ["nfs4", f"127.0.0.1:{EXPORT}"]
    for opt in ("vers=4.1", "hard", "timeo=600", "retrans=2", "noresvport"):
        assert opt in fs[2].split(",")
    rc, doc = status(vm)
    assert rc == 0, doc
    assert doc["mount"]["state"] == "mounted"
    assert doc["docker"]["state"] == "connected"
    assert doc["guard"]["enabled"] is True


def test_restart_always_container_comes_back_after_reboot(vm: Machine) -> None:
    run_container(vm, "web", "shop", "web", "/data", "--restart", "always")
    vm.sh("docker exec web sh -c 'echo before-reboot > /data/marker'")
    first_start = inspect(vm, "web")["State"]["StartedAt"]
    on_export = f"{EXPORT}/{RACK}-shop/web/data/marker"
    assert vm.sh(f"cat {on_export}").out.strip() == "before-reboot"

    started = time.monotonic()
    vm.reboot()
    print(f"reboot to the guest agent: {time.monotonic() - started:.1f}s")
    vm.set_clock()

    def running_again() -> bool:
        state = inspect(vm, "web")["State"]
        return bool(state["Running"]) and state["StartedAt"] != first_start

    wait_until("the container running again", running_again, timeout=600, interval=2)
    print(f"reboot to the container running: {time.monotonic() - started:.1f}s")
    assert_boot_order(vm)
    assert vm.sh("docker exec web cat /data/marker").out.strip() == "before-reboot"
    mounts = inspect(vm, "web")["Mounts"]
    assert [m["Source"] for m in mounts] == [f"/volumes/{RACK}-shop/web/data"]
    # the data is on the export, and nothing is on the machine's disk under /volumes
    assert vm.sh(f"cat {on_export}").out.strip() == "before-reboot"
    assert local_disk_under_mount_point(vm) == []
    assert vm.sh("findmnt -n -o FSTYPE /volumes").out.strip() == "nfs4"
