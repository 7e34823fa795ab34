"""Rule 7 across the hosts of a rack, at the moment of each create: two hosts for real (two
private dockerds, each with its own agent serving its start guard, different host ids) on
one shared directory (both mount points are binds of one filesystem, so the registry's
byte-range lock is one lock for both agents, as on NFS).

The attacker is app `evil` on both hosts: a container on host 1 binds `.../web/lag`, one on
host 2 binds `.../web/lag/s1`. Were both allowed, the first could swap `s1` for a symlink to
another app's directory, and the second, at its next start (a restart policy, a dockerd
restart), would bind that directory. Each test asserts the nested create is refused at the
create, on whichever host comes second, every time.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker.errors
import pytest

from tests.testbed import Containers, app_labels, ensure_image
from tests.testbed.agent import AgentProcess
from tests.testbed.dockerd import Dockerd
from tests.testbed.guarded import VICTIM_SECRET
from tests.testbed.plugin_home import PluginHome
from tests.testbed.waiting import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.mount]

EVIL = app_labels("evil", "web", owner="33:33")
HEALTH = {"heartbeat_interval_s": 0.5, "stale_after_s": 3.0}


@dataclass
class Host:
    home: PluginHome
    engine: Dockerd
    agent: AgentProcess
    ctr: Containers

    def ns(self, *rest: str) -> str:
        return self.agent.ns("evil", "web", *rest)


def _host(name: str, rootfs: str, local_path: str | None) -> Host:
    home = PluginHome()
    engine = home.dockerd("--authorization-plugin=volagent", name=name)
    config = {"host_id": name, "health": HEALTH}
    if local_path is not None:
        config["mount"] = {"local_path": local_path}
    agent = home.agent(engine.url, local_tmpfs=local_path is None, config=config)
    agent.start()
    agent.wait_for(lambda d: d["mount"]["state"] == "local", what="the shared directory")
    engine.start()
    ensure_image(engine.client(), rootfs)
    return Host(home, engine, agent, Containers(engine.url))


def _close(host: Host) -> None:
    try:
        host.ctr.cleanup()
        host.ctr.close()
    finally:
        host.engine.stop()
        host.agent.close()
        host.home.close()


@pytest.fixture(scope="module")
def hosts(busybox_rootfs: str) -> Iterator[tuple[Host, Host]]:
    """Two hosts of rack r1 sharing host-1's directory."""
    one = _host("host-1", busybox_rootfs, None)
    try:
        two = _host("host-2", busybox_rootfs, one.agent.local_path)
        try:
            yield one, two
        finally:
            _close(two)
    finally:
        _close(one)


@pytest.fixture
def rack(hosts: tuple[Host, Host]) -> Iterator[tuple[Host, Host]]:
    one, two = hosts
    yield one, two
    for host in (one, two):
        host.ctr.cleanup()
    # the next test starts from a registry without the removed containers' entries
    wait_until(lambda: not _entries(one), "the registry emptied by the keepers", timeout=30)


@pytest.fixture
def victim(hosts: tuple[Host, Host]) -> str:
    """App other's directory with a secret, as host 1 sees it."""
    data = hosts[0].agent.ns("other", "web", "data")
    os.makedirs(data, exist_ok=True)
    with open(os.path.join(data, "secret"), "w") as f:
        f.write(VICTIM_SECRET)
    return data


def _registry(host: Host) -> dict[str, Any]:
    """The registry file of app evil's namespace, as the host sees it ({} when none)."""
    path = os.path.join(host.agent.mount_point, ".volagent", "registry", "r1-evil.json")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return {}
    assert isinstance(doc, dict)
    return doc


def _entries(host: Host) -> list[str]:
    return [e["path"] for e in _registry(host).get("entries", [])]


def _create(host: Host, src: str, **kwargs: object) -> str | None:
    """The container's id, or None when the start guard refused the create."""
    try:
        return host.ctr.create([f"{src}:/data"], labels=EVIL, **kwargs)  # type: ignore[arg-type]
    except docker.errors.APIError as exc:
        assert "authorization denied by plugin volagent" in str(exc), exc
        assert "nest" in str(exc) or "registry" in str(exc), exc
        return None


def test_two_hosts_racing_nested_creates_one_is_allowed_every_time(
    rack: tuple[Host, Host],
) -> None:
    one, two = rack
    for i in range(6):
        # each host in turn asks for the outer directory, the other for one inside it
        outer_host, inner_host = (one, two) if i % 2 == 0 else (two, one)
        start = threading.Barrier(2)

        def make(host: Host, src: str, start: threading.Barrier = start) -> str | None:
            start.wait()
            return _create(host, src, restart="always")

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            a = pool.submit(make, outer_host, outer_host.ns(f"lag{i}"))
            b = pool.submit(make, inner_host, inner_host.ns(f"lag{i}", "s1"))
            got = [a.result(), b.result()]
        assert sum(1 for g in got if g) == 1, f"round {i}: {got}"


def test_nest_then_swap_across_hosts_is_refused_at_the_create(
    rack: tuple[Host, Host], victim: str
) -> None:
    one, two = rack
    # host 1: a container that will swap s1 for a symlink to the victim's directory once
    # it is told to (a file appears), after host 2's inner bind was allowed
    swapper = one.ctr.run(
        [f"{one.ns('lag')}:/lag"],
        labels=EVIL,
        command=[
            "sh",
            "-c",
            "mkdir -p /lag/s1; while [ ! -e /lag/go ]; do sleep 0.05; done; "
            f"rm -r /lag/s1 && ln -s {victim} /lag/s1",
        ],
    )
    # host 2, a moment later: the inner bind, restarted by its policy after the swap (a
    # start no authorization plugin is asked about)
    reader = ["sh", "-c", "cat /data/secret 2>/dev/null; sleep 0.2"]
    inner = _create(two, two.ns("lag", "s1"), command=reader, restart="always")
    if inner is not None:  # the code before: allowed; the swap then hands it the secret
        two.ctr.start(inner)
        with open(os.path.join(one.ns("lag"), "go"), "w"):
            pass
        assert one.ctr.wait(swapper) == 0
        try:
            wait_until(lambda: VICTIM_SECRET in two.ctr.logs(inner), "the secret", timeout=20)
            leaked = "the restarted container printed the other app's secret"
        except AssertionError:
            leaked = "nothing leaked within 20 s"
        pytest.fail(f"the nested create was allowed on the other host: {leaked}")


def test_fast_exiting_entrypoint_on_one_host_then_the_nested_create_on_the_other(
    rack: tuple[Host, Host],
) -> None:
    one, two = rack
    # the inner bind first on host 2, its entrypoint gone before anything looks
    quick = two.ctr.run([f"{two.ns('fast', 's1')}:/data"], labels=EVIL, command=["true"])
    assert two.ctr.wait(quick) == 0
    # the outer one on host 1 would let its container swap s1 under host 2's container
    assert _create(one, one.ns("fast")) is None
    # the container's removal frees the path for the other host
    two.ctr.remove(quick)
    wait_until(lambda: _create(one, one.ns("fast")), "the outer create allowed once s1 is gone")


def test_the_registry_names_each_hosts_binds_relative_to_the_mount_point(
    rack: tuple[Host, Host],
) -> None:
    one, two = rack
    cid = two.ctr.create([f"{two.ns('named')}:/data"], labels=EVIL, name="named-one")
    assert cid
    doc = _registry(one)  # written before the create was allowed
    assert doc["format"] == 1 and doc["kind"] == "volagent.registry"
    entry = next(e for e in doc["entries"] if e["path"] == "r1-evil/web/named")
    assert entry["host"] == "host-2" and entry["time"] > 0
    # the create's name and request: the entry holds the path, so Docker's answer (the
    # container's id) is not written again
    assert entry["name"] == "named-one" and entry["ref"].startswith("request:")
    two.agent.wait_for(
        lambda d: any(cid.startswith(c.get("id") or "-") for c in d.get("containers") or ()),
        what="the container in the table",
    )
    assert _registry(one)["entries"] == doc["entries"]
