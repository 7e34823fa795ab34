"""Bodies dockerd keeps from its authorization plugin, and routes that mount without a
create, against a real dockerd started with `--authorization-plugin=volagent`.

dockerd hands a request body to the plugin only when it is application/json with a length
under 1 MiB (chunked ones only since the CVE-2024-41110 fix, and then under 1 MiB too), but
its handlers decode the body whatever its size. Each test sends raw HTTP to the engine's
socket, as an attacker with the Docker API would, and is named by the attack it stops.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
from typing import Any

import docker
import docker.errors
import pytest

from tests.integration.test_guard_attacks_routes import (
    EVIL,
    JSON,
    _Conn,
    body_of,
    leaked,
    removed_volumes,
)
from tests.testbed import Containers
from tests.testbed.guarded import VICTIM_SECRET, Guarded, still_serving

pytestmark = [pytest.mark.docker, pytest.mark.mount]

OWNER = "33:33"
PAST_1_MIB = "x" * ((1 << 20) + 16)


def raw(
    bed: Guarded,
    method: str,
    path: str,
    body: bytes,
    *,
    headers: dict[str, str],
    chunked: bool = False,
) -> tuple[int, bytes]:
    """One request to the guarded engine; its answer even when dockerd refused it before
    reading the whole body (the client's send then breaks)."""
    conn = _Conn(bed.engine.socket_path, 60)
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if chunked:
                conn.request(method, path, iter([body]), headers=headers, encode_chunked=True)
            else:
                conn.request(method, path, body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def padded(doc: dict[str, Any]) -> bytes:
    """`doc` with a key dockerd ignores, long enough that the plugin never sees the body."""
    return json.dumps({**doc, "Padding": PAST_1_MIB}).encode()


def refused_by_volagent(status: int, answer: bytes) -> None:
    assert status >= 400, f"allowed: {status} {answer[:300]!r}"
    assert b"authorization denied by plugin volagent" in answer, answer[:300]
    assert b"over 1 MiB" in answer, answer[:300]


def volume_exists(ctr: Containers, name: str) -> bool:
    try:
        ctr.api.inspect_volume(name)
    except docker.errors.NotFound:
        return False
    return True


# --- the attacks of the report ------------------------------------------------------------------
@pytest.mark.parametrize("target", ["victim", "host-root"])
def test_volume_create_padded_past_1_mib_binding_another_apps_directory(
    bed: Guarded, ctr: Containers, victim: str, target: str
) -> None:
    device = victim if target == "victim" else "/"
    name = f"evil-pad-{target}"
    doc = {
        "Name": name,
        "Driver": "local",
        "DriverOpts": {"type": "none", "o": "bind", "device": device},
    }
    with removed_volumes(ctr, name):
        status, answer = raw(bed, "POST", "/v1.41/volumes/create", padded(doc), headers=JSON)
        made = volume_exists(ctr, name)
        if made:  # then an app container uses it by name: the attack of the report
            cid = ctr.create(
                [f"{name}:/x"], labels=EVIL, command=["sh", "-c", "cat /x/secret /x/etc/hostname"]
            )
            with contextlib.suppress(docker.errors.APIError):
                ctr.start(cid)
            with contextlib.suppress(Exception):
                ctr.wait(cid, timeout=20)
            out = ctr.logs(cid)
            assert VICTIM_SECRET not in out and not out.strip(), (
                f"the app container read {out[:80]!r}"
            )
        assert not made, f"a padded volume create made a bind of {device} ({status})"
        refused_by_volagent(status, answer)


def test_old_api_start_whose_body_carries_binds_padded_past_1_mib(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    plain = ctr.create([], labels=EVIL, command=["cat", "/data/secret"])
    body = padded({"Binds": [f"{victim}:/data"]})
    status, answer = raw(bed, "POST", f"/v1.23/containers/{plain}/start", body, headers=JSON)
    assert not leaked(ctr, plain), f"the container read the secret (start answered {status})"
    refused_by_volagent(status, answer)


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-tar", ""])
def test_create_with_a_non_json_content_type(
    bed: Guarded, ctr: Containers, victim: str, ctype: str
) -> None:
    body = json.dumps(body_of({"Binds": [f"{victim}:/data"]})).encode()
    headers = {"Content-Type": ctype} if ctype else {}
    status, answer = raw(bed, "POST", "/v1.41/containers/create", body, headers=headers)
    assert status >= 400, answer  # by the guard, or by dockerd's own check of the type
    cids = [c["Id"] for c in ctr.api.containers(all=True, filters={"label": "volagent.test=1"})]
    assert not any(leaked(ctr, c) for c in cids if created_with_victim(ctr, c, victim))


def created_with_victim(ctr: Containers, cid: str, victim: str) -> bool:
    binds = ctr.api.inspect_container(cid)["HostConfig"].get("Binds") or []
    return any(b.startswith(victim) for b in binds)


# --- the class: every judged route with a hidden body -------------------------------------------
def _create(bed: Guarded, ctr: Containers, victim: str) -> tuple[str, dict[str, Any]]:
    return "/v1.41/containers/create", body_of({"Binds": [f"{victim}:/data"]})


def _volume(bed: Guarded, ctr: Containers, victim: str) -> tuple[str, dict[str, Any]]:
    opts = {"type": "none", "o": "bind", "device": victim}
    return "/v1.41/volumes/create", {"Name": "evil-class", "Driver": "local", "DriverOpts": opts}


def _legacy_start(bed: Guarded, ctr: Containers, victim: str) -> tuple[str, dict[str, Any]]:
    plain = ctr.create([], labels=EVIL, command=["cat", "/data/secret"])
    return f"/v1.23/containers/{plain}/start", {"Binds": [f"{victim}:/data"]}


def _privileged_exec(bed: Guarded, ctr: Containers, victim: str) -> tuple[str, dict[str, Any]]:
    cid = ctr.run([], labels=EVIL, command=["sleep", "300"])
    return f"/v1.41/containers/{cid}/exec", {"Cmd": ["true"], "Privileged": True}


ROUTES = {
    "create": _create,
    "volume-create": _volume,
    "old-api-start": _legacy_start,
    "privileged-exec": _privileged_exec,
}
# A route this dockerd does not have never reaches the plugin (404 first); the rule for the
# routes of a newer dockerd is tested in-process (tests/unit/test_guard_privilege.py).


@pytest.mark.parametrize("how", ["padded", "padded-and-chunked"])
@pytest.mark.parametrize("which", sorted(ROUTES))
def test_every_judged_route_with_a_body_hidden_from_the_guard(
    bed: Guarded, ctr: Containers, victim: str, which: str, how: str
) -> None:
    path, doc = ROUTES[which](bed, ctr, victim)
    with removed_volumes(ctr, "evil-class"):
        status, answer = raw(
            bed, "POST", path, padded(doc), headers=JSON, chunked=how == "padded-and-chunked"
        )
        assert not volume_exists(ctr, "evil-class")
    refused_by_volagent(status, answer)


# --- copies in and out of a container mount its binds again --------------------------------------
def test_docker_cp_out_of_a_stopped_container_whose_directory_was_swapped(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    # dockerd mounts a container's binds for `docker cp` (GET/PUT .../archive), following a
    # symlink in the bind source like a start does; this container never starts
    agent = bed.agent
    assert agent is not None
    mine = agent.ns("evil", "web", "cp-out")
    cid = ctr.create([f"{mine}:/data"], labels=EVIL, command=["true"])
    agent.wait_for(lambda d: any(c["id"] == cid for c in d["containers"]), what="the container")
    os.rename(mine, mine + ".moved")  # as from a container on another host of the rack
    os.symlink(victim, mine)
    try:
        stream, _ = ctr.api.get_archive(cid, "/data/secret")
        data = b"".join(stream)
    except docker.errors.APIError as exc:
        assert "authorization denied by plugin volagent" in str(exc), exc
        return
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile("secret")
        got = member.read().decode() if member else ""
    assert VICTIM_SECRET not in got, "docker cp read another app's secret"


def test_docker_cp_into_a_stopped_container_whose_directory_was_swapped(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    agent = bed.agent
    assert agent is not None
    mine = agent.ns("evil", "web", "cp-in")
    cid = ctr.create([f"{mine}:/data"], labels=EVIL, command=["true"])
    agent.wait_for(lambda d: any(c["id"] == cid for c in d["containers"]), what="the container")
    os.rename(mine, mine + ".moved")
    os.symlink(victim, mine)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("planted")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"pwned"))
    with contextlib.suppress(docker.errors.APIError):
        ctr.api.put_archive(cid, "/data", buf.getvalue())
    assert not os.path.exists(os.path.join(victim, "planted"))


def test_managed_plugin_from_a_tarball_with_host_mounts(bed: Guarded, ctr: Containers) -> None:
    # `docker plugin create` takes a rootfs and a config.json that mounts any host path; once
    # enabled it runs as root. No registry is needed, and no privilege is asked for.
    config = {
        "Description": "evil",
        "Entrypoint": ["/bin/sh"],
        "Interface": {"Types": ["docker.volumedriver/1.0"], "Socket": "evil.sock"},
        "Mounts": [{"Source": "/", "Destination": "/host", "Type": "bind", "Options": ["rbind"]}],
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        text = json.dumps(config).encode()
        info = tarfile.TarInfo("config.json")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
        rootfs = tarfile.TarInfo("rootfs")
        rootfs.type = tarfile.DIRTYPE
        tar.addfile(rootfs)
    status, answer = raw(
        bed,
        "POST",
        "/v1.41/plugins/create?name=evil-plugin",
        buf.getvalue(),
        headers={"Content-Type": "application/x-tar"},
    )
    try:
        assert status >= 400 and b"authorization denied by plugin volagent" in answer, answer
    finally:
        with contextlib.suppress(docker.errors.APIError):
            ctr.api.remove_plugin("evil-plugin", force=True)  # type: ignore[no-untyped-call]


def test_guard_still_answers_after_the_hidden_bodies(bed: Guarded, ctr: Containers) -> None:
    still_serving(bed, ctr, OWNER)
