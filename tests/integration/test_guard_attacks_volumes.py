"""Named volumes made around the start guard, then used by an app container: each against a
real dockerd with `--authorization-plugin=volagent` and the guard on.

A local volume `type=none,o=bind,device=DIR` is a bind of DIR that any container of the host
may mount by its name. The guard refuses such a volume at `POST /volumes/create`, but one can
exist anyway: made before volagent ran, while the guard was off, or by a request whose body
dockerd kept from the plugin. The attacker (app `evil`) then mounts it by name: `-v NAME:/x`,
`--mount type=volume,src=NAME`, or `--volumes-from` a container that uses it. Each test is
named by the attack and asserts that the container is refused and reads nothing of app
`other`'s directory. Here the volume is made while the agent serves with `[guard] enabled =
false` (the plugin then allows every call), which stands for all the ways around it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import docker
import docker.errors
import docker.types
import pytest

from tests.testbed import Containers, app_labels, unixhttp
from tests.testbed.guarded import VICTIM_SECRET, Guarded, denied, still_serving

pytestmark = [pytest.mark.docker, pytest.mark.mount]

OWNER = "33:33"
EVIL = app_labels("evil", "web", owner=OWNER)
T = TypeVar("T")


def _guard_on(bed: Guarded, on: bool) -> None:
    agent = bed.agent
    assert agent is not None
    agent.config["guard"]["enabled"] = on
    agent.write_config()
    agent.restart()
    agent.wait_for(lambda d: d["mount"]["state"] in ("mounted", "local"), what="the mount")


def around_the_guard(bed: Guarded, make: Callable[[], T]) -> T:
    """`make()` while the agent answers dockerd with the guard off (the same agent, its
    mount and directories kept); then the guard is on again."""
    _guard_on(bed, False)
    try:
        return make()
    finally:
        _guard_on(bed, True)


@contextlib.contextmanager
def volume_made_around_the_guard(
    bed: Guarded, ctr: Containers, name: str, opts: Mapping[str, str]
) -> Iterator[str]:
    def make() -> str:
        ctr.api.create_volume(name, driver="local", driver_opts=dict(opts))
        return name

    around_the_guard(bed, make)
    try:
        yield name
    finally:
        for cid in ctr.ours():
            ctr.remove(cid)
        with contextlib.suppress(docker.errors.APIError):
            ctr.api.remove_volume(name, force=True)


def leaked(ctr: Containers, cid: str) -> bool:
    with contextlib.suppress(Exception):
        ctr.wait(cid, timeout=20)
    with contextlib.suppress(docker.errors.NotFound):
        return VICTIM_SECRET in ctr.logs(cid)
    return False


def run_refused(ctr: Containers, **host_config: Any) -> str:
    """An evil container reading /data/secret, created and started; the guard's refusal,
    which must come (and the container, if Docker made it, must not have read the secret)."""
    cid = None
    with pytest.raises(docker.errors.APIError) as excinfo:
        created = ctr.api.create_container(
            ctr.image,
            command=["cat", "/data/secret"],
            labels={**EVIL, "volagent.test": "1"},
            host_config=ctr.api.create_host_config(network_mode="none", **host_config),
        )
        cid = str(created["Id"])
        ctr.start(cid)
    assert cid is None or not leaked(ctr, cid), "the container read another app's data"
    return denied(excinfo)


def bind_volume_of(device: str) -> dict[str, str]:
    return {"type": "none", "o": "bind", "device": device}


# --- the three ways of mounting a volume by name -------------------------------------------------
def test_named_bind_volume_of_another_apps_directory_mounted_with_v(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    with volume_made_around_the_guard(bed, ctr, "nv-v", bind_volume_of(victim)) as name:
        text = run_refused(ctr, binds=[f"{name}:/data"])
    assert "reaches the shared filesystem" in text and "exists already" in text, text


def test_named_bind_volume_of_another_apps_directory_mounted_with_mount_type_volume(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    with volume_made_around_the_guard(bed, ctr, "nv-mount", bind_volume_of(victim)) as name:
        text = run_refused(ctr, mounts=[docker.types.Mount("/data", name, type="volume")])
        assert "reaches the shared filesystem" in text, text
        # a DriverConfig of harmless options does not make it another volume: Docker uses
        # the one that exists under the name, as it was made
        harmless = docker.types.Mount(
            "/data",
            name,
            type="volume",
            driver_config=docker.types.DriverConfig("local", {"type": "tmpfs", "device": "tmpfs"}),
        )
        assert "reaches the shared filesystem" in run_refused(ctr, mounts=[harmless])


def test_named_bind_volume_of_another_apps_directory_through_volumes_from(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    with volume_made_around_the_guard(bed, ctr, "nv-from", bind_volume_of(victim)) as name:
        # a container of no app that uses the volume, made around the guard as well
        holder = around_the_guard(
            bed, lambda: ctr.create([f"{name}:/data"], labels={}, command=["true"])
        )
        text = run_refused(ctr, volumes_from=[holder])
    assert "reaches the shared filesystem" in text, text


def test_named_bind_volume_of_the_hosts_root(bed: Guarded, ctr: Containers) -> None:
    with volume_made_around_the_guard(bed, ctr, "nv-root", bind_volume_of("/")) as name:
        text = run_refused(ctr, binds=[f"{name}:/data"])
    assert "reaches the shared filesystem" in text, text


# --- moments: a container made around the guard, started through it ------------------------------
def test_start_of_a_container_made_around_the_guard_with_a_named_bind_volume(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    with volume_made_around_the_guard(bed, ctr, "nv-start", bind_volume_of(victim)) as name:
        cid = around_the_guard(
            bed, lambda: ctr.create([f"{name}:/data"], labels=EVIL, command=["cat", "/data/secret"])
        )
        with pytest.raises(docker.errors.APIError) as excinfo:
            ctr.start(cid)
        assert "reaches the shared filesystem" in denied(excinfo)
        assert not leaked(ctr, cid)


def test_named_bind_volume_in_an_old_api_start_body(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    with volume_made_around_the_guard(bed, ctr, "nv-legacy", bind_volume_of(victim)) as name:
        plain = ctr.create([], labels=EVIL, command=["cat", "/data/secret"])
        body = json.dumps({"Binds": [f"{name}:/data"]}).encode()
        status, answer = unixhttp.request(
            bed.engine.socket_path,
            "POST",
            f"/v1.23/containers/{plain}/start",
            body,
            timeout=60,
        )
        assert status == 403, answer[:300]
        assert not leaked(ctr, plain)


# --- what legitimate apps do keeps working -------------------------------------------------------
def test_plain_and_tmpfs_named_volumes_still_work(bed: Guarded, ctr: Containers) -> None:
    tmpfs = {"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}
    try:
        ctr.api.create_volume("nv-tmpfs", driver="local", driver_opts=tmpfs)
        ctr.api.create_volume("nv-plain", driver="local")
        writer = ctr.run(
            ["nv-plain:/a", "nv-tmpfs:/b", "nv-new:/c"],
            labels=EVIL,
            command=["sh", "-c", "echo kept > /a/f && echo t > /b/f && echo n > /c/f"],
        )
        assert ctr.wait(writer) == 0, ctr.logs(writer)
        # --volumes-from the writer (a docker-compose `volumes_from`), and --mount by name
        reader = str(
            ctr.api.create_container(
                ctr.image,
                command=["sh", "-c", "cat /a/f /c/f /m/f"],
                labels={**EVIL, "volagent.test": "1"},
                host_config=ctr.api.create_host_config(
                    network_mode="none",
                    volumes_from=[writer],
                    mounts=[docker.types.Mount("/m", "nv-plain", type="volume")],
                ),
            )["Id"]
        )
        ctr.start(reader)
        assert ctr.wait(reader) == 0, ctr.logs(reader)
        assert ctr.logs(reader).split() == ["kept", "n", "kept"]
    finally:
        for cid in ctr.ours():
            ctr.remove(cid)
        for name in ("nv-tmpfs", "nv-plain", "nv-new"):
            with contextlib.suppress(docker.errors.APIError):
                ctr.api.remove_volume(name, force=True)
    still_serving(bed, ctr, OWNER)
