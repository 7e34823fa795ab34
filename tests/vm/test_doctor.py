"""Scenario 5, `volagent doctor` on a real host: it passes here, and fails with the right fix
when port 2049 is blocked or the NFS client package is removed. (The mount argv of type nfs
mounting for real is scenario 1; types nfs4 and auto are test_mount_types.)"""

from __future__ import annotations

import pytest

from tests.vm.machine import Machine, Result

pytestmark = pytest.mark.timeout(1200)


def doctor(vm: Machine) -> Result:
    r = vm.sh("volagent doctor", check=False, timeout=300)
    print(f"volagent doctor: exit {r.rc}\n{r.out}{r.err}")
    return r


def lines_with(result: Result, word: str) -> list[str]:
    return [line for line in result.out.splitlines() if word in line]


def test_doctor_passes_then_names_each_fix(vm: Machine) -> None:
    healthy = doctor(vm)
    assert healthy.rc == 0
    assert lines_with(healthy, "FAIL") == []

    vm.sh("iptables -I INPUT -p tcp --dport 2049 -j DROP")
    blocked = doctor(vm)
    assert blocked.rc == 1
    failing = lines_with(blocked, "FAIL")
    assert failing, blocked.out
    assert "2049" in blocked.out
    vm.sh("iptables -D INPUT -p tcp --dport 2049 -j DROP")
    assert doctor(vm).rc == 0

    # the client package gone (the server keeps running in the kernel)
    vm.sh("dpkg --remove --force-depends nfs-common >/dev/null 2>&1")
    no_client = doctor(vm)
    assert no_client.rc == 1
    assert any("nfs" in line for line in lines_with(no_client, "FAIL")), no_client.out
    assert "apt-get install" in no_client.out
    assert "nfs-common" in no_client.out
