"""What scenarios ask of the guest: volagent's status, containers, the mount, waiting."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from typing import Any

from tests.vm.machine import Machine, Result
from tests.vm.snapshot import IMAGE_TAG

RACK = "vmrack"
EXPORT = "/export"
ROOT_VIEW = "/mnt/rootfs"  # / bind-mounted again: /volumes there is the local disk beneath


def status(vm: Machine, timeout: float = 30) -> tuple[int, dict[str, Any]]:
    """`volagent status --json`: its exit code and the document (empty when unreachable)."""
    r = vm.sh("volagent status --json", timeout=timeout, check=False)
    try:
        doc = json.loads(r.out)
    except ValueError:
        doc = {}
    return r.rc, doc


def mount_state(vm: Machine) -> str:
    return str(status(vm)[1].get("mount", {}).get("state", "unreachable"))


def wait_until(
    what: str, probe: Callable[[], Any], timeout: float = 300, interval: float = 1
) -> Any:
    """Calls `probe` until it returns something true; the timeout only bounds a hang."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:g}s (last: {last!r})")


def wait_mount_state(vm: Machine, want: str, timeout: float = 300) -> float:
    """Waits for the mount state `want`; returns the seconds it took."""
    started = time.monotonic()
    wait_until(f"mount state {want}", lambda: mount_state(vm) == want, timeout)
    return time.monotonic() - started


def run_container(
    vm: Machine,
    name: str,
    app: str,
    service: str,
    volume: str,
    *extra: str,
    command: str = "sleep 1000000",
    check: bool = True,
) -> Result:
    """`docker run -d` of the busybox image with one volume under the app's namespace."""
    host = f"/volumes/{RACK}-{app}/{service}{volume}"
    argv = [
        "docker", "run", "-d", "--name", name, "--network", "none",
        "--label", f"convox.app={app}", "--label", f"convox.service={service}",
        "-v", f"{host}:{volume}", *extra, IMAGE_TAG, "sh", "-c", command,
    ]  # fmt: skip
    return vm.sh(shlex.join(argv), timeout=600, check=check)


def inspect(vm: Machine, name: str) -> dict[str, Any]:
    r = vm.sh(f"docker inspect {shlex.quote(name)}", timeout=120)
    found: list[dict[str, Any]] = json.loads(r.out)
    return found[0]


def unit_monotonic(vm: Machine, unit: str, prop: str) -> int:
    """A systemd timestamp property of `unit`, in microseconds since boot."""
    out = vm.sh(f"systemctl show -P {prop} {shlex.quote(unit)}").out.strip()
    return int(out)


def local_disk_under_mount_point(vm: Machine) -> list[str]:
    """What lies in /volumes on the machine's own disk, beneath whatever is mounted there.

    A fresh, private bind of / each time: / is a shared mount (systemd), so a bind kept
    from earlier would receive a later mount of /volumes by propagation."""
    out = vm.sh(
        f"mkdir -p {ROOT_VIEW} && mount --bind --make-private / {ROOT_VIEW} &&"
        f" ls -A {ROOT_VIEW}/volumes; rc=$?; umount {ROOT_VIEW}; exit $rc"
    ).out
    return out.split()
