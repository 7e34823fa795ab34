"""Scenario 6, the isolation attacks that involve restarts, under systemd: a restart-policy
container whose bind source was swapped for a symlink into another app's namespace while it
ran. Docker follows the link when it starts the container again, after a dockerd restart or
a reboot, without asking the guard; volagent finds the wrong mount at the start, stops the
container, drops its restart policy and reports the volume as a violation."""

from __future__ import annotations

import time

import pytest

from tests.vm.helpers import RACK, inspect, run_container, status, wait_until
from tests.vm.machine import Machine

pytestmark = pytest.mark.timeout(1800)

VICTIM = f"/volumes/{RACK}-shop/web/data"
MINE = f"/volumes/{RACK}-evil/web/data"


def evil_volume(vm: Machine) -> dict[str, object] | None:
    doc = status(vm)[1]
    for c in doc.get("containers", []):
        if c.get("name", "").lstrip("/") == "evil" and c.get("volumes"):
            return dict(c["volumes"][0])
    return None


@pytest.mark.parametrize("restart", ["dockerd", "reboot"])
def test_symlink_swap_before_a_restart(vm: Machine, restart: str) -> None:
    run_container(vm, "victim", "shop", "web", "/data")
    vm.sh("docker exec victim sh -c 'echo secret > /data/secret'")
    run_container(vm, "evil", "evil", "web", "/data", "--restart", "always")
    wait_until("evil's volume ready", lambda: (v := evil_volume(vm)) and v["state"] == "ready")
    # the swap: the attacker's directory becomes a link into the victim's namespace (done
    # here as root; in the rack, from a container of another host that binds its parent)
    vm.sh(f"mv {MINE} {MINE}.moved && ln -s {VICTIM} {MINE}")

    started = time.monotonic()
    if restart == "reboot":
        vm.reboot()
        vm.set_clock()
    else:
        vm.sh("systemctl restart docker", timeout=600)

    def stopped() -> bool:
        info = inspect(vm, "evil")
        policy = info["HostConfig"]["RestartPolicy"]["Name"]
        warned = any("did not prepare" in w for w in status(vm)[1].get("warnings", []))
        return not info["State"]["Running"] and policy in ("no", "") and warned

    try:
        wait_until("the swapped mount found and the container stopped", stopped, timeout=600)
    finally:
        print(f"{restart}: evil {inspect(vm, 'evil')['State']}, volume {evil_volume(vm)}")
    print(f"{restart}: stopped {time.monotonic() - started:.1f}s after the restart began")
    # the victim's data is untouched
    assert vm.sh(f"cat {VICTIM}/secret").out.strip() == "secret"
    assert vm.sh(f"ls -A {VICTIM}").out.split() == ["secret"]
    # and the status says so: the volume is a violation, volagent degraded
    wait_until(
        "evil's volume reported as a violation",
        lambda: (v := evil_volume(vm)) is not None and v["state"] == "violation",
        timeout=60,
    )
    rc, doc = status(vm)
    assert rc == 1, doc
    assert doc["status"] == "degraded"
