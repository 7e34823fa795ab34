"""The user-facing contract, checked from outside: only config keys, CLI commands, exit codes,
socket endpoints, the status document, labels and env, the directory rules and the guard's
plugin endpoints, the way an operator or an orchestrator sees them.

One agent serves the module: shared filesystem through the EFS stand-in (type nfs, so the
verdict can be `ok`), label keys and the directory defaults changed in its config, and the
guard's plugin socket served (the session engine does not use it; the tests speak the
plugin protocol to it the way dockerd does). Containers are created, not started, unless
a test is about starting.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.testbed import AgentProcess, Containers, mounts, unixhttp, volagent_cli
from tests.testbed.agent import all_in, container
from tests.testbed.aws import NfsPorts
from tests.testbed.contract_example import CONTRACT_EXAMPLE
from tests.testbed.disk import owner_mode
from tests.testbed.efs_standin import Scratch, stop_agent_on_standin

pytestmark = [pytest.mark.docker, pytest.mark.mount]

RACK = "r1"
RACK_LABEL, APP_LABEL, SERVICE_LABEL = "acme.rack", "acme.app", "convox.service"
CONFIG_OWNER, CONFIG_MODE = (4321, 4322), 0o750

DOC_KEYS = {"status", "healthy", "version", "mount", "docker", "guard", "containers", "warnings"}
MOUNT_KEYS = {"state", "mount_point", "type", "source", "file_system_id", "since"}
MOUNT_KEYS |= {"last_probe_ms", "error"}
DOCKER_KEYS = {"state", "events", "since", "error"}
GUARD_KEYS = {"enabled", "allowed", "denied"}
CONTAINER_KEYS = {"id", "name", "rack", "app", "service", "volumes"}
VOLUME_KEYS = {"host", "container", "read_only", "state", "error"}
HOST_KEYS = {"host", "instance_id", "status", "last_seen"}


@dataclass
class Bed:
    agent: AgentProcess
    scratch: Scratch
    server: str

    @property
    def mp(self) -> str:
        return self.agent.mount_point

    def path(self, *parts: str) -> str:
        return os.path.join(self.mp, *parts)

    def shared(self, path: str) -> Path:
        """Where `path` under the mount point lies on the shared filesystem's export."""
        return Path(self.scratch.exports, self.server, os.path.relpath(path, self.mp))

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return volagent_cli(list(args), env={"NO_COLOR": "1", **(env or {})})


@pytest.fixture(scope="module")
def bed(docker_url: str, nfs_ports: NfsPorts) -> Iterator[Bed]:
    root = tempfile.mkdtemp(prefix="vt-contract-")
    scratch = Scratch(Path(root))
    server = nfs_ports.open_ip
    scratch.export(server)
    agent = AgentProcess(
        docker_url,
        rack=RACK,
        local_tmpfs=False,
        config={
            "mount": {
                "type": "nfs",
                "source": f"{server}:/",
                "mount_program": scratch.mount_program,
                "probe_interval_s": 0.3,
                "probe_timeout_s": 2,
            },
            "docker": {"rack_label": RACK_LABEL, "app_label": APP_LABEL},
            "directories": {"owner": "{}:{}".format(*CONFIG_OWNER), "mode": f"{CONFIG_MODE:04o}"},
            "guard": {"enabled": True},
        },
    )
    try:
        agent.start()
        agent.wait_for(lambda d: d["status"] == "ok", what="ok")
        yield Bed(agent, scratch, server)
    finally:
        stop_agent_on_standin(agent, scratch)
        agent.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def ok(bed: Bed) -> Bed:
    """The module's agent, back to `ok` (the previous test's containers forgotten)."""
    bed.agent.wait_for(lambda d: d["status"] == "ok", what="status ok")
    return bed


def wait_volumes(bed: Bed, ids: list[str], states: tuple[str, ...]) -> dict[str, Any]:
    return bed.agent.wait_for(lambda d: all_in(d, ids, states), what=f"volumes {states}")


def entry(doc: dict[str, Any], cid: str) -> dict[str, Any]:
    found = container(doc, cid)
    assert found is not None, f"{cid[:12]} is not in the status document"
    return found


def iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- the status document, health, metrics --------------------------------------------------------
def check_document(doc: dict[str, Any], rack: bool = False) -> None:
    """Every key and value type the contract shows."""
    keys = DOC_KEYS | ({"hosts", "usage"} if rack else set())
    assert set(doc) == keys, set(doc)
    assert doc["status"] in ("ok", "degraded", "critical")
    assert doc["healthy"] is (doc["status"] == "ok")
    assert isinstance(doc["version"], str)
    mount = doc["mount"]
    assert set(mount) == MOUNT_KEYS
    assert mount["state"] in ("mounted", "mounting", "stalled", "unmounted", "local", "disabled")
    for key in ("mount_point", "type", "source"):
        assert isinstance(mount[key], str), key
    assert mount["file_system_id"] is None or isinstance(mount["file_system_id"], str)
    iso(mount["since"])
    assert mount["last_probe_ms"] is None or isinstance(mount["last_probe_ms"], int | float)
    assert mount["error"] is None or isinstance(mount["error"], str)
    docker_part = doc["docker"]
    assert set(docker_part) == DOCKER_KEYS
    assert docker_part["state"] in ("connected", "connecting")
    assert isinstance(docker_part["events"], int) and not isinstance(docker_part["events"], bool)
    iso(docker_part["since"])
    assert docker_part["error"] is None or isinstance(docker_part["error"], str)
    assert set(doc["guard"]) == GUARD_KEYS
    assert isinstance(doc["guard"]["enabled"], bool)
    for key in ("allowed", "denied"):
        assert isinstance(doc["guard"][key], int) and not isinstance(doc["guard"][key], bool)
    assert isinstance(doc["containers"], list)
    for c in doc["containers"]:
        assert set(c) == CONTAINER_KEYS
        assert all(isinstance(c[k], str) for k in CONTAINER_KEYS - {"volumes"})
        for v in c["volumes"]:
            assert set(v) == VOLUME_KEYS
            assert isinstance(v["host"], str) and isinstance(v["container"], str)
            assert isinstance(v["read_only"], bool)
            assert v["state"] in ("ready", "pending", "late", "violation", "failed")
            assert v["error"] is None or isinstance(v["error"], str)
            assert (v["error"] is None) is (v["state"] == "ready")
    assert isinstance(doc["warnings"], list)
    assert all(isinstance(w, str) for w in doc["warnings"])


def test_status_document_health_metrics_and_cli_when_ok(ok: Bed) -> None:
    agent = ok.agent
    doc = agent.status()
    check_document(doc)
    assert (doc["status"], doc["healthy"]) == ("ok", True)
    mount = doc["mount"]
    assert (mount["state"], mount["mount_point"], mount["error"]) == ("mounted", ok.mp, None)
    assert mount["source"] == f"{ok.server}:/"
    assert isinstance(mount["last_probe_ms"], int | float)
    assert (doc["docker"]["state"], doc["docker"]["error"]) == ("connected", None)
    assert doc["guard"]["enabled"] is True

    assert agent.health() == (200, {"healthy": True, "status": "ok"})

    status, body = unixhttp.request(agent.socket_path, "GET", "/metrics")
    assert status == 200 and b"volagent_" in body
    conn = unixhttp.UnixHTTPConnection(agent.socket_path)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        resp.read()
        ctype = resp.getheader("Content-Type") or ""
    finally:
        conn.close()
    assert ctype.startswith("text/plain; version=0.0.4"), ctype

    version = ok.cli("--version")
    assert version.returncode == 0 and doc["version"] in version.stdout

    human = ok.cli("status", "--socket", agent.socket_path)
    assert human.returncode == 0, human.stderr
    as_json = ok.cli("status", "--json", "--socket", agent.socket_path)
    assert as_json.returncode == 0, as_json.stderr
    printed = json.loads(as_json.stdout)
    check_document(printed)
    assert set(printed) == set(doc)
    assert printed["mount"]["since"] == doc["mount"]["since"]
    assert printed["version"] == doc["version"]


# --- rack, app, service; owner and mode ----------------------------------------------------------
def test_names_come_from_labels_then_env_then_config_with_configured_keys(
    ok: Bed, containers: Containers
) -> None:
    env = [f"RACK={RACK}", "APP=aenv", "SERVICE=senv"]
    by_label = containers.create(
        [f"{ok.path(f'{RACK}-alab', 'slab', 'data')}:/data"],
        labels={RACK_LABEL: RACK, APP_LABEL: "alab", SERVICE_LABEL: "slab"},
    )
    # the default label keys mean nothing once others are configured: env decides
    by_env = containers.create(
        [f"{ok.path(f'{RACK}-aenv', 'senv', 'data')}:/data"],
        labels={"convox.rack": "rdef", "convox.app": "adef"},
        env=env,
    )
    by_config = containers.create(
        [f"{ok.path(f'{RACK}-amix', 'smix', 'data')}:/data"],
        labels={APP_LABEL: "amix"},
        env=["SERVICE=smix"],
    )
    # 0.2: the rack is the host's, and a label and an env that disagree name nobody
    other_rack = containers.create(
        [f"{ok.path('rlab-alab', 'slab', 'data')}:/data"],
        labels={RACK_LABEL: "rlab", APP_LABEL: "alab", SERVICE_LABEL: "slab"},
    )
    disagreeing = containers.create(
        [f"{ok.path(f'{RACK}-alab', 'slab', 'data')}:/data"],
        labels={APP_LABEL: "alab", SERVICE_LABEL: "slab"},
        env=["APP=aenv"],
    )
    ids = [by_label, by_env, by_config]
    doc = wait_volumes(ok, ids, ("ready",))
    expected = [(RACK, "alab", "slab"), (RACK, "aenv", "senv"), (RACK, "amix", "smix")]
    for cid, names in zip(ids, expected, strict=True):
        c = entry(doc, cid)
        assert (c["rack"], c["app"], c["service"]) == names
        assert c["id"] == cid
        (vol,) = c["volumes"]
        assert vol == {
            "host": ok.path(f"{names[0]}-{names[1]}", names[2], "data"),
            "container": "/data",
            "read_only": False,
            "state": "ready",
            "error": None,
        }
        assert ok.shared(vol["host"]).is_dir()
    doc = wait_volumes(ok, [other_rack, disagreeing], ("violation",))
    (vol,) = entry(doc, other_rack)["volumes"]
    assert f"this host belongs to rack '{RACK}'" in vol["error"]
    (vol,) = entry(doc, disagreeing)["volumes"]
    assert "name different apps" in vol["error"]
    assert not ok.shared(ok.path("rlab-alab")).exists()


def test_owner_and_mode_from_labels_then_numeric_user_then_config(
    ok: Bed, containers: Containers
) -> None:
    cases = [  # (labels, User, expected uid, gid, mode of the leaf)
        ({"volagent.owner": "1100:1200", "volagent.mode": "0777"}, "1500", 1100, 1200, 0o777),
        ({"volagent.mode": "0700"}, "1800", 1800, 1800, 0o700),
        ({}, "1600:1700", 1600, 1700, CONFIG_MODE),
        ({}, "1500", 1500, 1500, CONFIG_MODE),
        ({}, "nobody", *CONFIG_OWNER, CONFIG_MODE),
        ({}, "", *CONFIG_OWNER, CONFIG_MODE),
    ]
    ids, leaves = [], []
    for i, (labels, user, *_) in enumerate(cases):
        leaf = ok.path(f"{RACK}-own", f"s{i}", "deep", "er", "leaf")
        leaves.append(leaf)
        ids.append(
            containers.create(
                [f"{leaf}:/data"],
                labels={APP_LABEL: "own", SERVICE_LABEL: f"s{i}", **labels},
                user=user or None,
            )
        )
    wait_volumes(ok, ids, ("ready",))
    for leaf, (_, user, uid, gid, mode) in zip(leaves, cases, strict=True):
        assert owner_mode(leaf) == (uid, gid, mode), (user, leaf)
        # every parent volagent made (<R>-<A>, <S>, deep, er) is root:root 0755
        for up in range(1, 5):
            parent = leaf.rsplit("/", up)[0]
            assert owner_mode(parent) == (0, 0, 0o755), parent


def test_existing_directories_are_never_chowned_nor_chmodded(
    ok: Bed, containers: Containers
) -> None:
    ns = ok.path(f"{RACK}-keep")
    old_ns, old_svc, old_leaf = ns, os.path.join(ns, "s"), os.path.join(ns, "s", "old")
    os.mkdir(old_ns)
    os.mkdir(old_svc)
    os.mkdir(old_leaf)
    for path, (uid, gid, mode) in (
        (old_ns, (9, 9, 0o701)),
        (old_svc, (5, 6, 0o711)),
        (old_leaf, (7, 8, 0o700)),
    ):
        os.chown(path, uid, gid)
        os.chmod(path, mode)
    (Path(old_leaf) / "data.txt").write_text("user data")
    new_leaf = os.path.join(old_svc, "new", "leaf")
    cid = containers.create(
        [f"{old_leaf}:/old", f"{new_leaf}:/new"],
        labels={APP_LABEL: "keep", SERVICE_LABEL: "s", "volagent.owner": "1000:1000"},
    )
    doc = wait_volumes(ok, [cid], ("ready",))
    assert [v["state"] for v in entry(doc, cid)["volumes"]] == ["ready", "ready"]
    assert owner_mode(old_ns) == (9, 9, 0o701)
    assert owner_mode(old_svc) == (5, 6, 0o711)
    assert owner_mode(old_leaf) == (7, 8, 0o700)
    assert (Path(old_leaf) / "data.txt").read_text() == "user data"
    assert owner_mode(os.path.dirname(new_leaf)) == (0, 0, 0o755)
    assert owner_mode(new_leaf) == (1000, 1000, CONFIG_MODE)
    # gone with its container, the data stays
    containers.remove(cid)
    ok.agent.wait_for(lambda d: container(d, cid) is None, what="container forgotten")
    assert os.path.isdir(new_leaf) and (Path(old_leaf) / "data.txt").exists()


# --- binds: :ro, HostConfig.Mounts of type bind --------------------------------------------------
def test_ro_binds_and_bind_mounts_are_volumes(ok: Bed, containers: Containers) -> None:
    rw, ro = ok.path(f"{RACK}-binds", "s", "rw"), ok.path(f"{RACK}-binds", "s", "ro")
    mounted = ok.path(f"{RACK}-binds", "s", "mounted")
    os.makedirs(mounted)  # Docker itself wants a --mount source to exist already
    elsewhere = tempfile.mkdtemp(prefix="vt-contract-elsewhere-")
    try:
        cid = containers.create(
            [f"{rw}:/rw", f"{ro}:/ro:ro", f"{elsewhere}:/elsewhere:ro"],
            labels={APP_LABEL: "binds", SERVICE_LABEL: "s"},
            mounts=[{"Source": mounted, "Target": "/m", "ReadOnly": True}],
        )
        doc = wait_volumes(ok, [cid], ("ready",))
    finally:
        os.rmdir(elsewhere)
    vols = {v["container"]: v for v in entry(doc, cid)["volumes"]}
    assert set(vols) == {"/rw", "/ro", "/m"}  # the bind outside the mount point is not ours
    assert [vols[k]["read_only"] for k in ("/rw", "/ro", "/m")] == [False, True, True]
    assert [vols[k]["host"] for k in ("/rw", "/ro", "/m")] == [rw, ro, mounted]
    assert ok.shared(rw).is_dir() and ok.shared(ro).is_dir()


# --- violations ----------------------------------------------------------------------------------
def test_violations_are_reported_with_their_rule_and_make_status_degraded(
    ok: Bed, containers: Containers
) -> None:
    long_name = "s" * 63
    good = containers.create(  # 63 characters is the longest valid name, and services share
        [f"{ok.path(f'{RACK}-v', long_name, 'd')}:/d", f"{ok.path(f'{RACK}-v', 'other', 'd')}:/o"],
        labels={APP_LABEL: "v", SERVICE_LABEL: long_name},
    )
    bad = {
        "root": ([f"{ok.mp}:/all"], {APP_LABEL: "v", SERVICE_LABEL: "s"}, "5"),
        "root-slash": ([f"{ok.mp}/:/all"], {APP_LABEL: "v", SERVICE_LABEL: "s"}, "5"),
        "other-app": (
            [f"{ok.path(f'{RACK}-w', 's', 'd')}:/d"],
            {APP_LABEL: "v", SERVICE_LABEL: "s"},
            "5",
        ),
        "upper": ([f"{ok.path(f'{RACK}-Bad', 's', 'd')}:/d"], {APP_LABEL: "Bad"}, "6"),
        "too-long": (
            [f"{ok.path(f'{RACK}-v', 's' * 64, 'd')}:/d"],
            {APP_LABEL: "v", SERVICE_LABEL: "s" * 64},
            "6",
        ),
        "dash-first": (
            [f"{ok.path('-r-v', 's', 'd')}:/d"],
            {RACK_LABEL: "-r", APP_LABEL: "v"},
            "6",
        ),
        "env-name": ([f"{ok.path(f'{RACK}-v', 'S_1', 'd')}:/d"], {APP_LABEL: "v"}, "6"),
    }
    before = set(os.listdir(ok.mp))
    made = {}
    for what, (binds, labels, _) in bad.items():
        env = ["SERVICE=S_1"] if what == "env-name" else []
        made[what] = containers.create(binds, labels=labels, env=env)
    doc = wait_volumes(ok, list(made.values()), ("violation",))
    for what, cid in made.items():
        (vol,) = entry(doc, cid)["volumes"]
        rule = bad[what][2]
        assert vol["error"] and f"rule {rule}" in vol["error"], (what, vol)
    doc = wait_volumes(ok, [good], ("ready",))
    assert doc["status"] == "degraded" and doc["healthy"] is False
    check_document(doc)
    assert ok.agent.health() == (503, {"healthy": False, "status": "degraded"})
    assert ok.cli("status", "--socket", ok.agent.socket_path).returncode == 1
    out = ok.cli("status", "--json", "--socket", ok.agent.socket_path)
    assert out.returncode == 1 and json.loads(out.stdout)["status"] == "degraded"
    # nothing was made for any of them: only the valid container's directories are new
    assert set(os.listdir(ok.mp)) - before == {f"{RACK}-v"}
    assert sorted(os.listdir(ok.path(f"{RACK}-v"))) == sorted([long_name, "other"])


def test_a_mount_inside_the_namespace_is_a_rule_3_violation(
    ok: Bed, containers: Containers
) -> None:
    inner = ok.path(f"{RACK}-nest", "s")
    os.makedirs(inner)
    mounts.mount_tmpfs(inner)
    try:
        cid = containers.create(
            [f"{os.path.join(inner, 'data')}:/data"], labels={APP_LABEL: "nest", SERVICE_LABEL: "s"}
        )
        doc = wait_volumes(ok, [cid], ("violation",))
        (vol,) = entry(doc, cid)["volumes"]
        assert vol["error"] and "rule 3" in vol["error"], vol
        assert os.listdir(inner) == []  # nothing made on the filesystem that is not shared
    finally:
        mounts.umount_lazy(inner)


# --- the start guard's plugin endpoints ----------------------------------------------------------
def plugin_call(bed: Bed, path: str, doc: dict[str, Any] | None = None) -> tuple[int, Any]:
    body = json.dumps(doc).encode() if doc is not None else b""
    sock = bed.agent.config["guard"]["plugin_socket"]
    status, answer = unixhttp.request(sock, "POST", path, body, timeout=30)
    return status, json.loads(answer)


def authz_req(method: str, uri: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """What dockerd posts to AuthZPlugin.AuthZReq for one API call."""
    doc: dict[str, Any] = {
        "User": "",
        "UserAuthNMethod": "",
        "RequestMethod": method,
        "RequestUri": uri,
        "RequestHeaders": {"Content-Type": "application/json"},
    }
    if body is not None:
        doc["RequestBody"] = base64.b64encode(json.dumps(body).encode()).decode()
    return doc


def create_body(binds: list[str], labels: dict[str, str], **host: Any) -> dict[str, Any]:
    return {
        "Image": "busybox",
        "Cmd": ["true"],
        "Labels": labels,
        "HostConfig": {"Binds": binds, "NetworkMode": "none", **host},
    }


def test_guard_plugin_endpoints(ok: Bed) -> None:
    assert plugin_call(ok, "/Plugin.Activate") == (200, {"Implements": ["authz"]})
    before = ok.agent.status()["guard"]

    other = plugin_call(ok, "/AuthZPlugin.AuthZReq", authz_req("GET", "/v1.43/containers/json"))
    assert other[0] == 200 and other[1]["Allow"] is True

    leaf = ok.path(f"{RACK}-guard", "web", "data")
    mounted = ok.path(f"{RACK}-guard", "web", "mounted")
    labels = {APP_LABEL: "guard", SERVICE_LABEL: "web", "volagent.owner": "2000:2001"}
    body = create_body(
        [f"{leaf}:/data"],
        labels,
        Mounts=[{"Type": "bind", "Source": mounted, "Target": "/m", "ReadOnly": True}],
    )
    status, answer = plugin_call(
        ok, "/AuthZPlugin.AuthZReq", authz_req("POST", "/v1.43/containers/create?name=g1", body)
    )
    assert status == 200 and answer["Allow"] is True, answer
    # prepared before the answer: the directories are there the moment Docker hears yes
    assert owner_mode(leaf) == (2000, 2001, CONFIG_MODE)
    assert owner_mode(mounted) == (2000, 2001, CONFIG_MODE)
    assert ok.shared(leaf).is_dir()

    stray = ok.path(f"{RACK}-elsewhere", "web", "data")
    body = create_body([f"{stray}:/data"], labels)
    status, answer = plugin_call(
        ok, "/AuthZPlugin.AuthZReq", authz_req("POST", "/containers/create?name=g2", body)
    )
    assert status == 200 and answer["Allow"] is False, answer
    msg = answer["Msg"]
    assert stray in msg and "rule 5" in msg and "volagent paths" in msg, msg
    assert not os.path.exists(ok.path(f"{RACK}-elsewhere"))

    # answers are never refused
    res = {**authz_req("GET", "/v1.43/containers/json"), "ResponseStatusCode": 200}
    assert plugin_call(ok, "/AuthZPlugin.AuthZRes", res) == (200, {"Allow": True})

    after = ok.agent.status()["guard"]
    assert after["allowed"] == before["allowed"] + 2
    assert after["denied"] == before["denied"] + 1


# --- the command line ----------------------------------------------------------------------------


def test_check_config_prints_the_effective_config_and_names_bad_keys(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    done = volagent_cli(["check-config", "--config", str(empty)])
    assert done.returncode == 0, done.stderr
    effective = tomllib.loads(done.stdout)
    for key, value in tomllib.loads(CONTRACT_EXAMPLE).items():
        if key == "rack":
            continue  # the example names a rack; its default is none
        if isinstance(value, dict):
            for sub, default in value.items():
                assert effective[key][sub] == default, f"{key}.{sub}"
        else:
            assert effective[key] == value, key
    # what it prints is a valid config that means the same
    printed = tmp_path / "printed.toml"
    printed.write_text(done.stdout)
    again = volagent_cli(["check-config", "--config", str(printed)])
    assert (again.returncode, again.stdout) == (0, done.stdout)

    chosen = tmp_path / "chosen.toml"
    chosen.write_text('rack = "fromenv"\n[guard]\nviolations = "warn"\n')
    by_env = volagent_cli(["check-config"], env={"VOLAGENT_CONFIG": str(chosen)})
    assert by_env.returncode == 0, by_env.stderr
    assert tomllib.loads(by_env.stdout)["guard"]["violations"] == "warn"
    by_flag = volagent_cli(["--config", str(chosen), "check-config"])
    assert tomllib.loads(by_flag.stdout)["rack"] == "fromenv"

    for text, key in (
        ('[mount]\ntype = "zfs"\n', "mount.type"),
        ('[guard]\nwhen_unhealthy = "maybe"\n', "guard.when_unhealthy"),
        ('[directories]\nmode = "0999"\n', "directories.mode"),
        ('[directories]\nowner = "www-data"\n', "directories.owner"),
        ('rack = "My Rack"\n', "rack"),
        ("[nosuch]\nx = 1\n", "nosuch"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        done = volagent_cli(["check-config", "--config", str(bad)])
        assert done.returncode == 2, (text, done.stdout)
        assert key in done.stderr, (text, done.stderr)
        assert done.stdout == ""


def test_paths_prints_host_paths_and_refuses_invalid_names(tmp_path: Path) -> None:
    done = volagent_cli(
        ["paths", "--app", "web", "--service", "api", "--rack", "prod", "/var/www/html", "/data"]
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "/volumes/prod-web/api/var/www/html",
        "/volumes/prod-web/api/data",
    ]
    cfg = tmp_path / "v.toml"
    cfg.write_text('rack = "fromcfg"\nmount_point = "/srv/shared"\n')
    done = volagent_cli(["paths", "--config", str(cfg), "--app", "web", "--service", "api", "/d"])
    assert (done.returncode, done.stdout.strip()) == (0, "/srv/shared/fromcfg-web/api/d")
    # (`--rack -r` would be a command line argparse cannot parse, exit 64: `--rack=-r` names
    # the bad rack)
    for bad in (["--app", "Web"], ["--app", "web", "--rack=-r"], ["--app", "w" * 64]):
        argv = ["paths", "--service", "api", "--rack", "prod", *bad, "/data"]
        done = volagent_cli(argv)
        assert done.returncode == 2, (bad, done.stdout)
        assert done.stdout == ""


def test_status_socket_choice_rack_view_and_gc(ok: Bed, tmp_path: Path) -> None:
    sock = ok.agent.socket_path
    nowhere = str(tmp_path / "nowhere.sock")
    cfg = tmp_path / "other.toml"
    cfg.write_text(f'[api]\nsocket = "{nowhere}"\n')
    assert ok.cli("status", "--config", str(cfg)).returncode == 3
    assert ok.cli("status", "--config", ok.agent.config_path).returncode == 0
    assert ok.cli("status", env={"VOLAGENT_CONFIG": ok.agent.config_path}).returncode == 0
    env_wins = ok.cli("status", "--config", str(cfg), env={"VOLAGENT_SOCKET": sock})
    assert env_wins.returncode == 0, env_wins.stderr
    flag_wins = ok.cli("status", "--socket", sock, env={"VOLAGENT_SOCKET": nowhere})
    assert flag_wins.returncode == 0, flag_wins.stderr

    deadline = time.monotonic() + 60
    while True:  # the heartbeat of this host, once written
        rack = ok.cli("status", "--rack", "--json", "--socket", sock)
        assert rack.returncode == 0, rack.stderr
        doc = json.loads(rack.stdout)
        me = [h for h in doc["hosts"] if h["host"] == "test-host"]
        if me or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    check_document(doc, rack=True)
    assert len(me) == 1 and set(me[0]) >= HOST_KEYS, doc["hosts"]
    assert me[0]["status"] in ("ok", "degraded", "critical")
    iso(me[0]["last_seen"])
    assert ok.cli("status", "--rack", "--socket", sock).returncode == 0

    ns = ok.path(f"{RACK}-unused")
    os.makedirs(os.path.join(ns, "s"))
    old = time.time() - 40 * 86400
    for path in (os.path.join(ns, "s"), ns):
        os.utime(path, (old, old))
    # an earlier test's container that bound the mount point itself (a violation) holds
    # every directory while its record says it exists: the agent records it gone within a
    # second of its removal
    root_records = ok.shared(ok.agent.mount_point) / ".volagent" / "usage"
    deadline = time.monotonic() + 30
    while binding := {
        f.name: record
        for f in root_records.glob("*.json")
        if (record := json.loads(f.read_text())).get("containers")
    }:
        # the records, and the agent's table, for the next look at why it stayed
        assert time.monotonic() < deadline, (
            f"a removed container is still recorded as binding: {binding}; "
            f"the agent's containers: {[c['name'] for c in ok.agent.status()['containers']]}"
        )
        time.sleep(0.2)
    listed = ok.cli("--config", ok.agent.config_path, "gc")
    assert listed.returncode == 0, listed.stderr
    assert ns in listed.stdout, listed.stdout
    assert os.path.isdir(ns)
    deleted = ok.cli("--config", ok.agent.config_path, "gc", "--delete")
    assert deleted.returncode == 0, deleted.stderr
    assert not os.path.exists(ns)


def test_critical_while_docker_is_unreachable(agent_factory: Any, tmp_path: Path) -> None:
    agent = agent_factory(docker_url=f"unix://{tmp_path}/no-docker.sock").start()
    doc = agent.wait_for(
        lambda d: d["docker"]["error"] and d["mount"]["state"] == "local",
        what="the mount made and Docker failing",
    )
    check_document(doc)
    assert (doc["status"], doc["healthy"], doc["docker"]["state"]) == (
        "critical",
        False,
        "connecting",
    )
    assert doc["mount"]["state"] == "local"
    assert agent.health() == (503, {"healthy": False, "status": "critical"})
    assert volagent_cli(["status", "--socket", agent.socket_path]).returncode == 2
    out = volagent_cli(["status", "--json", "--socket", agent.socket_path])
    assert out.returncode == 2 and json.loads(out.stdout)["status"] == "critical"
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGINT)
    assert agent.wait_exit() == 0
    lines = [ln for ln in Path(agent.log_path).read_text().splitlines() if ln.strip()]
    assert lines and all(isinstance(json.loads(ln), dict) for ln in lines)


# --- late: last, since it restarts the module's agent --------------------------------------------
def test_a_container_started_before_volagent_prepared_its_directory_is_late(
    ok: Bed, containers: Containers
) -> None:
    leaf = ok.path(f"{RACK}-late", "s", "data")
    assert ok.agent.stop() == 0
    try:
        cid = containers.run(
            [f"{leaf}:/data"],
            labels={APP_LABEL: "late", SERVICE_LABEL: "s", "volagent.owner": "1234:1234"},
        )
        assert owner_mode(leaf) == (0, 0, 0o755)  # Docker made it, on the mount
    finally:
        ok.agent.start()
    doc = wait_volumes(ok, [cid], ("late",))
    (vol,) = entry(doc, cid)["volumes"]
    assert vol["error"] and vol["host"] == leaf
    assert owner_mode(leaf) == (0, 0, 0o755)  # and it stays as Docker left it
    assert (doc["status"], doc["mount"]["state"]) == ("degraded", "mounted")
    assert ok.cli("status", "--socket", ok.agent.socket_path).returncode == 1
    # a container volagent saw first is ready when it starts, never late
    other = ok.path(f"{RACK}-late", "s", "other")
    early = containers.create(
        [f"{other}:/data"],
        labels={APP_LABEL: "late", SERVICE_LABEL: "s", "volagent.owner": "1234:1234"},
    )
    wait_volumes(ok, [early], ("ready",))
    containers.start(early)
    status, _ = unixhttp.request(ok.agent.socket_path, "POST", "/v1/reconcile", b"")
    assert status == 200
    doc = ok.agent.status()
    assert [v["state"] for v in entry(doc, early)["volumes"]] == ["ready"]
    assert owner_mode(other) == (1234, 1234, CONFIG_MODE)
