"""The isolation attacks an app's developer can make through Docker, each against a real
dockerd with `--authorization-plugin=volagent`: every spelling, route and moment that once
reached another app's data or the host. Each test is named by the attack it stops.

The attacker controls their containers' create and start requests (labels, env, binds,
mounts, VolumesFrom, volume options, the API version) and the code inside them; they are not
root on the host. Where the attack needs something only root could do on the host (swapping
a directory that another host's container could reach), the test does that part itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import docker
import docker.errors
import pytest

from tests.testbed import AgentProcess, Containers, app_labels, unixhttp
from tests.testbed import mounts as testbed_mounts
from tests.testbed.guarded import Guarded, denied, still_serving

pytestmark = [pytest.mark.docker, pytest.mark.mount]

OWNER = "33:33"
EVIL = app_labels("evil", "web", owner=OWNER)


def refused(ctr: Containers, binds: list[str], **kw: Any) -> str:
    with pytest.raises(docker.errors.APIError) as excinfo:
        ctr.run(binds, labels=kw.pop("labels", EVIL), command=["cat", "/data/secret"], **kw)
    return denied(excinfo)


# --- one path, one verdict ----------------------------------------------------------------
def test_double_slash_spelling_of_another_apps_directory(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    # Docker cleans `//x` to `/x` (Go's filepath.Clean); Python's normpath keeps `//`
    text = refused(ctr, [f"/{victim}:/data"])
    assert "outside app evil's namespace" in text


def test_proc_self_root_spelling_of_another_apps_directory(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    text = refused(ctr, [f"/proc/self/root{victim}:/data"])
    assert "outside app evil's namespace" in text


def test_host_symlink_to_the_mount_point(
    bed: Guarded, ctr: Containers, victim: str, tmp_path: Any
) -> None:
    agent = bed.agent
    assert agent is not None
    alias = tmp_path / "alias"
    os.symlink(agent.mount_point, alias)
    text = refused(ctr, [f"{alias}/{agent.rack}-other/web/data:/data"])
    assert "outside app evil's namespace" in text


def test_another_mount_of_the_shared_filesystem(
    bed: Guarded, ctr: Containers, victim: str, tmp_path: Any
) -> None:
    other = tmp_path / "other-mount"
    other.mkdir()
    subprocess.run(["mount", "--bind", os.path.dirname(victim), str(other)], check=True)
    try:
        text = refused(ctr, [f"{other}/data:/data"])
        assert "outside app evil's namespace" in text
    finally:
        testbed_mounts.umount_lazy(str(other))


def test_a_bind_of_a_directory_that_contains_the_mount_point(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    # a recursive bind of a parent carries the shared filesystem along: every app's data
    agent = bed.agent
    assert agent is not None
    for parent in ("/", os.path.dirname(agent.mount_point)):
        text = refused(ctr, [f"{parent}:/data"])
        assert "contains the shared filesystem" in text


# --- names ----------------------------------------------------------------------------------
def test_an_app_claiming_another_rack(bed: Guarded, ctr: Containers) -> None:
    # app `web` of rack `r1-billing` would be the directory of app `billing-web` of rack `r1`
    agent = bed.agent
    assert agent is not None
    target = os.path.join(agent.mount_point, "r1-billing-web", "s", "data")
    labels = app_labels("web", "s", rack="r1-billing", owner=OWNER)
    text = refused(ctr, [f"{target}:/data"], labels=labels)
    assert "this host belongs to rack 'r1'" in text
    with pytest.raises(docker.errors.APIError) as excinfo:
        ctr.run([f"{target}:/data"], labels=app_labels("web", "s"), env=["RACK=r1-billing"])
    assert "this host belongs to rack 'r1'" in denied(excinfo)
    assert not os.path.exists(os.path.dirname(os.path.dirname(target)))


def test_label_and_env_naming_different_apps(bed: Guarded, ctr: Containers, victim: str) -> None:
    text = refused(ctr, [f"{victim}:/data"], env=["APP=other"])
    assert "name different apps" in text


def test_an_unlabeled_container_binding_another_apps_directory(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    text = refused(ctr, [f"{victim}:/data"], labels={})
    assert "names no app" in text


def test_a_lone_surrogate_beside_another_apps_bind_does_not_open_the_guard(
    bed: Guarded, victim: str
) -> None:
    agent = bed.agent
    assert agent is not None
    # the JSON escape of a lone UTF-16 surrogate, beside a bind into another app
    body = (
        b'{"Image":"volagent-test/busybox:latest","Cmd":["true"],'
        b'"Labels":{"convox.app":"evil","convox.service":"web","volagent.test":"1"},'
        b'"HostConfig":{"NetworkMode":"none","Binds":["'
        + agent.ns("evil", "web", "x").encode()
        + b'\\ud800:/x","'
        + victim.encode()
        + b':/data"]}}'
    )
    status, answer = unixhttp.request(
        bed.engine.socket_path,
        "POST",
        "/v1.41/containers/create",
        body,
        timeout=60,
    )
    assert status == 403, answer[:300]
    assert b"authorization denied by plugin volagent" in answer
    assert b"outside app evil" in answer


# --- routes ----------------------------------------------------------------------------------
def test_volumes_from_a_container_of_another_app(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    source = ctr.create([f"{victim}:/data"], labels=app_labels("other", "web", owner=OWNER))
    with pytest.raises(docker.errors.APIError) as excinfo:
        created = ctr.api.create_container(
            ctr.image,
            command=["cat", "/data/secret"],
            labels={**EVIL, "volagent.test": "1"},
            host_config=ctr.api.create_host_config(network_mode="none", volumes_from=[source]),
        )
        ctr.api.start(created["Id"])
    assert "outside app evil's namespace" in denied(excinfo)


def test_volumes_from_a_container_nobody_knows_and_too_many_of_them(
    bed: Guarded, ctr: Containers
) -> None:
    for refs, reason in (
        (["no-such-container"], "does not know"),
        ([f"c{i}" for i in range(65)], "at most 64"),
    ):
        with pytest.raises(docker.errors.APIError) as excinfo:
            ctr.api.create_container(
                ctr.image,
                labels={**EVIL, "volagent.test": "1"},
                host_config=ctr.api.create_host_config(network_mode="none", volumes_from=refs),
            )
        assert reason in denied(excinfo)


def test_a_local_volume_that_binds_another_apps_directory(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    opts = {"type": "none", "o": "bind", "device": victim}
    with pytest.raises(docker.errors.APIError) as excinfo:
        ctr.api.create_volume("stolen", driver="local", driver_opts=opts)
    assert "reaches the shared filesystem" in denied(excinfo)
    # the same volume made inline, by a Mounts entry of type volume
    mount = docker.types.Mount(
        "/data", "stolen2", type="volume", driver_config=docker.types.DriverConfig("local", opts)
    )
    with pytest.raises(docker.errors.APIError) as excinfo:
        ctr.api.create_container(
            ctr.image,
            labels={**EVIL, "volagent.test": "1"},
            host_config=ctr.api.create_host_config(network_mode="none", mounts=[mount]),
        )
    assert "reaches the shared filesystem" in denied(excinfo)
    assert not ctr.api.volumes(filters={"name": "stolen"}).get("Volumes")


def test_binds_smuggled_in_at_start_through_an_old_api_version(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    plain = ctr.create([], labels=EVIL, command=["cat", "/data/secret"])
    body = json.dumps({"Binds": [f"{victim}:/data", "/:/host"]}).encode()
    status, answer = unixhttp.request(
        bed.engine.socket_path,
        "POST",
        f"/v1.23/containers/{plain}/start",
        body,
        timeout=60,
    )
    assert status == 403, answer[:300]
    assert b"start request" in answer
    assert not ctr.api.inspect_container(plain)["State"]["Running"]


# --- moments ---------------------------------------------------------------------------------
def test_nested_binds_are_refused(bed: Guarded, ctr: Containers) -> None:
    agent = bed.agent
    assert agent is not None
    outer = ctr.create([agent.ns("evil", "web") + ":/all"], labels=EVIL)
    assert outer
    text = refused(ctr, [agent.ns("evil", "web", "data") + ":/data"])
    assert "rule 7" in text and "binds may not nest" in text
    # within one container too
    text = refused(ctr, [agent.ns("evil", "api") + ":/a", agent.ns("evil", "api", "x") + ":/b"])
    assert "rule 7" in text


def _swap_for_symlink(path: str, target: str) -> None:
    os.rename(path, path + ".moved")
    os.symlink(target, path)


def test_symlink_swap_before_a_docker_start(bed: Guarded, ctr: Containers, victim: str) -> None:
    agent = bed.agent
    assert agent is not None
    mine = agent.ns("evil", "web", "data")
    cid = ctr.create([f"{mine}:/data"], labels=EVIL, command=["cat", "/data/secret"])
    agent.wait_for(lambda d: any(c["id"] == cid for c in d["containers"]), what="the container")
    _swap_for_symlink(mine, victim)
    with pytest.raises(docker.errors.APIError) as excinfo:
        ctr.start(cid)
    assert "symlink" in denied(excinfo)


def _run_restarting(ctr: Containers, host: str, command: list[str]) -> str:
    """`docker run --restart always -v host:/data` for app evil; its id."""
    created = ctr.api.create_container(
        ctr.image,
        command=command,
        labels={**EVIL, "volagent.test": "1"},
        host_config=ctr.api.create_host_config(
            binds=[f"{host}:/data"], network_mode="none", restart_policy={"Name": "always"}
        ),
    )
    cid = str(created["Id"])
    ctr.start(cid)
    return cid


def _volume_in(agent: AgentProcess, cid: str, state: str, what: str) -> dict[str, Any]:
    return agent.wait_for(
        lambda d: any(
            c["id"] == cid and c["volumes"][0]["state"] == state for c in d["containers"]
        ),
        what=what,
        timeout=120,
    )


def _stopped(url: str, cid: str) -> dict[str, Any]:
    """The container's inspect data, once it no longer runs (bounded by a hang guard)."""
    api = docker.APIClient(base_url=url, version="auto", timeout=60)
    try:
        deadline = time.monotonic() + 30
        while api.inspect_container(cid)["State"]["Running"] and time.monotonic() < deadline:
            time.sleep(0.2)
        info: dict[str, Any] = api.inspect_container(cid)
        return info
    finally:
        api.close()


def test_symlink_swap_before_a_restart_by_restart_policy(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    # restart-policy restarts never reach an authorization plugin: the check after the
    # start finds the wrong mount, stops the container and says so
    agent = bed.agent
    assert agent is not None
    mine = agent.ns("evil", "web", "data")
    cid = _run_restarting(ctr, mine, ["sh", "-c", "cat /data/secret 2>/dev/null; sleep 1; exit 1"])
    _volume_in(agent, cid, "ready", "the volume ready")
    _swap_for_symlink(mine, victim)
    doc = _volume_in(agent, cid, "violation", "the swapped mount found")
    assert any("did not prepare" in w for w in doc["warnings"]), doc["warnings"]
    assert doc["status"] != "ok"
    info = _stopped(bed.engine.url, cid)
    assert not info["State"]["Running"]
    assert info["HostConfig"]["RestartPolicy"]["Name"] in ("no", "")


def test_guard_state_after_attacks_is_still_answering(bed: Guarded, ctr: Containers) -> None:
    # after every refusal above, legitimate work goes on
    still_serving(bed, ctr, OWNER)


def test_symlink_swap_while_dockerd_is_down(bed: Guarded, ctr: Containers, victim: str) -> None:
    # dockerd coming back starts `--restart always` containers without asking any plugin,
    # and the start events of that moment may never reach volagent
    agent = bed.agent
    assert agent is not None
    mine = agent.ns("evil", "web", "data")
    cid = _run_restarting(ctr, mine, ["sleep", "300"])
    _volume_in(agent, cid, "ready", "the volume ready")
    bed.engine.halt()
    _swap_for_symlink(mine, victim)
    bed.engine.start()
    doc = _volume_in(agent, cid, "violation", "the swapped mount found after dockerd came back")
    assert any("did not prepare" in w for w in doc["warnings"]), doc["warnings"]
    assert not _stopped(bed.engine.url, cid)["State"]["Running"]
