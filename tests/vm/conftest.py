"""Fixtures of the virtual machine test bed (`make test-vm`; plain `make test` ignores this
directory): the image built by scripts/build-vm-image (its directory in VOLAGENT_VM_IMAGE),
the booted snapshot made from it once and cached, and per test a machine resumed from that
snapshot on a disk overlay of its own, thrown away afterwards.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vm import snapshot
from tests.vm.helpers import resumed
from tests.vm.machine import QEMU, Image, Machine

CACHE = Path(os.environ.get("VOLAGENT_TEST_CACHE", "/var/cache/volagent-test"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="session")
def vm_image() -> Image:
    if os.geteuid() != 0:
        pytest.skip("the VM test bed needs root (qemu-img, the image cache)")
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is missing: make test-vm installs qemu-system-x86")
    path = os.environ.get("VOLAGENT_VM_IMAGE")
    if not path:
        pytest.skip("no VOLAGENT_VM_IMAGE: run `make test-vm` (it builds the image first)")
    return Image(Path(path))


@pytest.fixture(scope="session")
def vm_snapshot(vm_image: Image) -> snapshot.Snapshot:
    started = time.monotonic()
    snap = snapshot.ensure(vm_image, CACHE)
    print(f"\nvm snapshot {snap.directory} ready after {time.monotonic() - started:.1f}s")
    return snap


@pytest.fixture
def vm(vm_snapshot: snapshot.Snapshot) -> Iterator[Machine]:
    """A machine resumed from the snapshot: booted, volagent ok, Docker with the image."""
    with resumed(vm_snapshot) as machine:
        yield machine
