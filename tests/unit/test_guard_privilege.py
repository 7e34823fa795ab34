"""The privilege policy for app containers (guard/privilege.py), the Go-style reading of its
HostConfig fields (guard/protocol.py), the routes the guard judges, and the guard's verdicts
in-process; the real engine's side is tests/integration/test_guard_attacks_privilege.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.unit.factories import make_state
from tests.unit.guard_requests import ask, decision, plugin_body

from volagent.guard import privilege
from volagent.guard.plugin import Guard
from volagent.guard.protocol import CreateBodyError, body_announced, parse_create_body, route
from volagent.volumes.preparer import Preparer
from volagent.worker import TimedWorker

APP = {"convox.app": "a", "convox.service": "web"}
FULL_ID = "ab" * 32


def refused(host_config: dict[str, Any], apps: frozenset[str] = frozenset({"a"})) -> list[str]:
    body = json.dumps({"Image": "x", "HostConfig": host_config}).encode()
    return parse_create_body(body).privileges.refused({}, apps)


# --- the policy -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("host_config", "fragment"),
    [
        ({"Privileged": True}, "Privileged"),
        ({"PidMode": "host"}, "PidMode=host"),
        ({"IpcMode": "host"}, "IpcMode=host"),
        ({"UsernsMode": "host"}, "UsernsMode=host"),
        ({"CgroupnsMode": "host"}, "CgroupnsMode=host"),
        ({"PidMode": "container:web-1"}, "not a full container id"),
        ({"CapAdd": ["SYS_ADMIN"]}, "CapAdd SYS_ADMIN"),
        ({"CapAdd": "cap_sys_ptrace"}, "CapAdd SYS_PTRACE"),  # a StrSlice may be one string
        ({"CapAdd": ["all"]}, "CapAdd ALL"),
        ({"CapAdd": ["\u017fys_admin"]}, "CapAdd SYS_ADMIN"),  # Go upper-cases U+017F to S
        ({"CapAdd": ["DAC_READ_SEARCH"]}, "DAC_READ_SEARCH"),
        ({"Devices": [{"PathOnHost": "/dev/sda"}]}, "Devices"),
        ({"DeviceRequests": [{"Count": -1}]}, "DeviceRequests"),
        ({"DeviceCgroupRules": ["b *:* rwm"]}, "DeviceCgroupRules"),
        ({"SecurityOpt": ["seccomp=unconfined"]}, "seccomp=unconfined"),
        ({"SecurityOpt": ["seccomp:unconfined"]}, "seccomp:unconfined"),
        ({"SecurityOpt": ['seccomp={"defaultAction":"SCMP_ACT_ALLOW"}']}, "seccomp"),
        ({"SecurityOpt": ["apparmor=unconfined"]}, "apparmor=unconfined"),
        ({"SecurityOpt": ["apparmor:unconfined"]}, "apparmor:unconfined"),
        ({"SecurityOpt": ["label=disable"]}, "label=disable"),
        ({"SecurityOpt": ["label:disable"]}, "label:disable"),
        ({"SecurityOpt": ["disable"]}, "disable"),
        ({"SecurityOpt": ["label=type:spc_t"]}, "spc_t"),
        ({"Sysctls": {"kernel.core_pattern": "|/x"}}, "kernel.core_pattern"),
        ({"Sysctls": {"kernel/core_pattern": "|/x"}}, "kernel/core_pattern"),
        ({"Sysctls": {"net.ipv4.ip_forward": "1"}, "NetworkMode": "host"}, "net.ipv4"),
        ({"Sysctls": {"kernel.shmmax": "1"}, "IpcMode": "host"}, "kernel.shmmax"),
        ({"MaskedPaths": [], "ReadonlyPaths": []}, "MaskedPaths without"),
        ({"ReadonlyPaths": ["/proc/bus"]}, "ReadonlyPaths without /proc/fs"),
        ({"privileged": True}, "Privileged"),  # Go matches keys case-insensitively
    ],
)
def test_each_privilege_is_refused_by_name(host_config: dict[str, Any], fragment: str) -> None:
    found = refused(host_config)
    assert any(fragment in f for f in found), found


@pytest.mark.parametrize(
    "host_config",
    [
        {},
        {"Privileged": False, "PidMode": "", "IpcMode": "shareable", "CgroupnsMode": "private"},
        {"CapAdd": ["NET_BIND_SERVICE", "cap_chown"], "CapDrop": ["ALL"]},
        {
            "SecurityOpt": [
                "no-new-privileges",
                "no-new-privileges=false",
                "apparmor=docker-default",
            ]
        },
        {"SecurityOpt": ["seccomp=builtin"]},
        {"Sysctls": {"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shmmax": "1"}},
        {"Sysctls": {"fs.mqueue.msg_max": "20", "net/ipv4/ping_group_range": "0 1"}},
        {"Devices": [], "DeviceRequests": None, "MaskedPaths": None},
        {"MaskedPaths": [*privilege.DEFAULT_MASKED_PATHS, "/proc/extra"]},
        {"NetworkMode": "host", "UTSMode": "host"},  # not privilege (see docs/GUARD-ROUTES.md)
    ],
)
def test_docker_defaults_and_namespaced_settings_pass(host_config: dict[str, Any]) -> None:
    assert refused(host_config) == []


def test_joining_a_namespace_needs_a_full_id_of_the_same_apps_container() -> None:
    wanted = privilege.HostPrivileges(modes=(("PidMode", f"container:{FULL_ID}"),))
    assert not wanted.plain
    assert wanted.refused({"PidMode": frozenset({"a"})}, {"a"}) == []
    assert wanted.refused({"PidMode": frozenset({"b"})}, {"a"})
    assert wanted.refused({"PidMode": frozenset()}, {"a"})  # a container of no app
    assert wanted.refused({"PidMode": None}, {"a"})  # Docker knows none: resolved at start


def test_apps_named_by_label_and_every_app_env() -> None:
    assert privilege.apps_named("a", ["APP=b", "APP=a", "X=1"]) == {"a", "b"}
    assert privilege.apps_named("", ["APP="]) == frozenset()
    assert privilege.allowed_apps(frozenset({"a"}), ["a", "c"])
    assert not privilege.allowed_apps(frozenset({"a", "b"}), ["a"])
    assert not privilege.allowed_apps(frozenset(), ["a"])


@pytest.mark.parametrize(
    "raw",
    [
        '{"HostConfig":{"Privileged":true,"privileged":false}}',
        '{"HostConfig":{"Privileged":"yes"}}',
        '{"HostConfig":{"CapAdd":[1]}}',
        '{"HostConfig":{"Sysctls":{"a":1}}}',
        '{"HostConfig":{"Devices":{}}}',
    ],
)
def test_privilege_fields_docker_would_refuse_or_read_twice_are_refused(raw: str) -> None:
    with pytest.raises(CreateBodyError):
        parse_create_body(raw.encode())


# --- routes ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "uri", "kind"),
    [
        ("POST", "/v1.41/containers/abc/exec", "exec"),
        ("POST", "/v1.41/plugins/pull?remote=x", "plugin"),
        ("POST", "/plugins/create?name=x", "plugin"),
        ("POST", "/v1.41/plugins/x:latest/set", "plugin"),
        ("POST", "/v1.41/plugins/x/enable", "plugin"),
        ("POST", "/v1.41/plugins/x/upgrade", "plugin"),
        ("POST", "/v1.41/plugins/x/disable", "other"),
        ("PUT", "/v1.41/containers/abc/archive?path=/", "archive"),
        ("GET", "/v1.41/containers/abc/archive?path=/data", "archive"),
        ("HEAD", "/v1.41/containers/abc/%61rchive?path=/data", "archive"),
        ("POST", "/v1.19/containers/abc/copy", "archive"),
        ("GET", "/v1.41/containers/abc/checkpoints?dir=/x", "checkpoint"),
        ("DELETE", "/v1.41/containers/abc/checkpoints/c1?dir=/x", "checkpoint"),
        ("PUT", "/v1.42/volumes/v1", "swarm"),
        ("POST", "/v1.41/services/s1/update", "swarm"),
        ("POST", "/v1.41/containers/abc/update", "other"),
        ("POST", "/v1.41/exec/abc/start", "other"),
        ("POST", "/v1.41/build?networkmode=host", "other"),
        ("POST", "/v1.41/images/create?fromSrc=-", "other"),
        ("POST", "/v1.41/no/such/route", "unknown"),
        ("PUT", "/v1.41/containers/abc/rename", "unknown"),
        ("GET", "/v1.41/containers/json?filters=%7B%7D", "other"),
        ("DELETE", "/v1.41/containers/abc", "other"),
    ],
)
def test_every_route_that_mounts_or_grants_is_judged(method: str, uri: str, kind: str) -> None:
    assert route(method, uri).kind == kind


@pytest.mark.parametrize(
    ("version", "legacy"),
    [
        ("1.23", True),
        ("1.023", True),
        ("1.12", True),
        ("1.24", False),
        ("1.41", False),
        ("", False),
    ],
)
def test_api_versions_below_1_24_are_legacy(version: str, legacy: bool) -> None:
    prefix = f"/v{version}" if version else ""
    assert route("POST", f"{prefix}/containers/abc/start").legacy is legacy


@pytest.mark.parametrize(
    ("headers", "announced"),
    [
        ({"Content-Length": "0"}, False),
        ({"Content-Length": "2000000"}, True),
        ({}, True),  # Go strips Content-Length and Transfer-Encoding from chunked requests
        ({"Transfer-Encoding": "chunked", "Content-Length": "0"}, True),
    ],
)
def test_a_body_is_announced_by_length_or_its_absence(
    headers: dict[str, str], announced: bool
) -> None:
    assert body_announced(headers) is announced


# --- the guard's verdicts, in-process --------------------------------------------------------
@pytest.fixture
def guard(tmp_path: Path) -> Guard:
    state = make_state(
        rack="r",
        mount_point=str(tmp_path / "mp"),
        state_dir=str(tmp_path),
        docker_state=None,
        guard={"enabled": True, "privileged_apps": ["ci"]},
    )
    return Guard(state, Preparer(state, TimedWorker("priv", max_threads=1)))


def hidden(method: str, uri: str, length: str) -> bytes:
    raw = json.loads(plugin_body(method, uri))
    raw["RequestHeaders"] = {"Content-Type": "application/json", "Content-Length": length}
    return json.dumps(raw).encode()


@pytest.mark.parametrize(
    ("method", "uri"),
    [
        ("POST", "/v1.41/containers/create"),
        ("POST", "/v1.41/volumes/create"),
        ("POST", "/v1.23/containers/abc/start"),
        ("POST", "/v1.41/containers/abc/exec"),
        ("POST", "/v1.41/containers/abc/checkpoints"),
        ("POST", "/v1.41/some/new/route"),
    ],
)
def test_a_body_kept_from_the_guard_is_refused_on_every_judged_route(
    guard: Guard, method: str, uri: str
) -> None:
    doc = decision(ask(guard, hidden(method, uri, "2097152")))
    assert doc["Allow"] is False
    assert "over 1 MiB" in doc["Msg"] and "Content-Length 2097152" in doc["Msg"]


def test_a_start_or_unknown_route_without_a_body_passes(guard: Guard) -> None:
    assert decision(ask(guard, hidden("POST", "/v1.41/some/new/route", "0")))["Allow"]
    assert decision(ask(guard, hidden("POST", "/v1.41/containers/abc/stop", "5000000")))["Allow"]


def test_privilege_of_an_app_not_listed_is_refused_and_of_a_listed_one_allowed(
    guard: Guard,
) -> None:
    uri = "/v1.41/containers/create?name=x"
    body = {"Image": "x", "Labels": APP, "HostConfig": {"PidMode": "host"}}
    doc = decision(ask(guard, plugin_body("POST", uri, body)))
    assert doc["Allow"] is False
    assert "PidMode=host" in doc["Msg"] and "[guard] privileged_apps" in doc["Msg"]
    body["Labels"] = {"convox.app": "ci"}
    assert decision(ask(guard, plugin_body("POST", uri, body)))["Allow"] is True
    body["Labels"] = {}  # not an app's container: not volagent's business
    assert decision(ask(guard, plugin_body("POST", uri, body)))["Allow"] is True
    body["Labels"], body["Env"] = {"convox.app": "ci"}, ["APP=a"]
    assert decision(ask(guard, plugin_body("POST", uri, body)))["Allow"] is False


def test_plugins_swarm_volumes_and_checkpoint_dirs_are_refused(guard: Guard) -> None:
    for method, uri, body in (
        ("POST", "/v1.41/plugins/pull?remote=x", [{"Name": "mount", "Value": ["/"]}]),
        ("PUT", "/v1.42/volumes/v1", {"Spec": {}}),
        ("POST", "/v1.41/containers/abc/checkpoints", {"CheckpointDir": "/volumes"}),
        ("GET", "/v1.41/containers/abc/checkpoints?dir=/volumes", None),
        ("POST", "/v1.41/containers/abc/start?checkpoint=c&checkpoint-dir=/v", None),
    ):
        doc = decision(ask(guard, plugin_body(method, uri, body)))
        assert doc["Allow"] is False, (method, uri)


def test_stored_settings_read_back_as_docker_inspect_shows_them() -> None:
    body = {"Image": "x", "HostConfig": {"PidMode": "host", "CapAdd": "SYS_ADMIN", "Devices": [{}]}}
    create = parse_create_body(json.dumps(body).encode())
    stored = privilege.HostPrivileges.from_host_config(create.spec.host_config)
    assert stored.refused({}, {"a"}) == create.privileges.refused({}, {"a"})
    # Docker fills CgroupnsMode in itself (host on cgroup v1): not a use of privilege
    inspected = {
        "CgroupnsMode": "host",
        "IpcMode": "private",
        "MaskedPaths": sorted(privilege.DEFAULT_MASKED_PATHS),
        "SecurityOpt": None,
    }
    assert privilege.HostPrivileges.from_host_config(inspected).plain
