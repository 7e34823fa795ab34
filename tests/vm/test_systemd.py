"""Scenario 4, systemd: Type=notify READY and STATUS as `systemctl` shows them; the watchdog
restarts an agent that stops answering (SIGSTOP), while a `docker run` made meanwhile waits
in the guard socket's backlog and succeeds; `systemctl stop volagent` leaves the mount and
the running containers alone; `systemctl reload` applies a config change."""

from __future__ import annotations

import time

import pytest

from tests.vm.helpers import EXPORT, RACK, inspect, run_container, status, wait_until
from tests.vm.machine import Machine

pytestmark = pytest.mark.timeout(1800)


def show(vm: Machine, unit: str, *props: str) -> dict[str, str]:
    out = vm.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).out
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_notify_ready_and_status(vm: Machine) -> None:
    props = show(vm, "volagent.service", "Type", "ActiveState", "SubState", "StatusText")
    props |= show(vm, "volagent.service", "WatchdogUSec", "NotifyAccess")
    print(props)
    assert props["Type"] == "notify"
    assert (props["ActiveState"], props["SubState"]) == ("active", "running")
    assert props["WatchdogUSec"] == "30s"
    assert props["StatusText"].startswith("mount mounted, docker connected")


def test_watchdog_restarts_a_stopped_agent_and_docker_calls_wait(vm: Machine) -> None:
    before = show(vm, "volagent.service", "MainPID", "NRestarts")
    vm.sh(f"kill -STOP {before['MainPID']}")
    stopped = time.monotonic()
    # a guarded create made while the agent is stopped: it waits in the socket's backlog
    vm.sh(
        "setsid sh -c 'docker run -d --name during --network none "
        "--label convox.app=shop --label convox.service=api "
        f"-v /volumes/{RACK}-shop/api/data:/data volagent-test/busybox:latest sleep 1000000"
        " >/tmp/during.out 2>&1; echo $? >/tmp/during.rc' </dev/null >/dev/null 2>&1 &"
    )

    def restarted() -> dict[str, str] | None:
        now = show(vm, "volagent.service", "MainPID", "NRestarts", "ActiveState")
        fresh = now["MainPID"] not in {before["MainPID"], "0"}
        return now if fresh and now["ActiveState"] == "active" else None

    after = wait_until("a new volagent process", restarted, timeout=600, interval=2)
    print(f"SIGSTOP to a new active volagent: {time.monotonic() - stopped:.1f}s")
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    journal = vm.sh("journalctl -u volagent --no-pager -n 200").out
    assert "Watchdog timeout" in journal, journal[-2000:]
    wait_until(
        "the docker run made meanwhile",
        lambda: vm.sh("cat /tmp/during.rc", check=False).rc == 0,
        timeout=600,
    )
    print(f"SIGSTOP to the waiting docker run done: {time.monotonic() - stopped:.1f}s")
    rc = vm.sh("cat /tmp/during.rc").out.strip()
    assert rc == "0", vm.sh("cat /tmp/during.out").out
    assert inspect(vm, "during")["State"]["Running"]
    assert vm.sh(f"test -d {EXPORT}/{RACK}-shop/api/data", check=False).rc == 0


def test_stop_leaves_mount_and_containers_alone(vm: Machine) -> None:
    run_container(vm, "web", "shop", "web", "/data")
    pid = inspect(vm, "web")["State"]["Pid"]
    vm.sh("systemctl stop volagent")
    assert vm.sh("systemctl is-active volagent", check=False).out.strip() == "inactive"
    assert vm.sh("findmnt -n -o FSTYPE /volumes").out.strip() == "nfs4"
    assert vm.sh(f"kill -0 {pid}", check=False).rc == 0
    vm.sh("touch /volumes/.still-writable && rm /volumes/.still-writable")
    # the sockets stay: a Docker call (through the guard socket) starts the agent again
    vm.sh("docker ps -q", timeout=300)
    wait_until(
        "volagent started by its socket",
        lambda: vm.sh("systemctl is-active volagent", check=False).out.strip() == "active",
        timeout=300,
    )
    assert vm.sh(f"kill -0 {pid}", check=False).rc == 0
    assert status(vm)[0] == 0


def test_reload_applies_a_config_change(vm: Machine) -> None:
    vm.sh(
        "sed -i 's/^\\[guard\\]/[directories]\\nmode = \"0750\"\\n\\n[guard]/'"
        " /etc/volagent/volagent.toml && volagent check-config >/dev/null"
    )
    vm.sh("systemctl reload volagent")
    run_container(vm, "reloaded", "blog", "web", "/data")
    mode = vm.sh(f"stat -c %a {EXPORT}/{RACK}-blog/web/data").out.strip()
    assert mode == "750"
    assert vm.sh("systemctl show -P NRestarts volagent").out.strip() == "0"
