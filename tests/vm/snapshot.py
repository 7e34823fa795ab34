"""The booted state every scenario starts from: the image booted once to multi-user, the
busybox image imported into its Docker, volagent `ok`, then the whole machine saved (its
memory and devices in `state`, its disk writes in `base.qcow2`, an overlay on the image).

A scenario's machine resumes it in seconds on an overlay of its own over `base.qcow2`, so
the guest's memory and its disk agree, and nothing a scenario does reaches another. The
cache key covers the image, the QEMU version, its arguments and this file.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.vm.machine import Image, Machine, make_overlay, qemu_version

IMAGE_TAG = "volagent-test/busybox:latest"
BUSYBOX_TAR = "/usr/local/share/volagent-vm/busybox.tar"


@dataclass(frozen=True)
class Snapshot:
    image: Image
    directory: Path
    boot_seconds: float

    @property
    def disk(self) -> Path:
        return self.directory / "base.qcow2"

    @property
    def state(self) -> Path:
        return self.directory / "state"


def _key(image: Image) -> str:
    probe = Machine(image, Path("/W"), Path("/W/disk.qcow2"))
    h = hashlib.sha256()
    for part in (str(image.directory), qemu_version(), *probe.qemu_argv()):
        h.update(part.encode() + b"\0")
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def prepare(machine: Machine) -> None:
    """What the saved machine has done: booted, the test image imported, volagent ok."""
    machine.wait_agent(900)
    state = machine.sh("systemctl is-system-running --wait", timeout=900, check=False).out.strip()
    if state != "running":
        failed = machine.sh("systemctl --failed --no-legend", check=False).out
        raise RuntimeError(f"the machine booted {state!r}; failed units: {failed}")
    machine.sh(f"docker import {BUSYBOX_TAR} {IMAGE_TAG}", timeout=600)
    machine.sh(
        "for i in $(seq 120); do volagent status >/dev/null && exit 0; sleep 1; done;"
        " volagent status; exit 1",
        timeout=300,
    )
    machine.sh("sync")


def _prune(cache: Path) -> None:
    """Removes snapshots whose image is gone (build-vm-image keeps the newest three)."""
    for old in cache.glob("vm-snapshot-*"):
        image = old / "image"
        if old.is_dir() and (not image.exists() or not Path(image.read_text()).exists()):
            shutil.rmtree(old, ignore_errors=True)


def ensure(image: Image, cache: Path) -> Snapshot:
    """The cached snapshot of `image`, made now when there is none."""
    directory = cache / f"vm-snapshot-{_key(image)}"
    done = directory / ".complete"
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".vm-snapshot.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _prune(cache)
        if done.exists():
            return Snapshot(image, directory, float(done.read_text() or 0))
        work = Path(tempfile.mkdtemp(prefix="vm-snapshot.", dir=cache))
        try:
            make_overlay(image.disk, work / "base.qcow2")
            machine = Machine(image, work, work / "base.qcow2")
            started = time.monotonic()
            machine.start()
            try:
                prepare(machine)
                took = time.monotonic() - started
                machine.save_state(work / "state")
            except BaseException:
                print(machine.console_tail())
                raise
            finally:
                machine.quit()
            for name in ("qmp.sock", "qga.sock"):
                (work / name).unlink(missing_ok=True)
            (work / "image").write_text(str(image.directory))
            (work / ".complete").write_text(f"{took:.1f}")
            shutil.rmtree(directory, ignore_errors=True)
            work.rename(directory)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return Snapshot(image, directory, took)
