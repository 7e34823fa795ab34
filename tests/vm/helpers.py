"""What scenarios ask of the guest: volagent's status, containers, the mount, waiting."""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.vm.machine import Machine, Result, make_overlay
from tests.vm.snapshot import IMAGE_TAG, Snapshot

RACK = "vmrack"
EXPORT = "/export"
ROOT_VIEW = "/mnt/rootfs"  # / bind-mounted again: /volumes there is the local disk beneath


@contextlib.contextmanager
def resumed(snap: Snapshot, console: bool = True) -> Iterator[Machine]:
    """A machine resumed from the snapshot on a disk overlay of its own, thrown away after."""
    workdir = Path(tempfile.mkdtemp(prefix="vm-", dir="/tmp"))  # short socket paths
    try:
        make_overlay(snap.disk, workdir / "disk.qcow2")
        machine = Machine(snap.image, workdir, workdir / "disk.qcow2")
        started = time.monotonic()
        machine.start(incoming=snap.state)
        try:
            machine.wait_agent(120)
            machine.set_clock()
            print(f"\nvm resumed in {time.monotonic() - started:.1f}s")
            yield machine
        finally:
            if console:  # pytest shows it only when the test failed
                print(f"console of the machine:\n{machine.console_tail()}")
            machine.quit()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


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
