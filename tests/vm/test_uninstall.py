"""Uninstalling from a running host with the guard on (`/opt/volagent/provision.sh
--uninstall`): Docker keeps answering at once (the plugin leaves daemon.json and dockerd
re-reads it before the guard's socket goes), the running container and its data stay, the
units and the command are gone, the config stays."""

from __future__ import annotations

import pytest

from tests.vm.helpers import EXPORT, RACK, inspect, run_container
from tests.vm.machine import Machine
from tests.vm.snapshot import IMAGE_TAG

pytestmark = pytest.mark.timeout(1800)
UNITS = ("volagent.service", "volagent-api.socket", "volagent-guard.socket")


def test_uninstall_keeps_docker_answering_and_the_data(vm: Machine) -> None:
    run_container(vm, "web", "shop", "web", "/data")
    vm.sh("docker exec web sh -c 'echo kept > /data/marker'")

    out = vm.sh("/opt/volagent/provision.sh --uninstall")
    print(out.err[-400:])

    # Docker without the plugin: every call answers, a new container starts
    assert "volagent" not in vm.sh("cat /etc/docker/daemon.json").out
    vm.sh(f"docker run --rm --network none {IMAGE_TAG} true", timeout=120)
    assert inspect(vm, "web")["State"]["Running"]
    assert vm.sh(f"cat {EXPORT}/{RACK}-shop/web/data/marker").out.strip() == "kept"

    states = vm.sh("systemctl is-active " + " ".join(UNITS), check=False).out.split()
    assert "active" not in states, states
    for path in (
        "/opt/volagent",
        "/usr/bin/volagent",
        *(f"/etc/systemd/system/{u}" for u in UNITS),
    ):
        assert vm.sh(f"test -e {path} || test -L {path}", check=False).rc != 0, path
    assert vm.sh("command -v volagent", check=False).rc != 0
    vm.sh("test -s /etc/volagent/volagent.toml")
