"""The start guard against a real dockerd started with `--authorization-plugin=volagent`.

The engine runs in a mount namespace of its own where /run/docker/plugins is the test's
directory (see tests/testbed/plugin_home.py), and the plugin socket is held by the test the way
systemd's socket unit holds it, handed to each agent process it starts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from typing import Any

import docker
import docker.errors
import pytest

from tests.testbed import (
    Containers,
    Dockerd,
    app_labels,
    parallel,
    unixhttp,
)
from tests.testbed import mounts as testbed_mounts
from tests.testbed.agent import all_in, volumes
from tests.testbed.guarded import Guarded, denied
from tests.unit.factories import make_state
from volagent.volumes.preparer import Preparer
from volagent.watch.events import DockerWatch
from volagent.worker import TimedWorker

pytestmark = [pytest.mark.docker, pytest.mark.mount]

BURST = 100
BURST_CONCURRENCY = 16  # client-side bound: 2 shared cores, and every run is 2 API calls
OWNER = "33:33"


def docker_cli(engine: Dockerd, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "-H", engine.url, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "DOCKER_CONFIG": os.path.join(engine.base, "cli")},
    )


# --- acceptance -----------------------------------------------------------------------------
def test_a_burst_of_runs_finds_every_directory_ready(bed: Guarded, ctr: Containers) -> None:
    agent = bed.agent
    assert agent is not None
    binds = [agent.ns("burst", "web", f"d{i}") + ":/data" for i in range(BURST)]
    labels = app_labels("burst", "web", owner=OWNER)

    def run(bind: str) -> str:
        return ctr.run([bind], labels=labels, command=["stat", "-c", "%u:%g", "/data"])

    ids = parallel(run, binds, workers=BURST_CONCURRENCY)
    codes = parallel(ctr.wait, ids, workers=BURST_CONCURRENCY)
    outputs = parallel(ctr.logs, ids, workers=BURST_CONCURRENCY)
    assert codes == [0] * BURST
    assert [o.strip() for o in outputs] == [OWNER] * BURST
    mp_dev = os.stat(agent.mount_point).st_dev
    for i in range(BURST):
        assert os.stat(agent.ns("burst", "web", f"d{i}")).st_dev == mp_dev
    doc = agent.wait_for(lambda d: all_in(d, ids, ["ready"]), what="every volume ready")
    assert not [v for v in volumes(doc).values() if v["state"] == "late"]
    assert doc["guard"]["allowed"] >= 2 * BURST  # every create and every start


def test_hostile_binds_fail_with_the_guards_message(bed: Guarded, tmp_path: Any) -> None:
    agent = bed.agent
    assert agent is not None
    mp = agent.mount_point
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    os.makedirs(agent.ns("evil", "web"))
    os.symlink(str(elsewhere), agent.ns("evil", "web", "link"))
    os.symlink(agent.ns("other"), agent.ns("evil", "hop"))
    cases = {
        # the CLI may clean the path before sending it: either way it is refused
        f"{mp}/r1-evil/../r1-other/web/data": ("escapes through '..'", "outside app evil's"),
        agent.ns("other", "web", "data"): ("outside app evil's namespace",),
        agent.ns("evil", "web", "link", "data"): ("symlink",),
        agent.ns("evil", "hop", "web"): ("symlink",),
        mp: ("mount point root",),
    }
    before = docker_cli(bed.engine, "ps", "-aq")
    assert before.returncode == 0, before.stderr
    for host, reasons in cases.items():
        out = docker_cli(
            bed.engine,
            *("run", "--rm", "--network", "none", "-v", f"{host}:/data"),
            *("--label", "convox.app=evil", "--label", "convox.service=web"),
            *("--label", f"volagent.owner={OWNER}", "--label", "volagent.test=1"),
            *("volagent-test/busybox:latest", "true"),
        )
        assert out.returncode != 0, f"{host} was allowed\n{agent.diagnostics(80)}"
        assert "authorization denied by plugin volagent: volagent:" in out.stderr, out.stderr
        assert any(r in out.stderr for r in reasons), out.stderr
    assert docker_cli(bed.engine, "ps", "-aq").stdout == before.stdout  # nothing created
    assert not os.path.exists(agent.ns("other"))
    assert os.listdir(elsewhere) == []
    assert sorted(os.listdir(agent.ns("evil", "web"))) == ["link"]
    doc = agent.status()
    assert doc["guard"]["denied"] >= len(cases)
    status, metrics = unixhttp.request(agent.socket_path, "GET", "/metrics")
    assert status == 200
    assert b'volagent_guard_decisions_total{result="deny"}' in metrics
    assert b"volagent_guard_decision_seconds_count" in metrics


class Bindfs:
    """The shared filesystem's stand-in: a bindfs of an export, a server process we can stop
    (a hung filesystem) or kill (a dead one)."""

    def __init__(self, export: str, mount_point: str) -> None:
        self.export = export
        self.mount_point = mount_point
        os.makedirs(export, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        testbed_mounts.umount_lazy(self.mount_point)
        self.proc = subprocess.Popen(
            ["bindfs", "-f", self.export, self.mount_point],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while not testbed_mounts.is_mount_point(self.mount_point):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read() if self.proc.stderr else b""
                raise AssertionError(f"bindfs exited: {err.decode(errors='replace')}")
            assert time.monotonic() < deadline, "bindfs did not mount"
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        testbed_mounts.umount_lazy(self.mount_point)
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            if self.proc.stderr is not None:
                self.proc.stderr.close()


@pytest.mark.parametrize("outage", ["hung", "dead"])
def test_unhealthy_mount_denies_create_and_start(
    bed: Guarded, ctr: Containers, outage: str
) -> None:
    config = {
        "mount": {"probe_interval_s": 0.3, "probe_timeout_s": 1, "stalled_remount_after": 10**6}
    }
    agent = bed.home.agent(bed.engine.url, config=config, local_tmpfs=False)
    fs = Bindfs(os.path.join(agent.base, "export"), agent.local_path)
    healthy = ("mounted", "local")
    unhealthy = ("stalled",) if outage == "hung" else ("unmounted", "mounting")
    labels = app_labels("shop", "web", owner=OWNER)
    try:
        fs.start()
        bed.use(agent)
        early = ctr.create([agent.ns("shop", "web", "early") + ":/data"], labels=labels)

        fs.signal(signal.SIGSTOP if outage == "hung" else signal.SIGKILL)
        agent.wait_for(lambda d: d["mount"]["state"] in unhealthy, what=f"mount {unhealthy}")

        with pytest.raises(docker.errors.APIError) as excinfo:
            ctr.run([agent.ns("shop", "web", "new") + ":/data"], labels=labels)
        assert any(f"is {s}" in denied(excinfo) for s in unhealthy), str(excinfo.value)
        with pytest.raises(docker.errors.APIError) as excinfo:
            ctr.start(early)
        assert any(f"is {s}" in denied(excinfo) for s in unhealthy), str(excinfo.value)
        assert "not started" in str(excinfo.value)
        # containers without binds under the mount point keep working
        outside = os.path.join(bed.home.base, "outside")
        os.makedirs(outside, exist_ok=True)
        plain = ctr.run([f"{outside}:/host-dir:ro"], labels=labels, command=["true"])
        assert ctr.wait(plain) == 0

        if outage == "hung":
            fs.signal(signal.SIGCONT)
        else:
            # the dead mount goes; the agent mounts what is at local_path again (for mount
            # type local, the plain directory: restarting bindfs there would race with it)
            fs.close()
        agent.wait_for(lambda d: d["mount"]["state"] in healthy, what="recovery", timeout=120)
        ctr.start(early)
        probe = ["stat", "-c", "%u:%g", "/data"]
        again = ctr.run([agent.ns("shop", "web", "new") + ":/data"], labels=labels, command=probe)
        assert ctr.wait(again) == 0
        assert ctr.logs(again).strip() == OWNER
    finally:
        if fs.proc is not None and fs.proc.poll() is None:
            fs.signal(signal.SIGCONT)
        if bed.agent is agent and agent.running:
            ctr.cleanup()
            bed.stop_agent()
        fs.close()


def test_agent_restarts_lose_no_docker_call(bed: Guarded, ctr: Containers) -> None:
    agent = bed.agent
    assert agent is not None
    failures: list[str] = []
    calls = {"n": 0}
    stop = threading.Event()
    labels = app_labels("loop", "web", owner=OWNER)

    def loop() -> None:
        client = docker.APIClient(base_url=bed.engine.url, version="auto", timeout=120)
        i = 0
        try:
            while not stop.is_set() and i < 5000:
                i += 1
                try:
                    client.containers(all=True)
                    if i % 5 == 0:
                        bind = agent.ns("loop", "web", f"d{i}") + ":/data"
                        client.start(ctr.create([bind], labels=labels, command=["true"]))
                    calls["n"] += 1
                except Exception as exc:  # every failure is what this test looks for
                    failures.append(f"call {i}: {exc}")
        finally:
            client.close()

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        for _ in range(3):
            before = calls["n"]
            deadline = time.monotonic() + 60
            while calls["n"] < before + 10 and time.monotonic() < deadline:
                time.sleep(0.05)
            agent.stop()
            agent.start()
        before = calls["n"]
        deadline = time.monotonic() + 60
        while calls["n"] < before + 10 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join(180)
    assert not failures, failures[:5]
    assert calls["n"] >= 40
    assert agent.starts == 4


def test_malformed_and_oversized_plugin_requests(bed: Guarded, ctr: Containers) -> None:
    sock = bed.home.plugin_socket
    assert unixhttp.raw_exchange(sock, b"\x16\x03\x01 garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    huge = (
        b"POST /AuthZPlugin.AuthZReq HTTP/1.1\r\nHost: plugin\r\n"
        b"Content-Type: application/json\r\nContent-Length: 4294967296\r\n\r\n"
    )
    assert unixhttp.raw_exchange(sock, huge).startswith(b"HTTP/1.1 413")
    status, body = unixhttp.request(sock, "POST", "/AuthZPlugin.AuthZReq", b'{"RequestUri": 7}')
    assert status == 400 and b'"Err"' in body
    status, body = unixhttp.request(sock, "POST", "/AuthZPlugin.AuthZReq", b"[" * 200_000)
    assert status == 400
    # the guard is alive, and Docker through it
    status, body = unixhttp.request(sock, "POST", "/Plugin.Activate", b"")
    assert (status, body.strip()) == (200, b'{"Implements":["authz"]}')
    assert ctr.api.ping()


def test_a_chunked_create_does_not_slip_past(bed: Guarded) -> None:
    # A chunked body has no length: dockerd before the CVE-2024-41110 fix did not forward it
    # to plugins (the guard then denies a create it cannot see), later ones do. Either way a
    # bind into another app's namespace is refused.
    agent = bed.agent
    assert agent is not None
    body = json.dumps(
        {
            "Image": "volagent-test/busybox:latest",
            "Labels": {"convox.app": "evil", "convox.service": "web", "volagent.test": "1"},
            "HostConfig": {"Binds": [agent.ns("other", "web", "data") + ":/data"]},
        }
    ).encode()
    chunked = (
        b"POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n"
    )
    answer = unixhttp.raw_exchange(bed.engine.socket_path, chunked, timeout=60)
    head = answer.split(b"\r\n", 1)[0]
    assert b" 403 " in head, answer[:300]
    assert b"authorization denied by plugin volagent" in answer
    assert not os.path.exists(agent.ns("other"))


def test_guard_off_with_its_socket_handed_over_allows_everything(
    bed: Guarded, ctr: Containers
) -> None:
    # `[guard] enabled = false` while systemd still hands over the plugin socket: dockerd
    # keeps asking there, so volagent answers (allowing all) instead of leaving it hanging
    agent = bed.use(bed.home.agent(bed.engine.url, config={"guard": {"enabled": False}}))
    cid = ctr.create(
        [agent.ns("other", "web", "data") + ":/data"], labels=app_labels("evil", "web")
    )
    assert ctr.api.inspect_container(cid)["Id"] == cid
    doc = agent.status()
    assert doc["guard"]["enabled"] is False
    assert any("hands over the guard socket" in w for w in doc["warnings"])


async def test_the_guards_lookups_do_not_wait_for_the_event_stream(
    bed: Guarded, ctr: Containers, tmp_path: Any
) -> None:
    """Just after volagent (re)starts, the guard may be asked to judge a VolumesFrom before
    the Docker watch has connected its event stream: dockerd is up (it is the one asking),
    so the lookup asks Docker itself instead of failing (which denies the create)."""
    source = ctr.create([], labels=app_labels("other", "web", owner=OWNER))
    state = make_state(
        tmp_path, mount_state=None, docker_state=None, docker={"url": bed.engine.url}
    )
    worker = TimedWorker("test")
    watch = DockerWatch(state, Preparer(state, worker))  # never run: no stream, no client

    async def lookups() -> tuple[Any, Any]:
        return await watch.inspect(source), await watch.inspect("no-such-container")

    try:
        found, missing = await lookups()
    finally:
        worker.close()
        if watch._lookup_client is not None:
            watch._lookup_client.close()  # the daemon keeps it for its lifetime
    assert found is not None and found["Id"] == source
    assert missing is None
