"""Privilege and host namespaces for app containers, against a real dockerd started with
`--authorization-plugin=volagent` and the guard on: no bind needed, a container of app `evil`
with the host's PID namespace, added capabilities, unconfined security options or a device
reaches other apps' data and the host. Each test is named by the attack it stops; the allow
path is an app listed in `[guard] privileged_apps` (a CI builder), and a container that
names no app, which is not volagent's business.

`--privileged` and the unconfined variants cannot start on this machine's kernel, so their
refusal is tested on `docker create`: the guard refuses the create itself.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import pytest

from tests.integration.test_guard_attacks_routes import IMAGE, body_of, create_raw, leaked
from tests.testbed import Containers, app_labels
from tests.testbed.guarded import Guarded, denied, still_serving

pytestmark = [pytest.mark.docker, pytest.mark.mount]

OWNER = "33:33"
EVIL = {**app_labels("evil", "web", owner=OWNER), "volagent.test": "1"}
OTHER = {**app_labels("other", "web", owner=OWNER), "volagent.test": "1"}
CI = {**app_labels("ci", "build", owner=OWNER), "volagent.test": "1"}
KEY = "[guard] privileged_apps"


def create(ctr: Containers, labels: dict[str, str], command: list[str], **host: Any) -> str:
    """`docker create` of an app container with the HostConfig settings given."""
    host_config = ctr.api.create_host_config(network_mode=host.pop("network_mode", "none"), **host)
    created = ctr.api.create_container(
        IMAGE, command=command, labels=labels, host_config=host_config
    )
    return str(created["Id"])


def refused_create(ctr: Containers, setting: str, **host: Any) -> str:
    """The guard's refusal of an evil create with `host`; it names the setting and the key."""
    with pytest.raises(docker.errors.APIError) as excinfo:
        create(ctr, EVIL, ["true"], **host)
    text = denied(excinfo)
    assert setting in text and KEY in text, text
    return text


@pytest.fixture
def victim_running(bed: Guarded, ctr: Containers, victim: str) -> Iterator[str]:
    """App other's container, running, its directory (with the secret) bound at /data."""
    cid = ctr.run([f"{victim}:/data"], labels=OTHER, command=["sleep", "300"])
    yield cid
    ctr.remove(cid)


# --- host namespaces --------------------------------------------------------------------------
def test_pid_host_app_container_reads_another_apps_secret_through_proc_root(
    bed: Guarded, ctr: Containers, victim_running: str
) -> None:
    # with the host's PID namespace and default capabilities, /proc/<pid>/root of the
    # victim's process is the victim's root, its bind included
    steal = ["sh", "-c", "cat /proc/*/root/data/secret 2>/dev/null; true"]
    try:
        cid = create(ctr, EVIL, steal, pid_mode="host")
    except docker.errors.APIError as exc:
        text = str(exc)
        assert "authorization denied by plugin volagent" in text and "PidMode=host" in text
        assert KEY in text
        return
    ctr.start(cid)
    assert not leaked(ctr, cid), "an app container read another app's secret through /proc"
    pytest.fail("a --pid=host create of an app container was allowed")


def test_ipc_host_app_container(bed: Guarded, ctr: Containers) -> None:
    refused_create(ctr, "IpcMode=host", ipc_mode="host")


def test_userns_host_app_container(bed: Guarded, ctr: Containers) -> None:
    refused_create(ctr, "UsernsMode=host", userns_mode="host")


def test_pid_namespace_of_another_apps_container_by_name(
    bed: Guarded, ctr: Containers, victim_running: str
) -> None:
    name = ctr.api.inspect_container(victim_running)["Name"].lstrip("/")
    refused_create(ctr, "PidMode=container:", pid_mode=f"container:{name}")
    refused_create(ctr, "a container of another app", pid_mode=f"container:{victim_running}")


def test_cgroupns_host_in_a_raw_create(bed: Guarded, ctr: Containers) -> None:
    status, answer = create_raw(bed, body_of({"CgroupnsMode": "host"}, Cmd=["true"]))
    assert status >= 400 and b"CgroupnsMode=host" in answer, answer


# --- capabilities and confinement -------------------------------------------------------------
def test_cap_add_sys_admin_with_apparmor_and_seccomp_unconfined_mounts_filesystems(
    bed: Guarded, ctr: Containers
) -> None:
    text = refused_create(
        ctr,
        "CapAdd SYS_ADMIN",
        cap_add=["SYS_ADMIN"],
        security_opt=["apparmor=unconfined", "seccomp=unconfined"],
    )
    assert "apparmor=unconfined" in text and "seccomp=unconfined" in text


def test_privileged_app_container(bed: Guarded, ctr: Containers) -> None:
    refused_create(ctr, "Privileged", privileged=True)


@pytest.mark.parametrize(
    "caps", [["ALL"], ["all"], ["cap_sys_ptrace"], ["DAC_READ_SEARCH"], ["Sys_Module"]]
)
def test_cap_add_beyond_dockers_default_set(bed: Guarded, ctr: Containers, caps: list[str]) -> None:
    refused_create(ctr, "CapAdd", cap_add=caps)


def test_cap_add_as_one_string_in_a_raw_create(bed: Guarded, ctr: Containers) -> None:
    # HostConfig.CapAdd is a StrSlice: a lone string is one capability to Docker
    status, answer = create_raw(bed, body_of({"capadd": "SYS_ADMIN"}, Cmd=["true"]))
    assert status >= 400 and b"CapAdd SYS_ADMIN" in answer, answer


def test_host_device_in_an_app_container(bed: Guarded, ctr: Containers) -> None:
    refused_create(ctr, "Devices", devices=["/dev/null:/dev/hostdisk:rwm"])
    refused_create(ctr, "DeviceCgroupRules", device_cgroup_rules=["b *:* rwm"])


@pytest.mark.parametrize(
    "opt", ["seccomp:unconfined", "label=disable", "label:disable", "apparmor:unconfined"]
)
def test_unconfined_security_options_in_other_spellings(
    bed: Guarded, ctr: Containers, opt: str
) -> None:
    refused_create(ctr, opt, security_opt=[opt])


def test_systempaths_unconfined_opens_proc_and_sys(bed: Guarded, ctr: Containers) -> None:
    # what `--security-opt systempaths=unconfined` sends: empty lists replace Docker's own
    status, answer = create_raw(
        bed, body_of({"MaskedPaths": [], "ReadonlyPaths": []}, Cmd=["true"])
    )
    assert status >= 400 and b"MaskedPaths without" in answer, answer


@pytest.mark.parametrize(
    ("sysctls", "network"),
    [
        ({"kernel.core_pattern": "|/tmp/x"}, "none"),
        ({"kernel/modprobe": "/tmp/x"}, "none"),
        ({"net.ipv4.ip_forward": "1"}, "host"),
    ],
)
def test_sysctls_outside_the_containers_own_namespaces(
    bed: Guarded, ctr: Containers, sysctls: dict[str, str], network: str
) -> None:
    refused_create(ctr, "Sysctls", sysctls=sysctls, network_mode=network)


def test_exec_privileged_into_an_app_container(bed: Guarded, ctr: Containers) -> None:
    cid = ctr.run([], labels=EVIL, command=["sleep", "300"])
    with pytest.raises(docker.errors.APIError) as excinfo:
        ctr.api.exec_create(cid, ["true"], privileged=True)
    text = denied(excinfo)
    assert "docker exec --privileged" in text and KEY in text, text
    ctr.api.exec_start(ctr.api.exec_create(cid, ["true"])["Id"])  # a plain exec still works


# --- what stays allowed -----------------------------------------------------------------------
def test_namespaced_settings_and_docker_defaults_stay_allowed(
    bed: Guarded, ctr: Containers
) -> None:
    cid = create(
        ctr,
        EVIL,
        ["true"],
        cap_add=["NET_BIND_SERVICE", "CAP_CHOWN"],
        cap_drop=["NET_RAW"],
        security_opt=["no-new-privileges"],
        sysctls={"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shmmax": "65536"},
        ipc_mode="shareable",
    )
    ctr.start(cid)
    assert ctr.wait(cid) == 0


def test_a_container_that_names_no_app_is_not_volagents_business(
    bed: Guarded, ctr: Containers
) -> None:
    cid = create(ctr, {"volagent.test": "1"}, ["true"], pid_mode="host", cap_add=["SYS_PTRACE"])
    ctr.remove(cid)


def test_an_app_in_privileged_apps_may_and_is_logged(bed: Guarded, ctr: Containers) -> None:
    agent = bed.start_agent(config={"guard": {"privileged_apps": ["ci"]}})
    # the host's processes are there to see
    cid = create(ctr, CI, ["sh", "-c", "test $(ls -d /proc/[0-9]* | wc -l) -gt 5"], pid_mode="host")
    ctr.start(cid)
    assert ctr.wait(cid) == 0, ctr.logs(cid)
    exec_id = ctr.api.exec_create(ctr.run([], labels=CI), ["true"], privileged=True)["Id"]
    ctr.api.exec_start(exec_id)
    logged = [e for e in agent.log_events() if e.get("event") == "guard_privileged"]
    assert {e.get("action") for e in logged} >= {"create", "start", "exec"}, logged
    assert all(e.get("apps") == ["ci"] for e in logged), logged
    assert any("PidMode=host" in json.dumps(e.get("uses")) for e in logged), logged
    # another app on the same host still may not
    refused_create(ctr, "PidMode=host", pid_mode="host")


def test_guard_still_answers_after_the_privilege_attacks(bed: Guarded, ctr: Containers) -> None:
    with contextlib.suppress(docker.errors.APIError):
        create(ctr, EVIL, ["true"], privileged=True)
    still_serving(bed, ctr, OWNER)
