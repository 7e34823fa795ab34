"""Scenario 2, boot with the NFS server down: nothing is written to the machine's disk under
/volumes (not by Docker, not by a restart-policy container, not by anything); the container
stays down while the server is; once the server is back, volagent mounts it without an
operator, and the container starts by itself with its data."""

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
    wait_mount_state,
    wait_until,
)
from tests.vm.machine import Machine

pytestmark = pytest.mark.timeout(2400)


def test_boot_with_the_server_down_writes_nothing_locally(vm: Machine) -> None:
    run_container(vm, "web", "shop", "web", "/data", "--restart", "always")
    vm.sh("docker exec web sh -c 'echo kept > /data/marker'")
    vm.sh("systemctl disable nfs-server")  # down at the next boot
    vm.reboot()
    vm.set_clock()
    wait_until(
        "dockerd up",
        lambda: vm.sh("systemctl is-active docker", check=False).out.strip() == "active",
        timeout=600,
    )
    rc, doc = status(vm)
    print(f"after the boot: status {rc}, mount {doc.get('mount')}")
    assert rc == 2
    assert doc["mount"]["state"] in {"mounting", "unmounted"}
    assert doc["mount"]["error"]
    assert vm.sh("findmnt /volumes", check=False).rc != 0
    assert "i" in vm.sh("lsattr -d /volumes").out.split()[0]
    # dockerd starts the restart-policy container without asking the guard: its bind
    # source cannot be created on the immutable mount point, so it stays down
    state = inspect(vm, "web")["State"]
    print(f"the restart-always container: {state}")
    assert not state["Running"]
    denied = run_container(vm, "new", "shop", "web", "/data", check=False)
    print(f"a create meanwhile: rc {denied.rc}: {denied.err.strip()}")
    assert denied.rc != 0
    assert local_disk_under_mount_point(vm) == []
    assert_journal_priorities(vm)

    vm.sh("systemctl start nfs-server")
    started = time.monotonic()
    took = wait_mount_state(vm, "mounted", timeout=900)
    print(f"mounted {took:.1f}s after the server came back")
    assert vm.sh(f"cat {EXPORT}/{RACK}-shop/web/data/marker").out.strip() == "kept"
    assert local_disk_under_mount_point(vm) == []

    def running() -> bool:
        return bool(inspect(vm, "web")["State"]["Running"])

    # Docker gives up on a restart-policy start that failed at its own start; volagent
    # starts such containers once the mount is healthy
    wait_until("the restart-always container running again", running, timeout=240)
    print(f"container running {time.monotonic() - started:.1f}s after the server came back")
    assert vm.sh("docker exec web cat /data/marker").out.strip() == "kept"


def assert_journal_priorities(vm: Machine) -> None:
    """`journalctl -p warning -u volagent` shows volagent's warnings, and only those: each
    line's syslog priority came with it (its `<N>` prefix), not journald's default (info)."""
    out = vm.sh("journalctl -b -u volagent -p warning -o json --no-pager").out
    warnings = [json.loads(line) for line in out.splitlines()]
    logged = [json.loads(w["MESSAGE"]) for w in warnings if str(w["MESSAGE"]).startswith("{")]
    print(f"journalctl -p warning: {[(e['level'], e['event']) for e in logged][:5]}")
    assert logged, f"no warning of volagent's in journalctl -p warning:\n{out[-2000:]}"
    assert {e["level"] for e in logged} <= {"warning", "error", "critical"}
    everything = [
        json.loads(line)
        for line in vm.sh("journalctl -b -u volagent -o json --no-pager").out.splitlines()
    ]
    info = [e for e in everything if str(e["MESSAGE"]).startswith('{"') and e["PRIORITY"] == "6"]
    assert info, "volagent's info lines are kept at priority info"
