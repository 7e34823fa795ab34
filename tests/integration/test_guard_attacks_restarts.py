"""Restarts that outrun the check after a start, each against a real dockerd with
`--authorization-plugin=volagent` and the guard on.

Docker restarts a container by its restart policy, or after its own restart, without asking
any authorization plugin, and follows a symlink in a bind source at each start. The attacker
(app `evil`) runs a `--restart always` container whose entrypoint copies what its bind shows
into a directory of its own and exits at once, so no process is ever left to look at. Its
bind directory is then swapped for a symlink to app `other`'s directory, as a container of
another host binding the parent could do (the test does that part itself, as root). Each
test asserts that volagent stops it at its first look after the start onto the link:
restart policy `no`, not running, the volume `violation`, the status degraded, no start
after volagent stopped it, and, while volagent can ask dockerd, the other app's secret
copied at most once.

After dockerd's own restart, dockerd starts the container before it serves its API, and its
restart policy starts it again 0.1 s after it exits: volagent's first look comes once the API
answers (it connects when dockerd activates the plugin, just before), which is after one
start or, when dockerd's own start-up takes longer than that, two (2 of 8 runs here). That
test asserts volagent stopped it at that first look.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import docker
import pytest

from tests.testbed import AgentProcess, Containers, app_labels
from tests.testbed.guarded import VICTIM_SECRET, Guarded

pytestmark = [pytest.mark.docker, pytest.mark.mount]

OWNER = "33:33"
EVIL = app_labels("evil", "web", owner=OWNER)
# the entrypoint: copy what the bind shows into the app's own directory, exit at once
COPY_AND_EXIT = ["sh", "-c", "cat /data/secret >> /out/copies 2>/dev/null; exit 0"]


def _run_copier(ctr: Containers, agent: AgentProcess, tag: str) -> tuple[str, str, str]:
    """The attacker's `docker run --restart always`, started through the guard; its id, its
    bind directory and the file its copies go to."""
    mine = agent.ns("evil", "web", f"data-{tag}")
    out = agent.ns("evil", "web", f"out-{tag}")
    created = ctr.api.create_container(
        ctr.image,
        command=COPY_AND_EXIT,
        labels={**EVIL, "volagent.test": "1"},
        host_config=ctr.api.create_host_config(
            binds=[f"{mine}:/data", f"{out}:/out"],
            network_mode="none",
            restart_policy={"Name": "always"},
        ),
    )
    cid = str(created["Id"])
    ctr.start(cid)
    return cid, mine, os.path.join(out, "copies")


def _swap_for_symlink(path: str, target: str) -> None:
    os.rename(path, path + ".moved")
    os.symlink(target, path)


def _copies(path: str) -> int:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().count(VICTIM_SECRET)
    except FileNotFoundError:
        return 0


def _restarted(api: docker.APIClient, cid: str, times: int) -> None:
    """Waits until Docker has restarted the container `times` times by its policy (each
    restart waits twice as long as the one before: 0.1 s, 0.2 s, ...)."""
    deadline = time.monotonic() + 60
    while api.inspect_container(cid)["RestartCount"] < times:
        assert time.monotonic() < deadline, "Docker did not restart the container"
        time.sleep(0.05)


def _stopped_for_good(url: str, cid: str) -> dict[str, Any]:
    """The container's inspect data once it neither runs nor waits for a restart."""
    api = docker.APIClient(base_url=url, version="auto", timeout=60)
    try:
        deadline = time.monotonic() + 60
        while True:
            info: dict[str, Any] = api.inspect_container(cid)
            st = info["State"]
            if not st["Running"] and not st["Restarting"]:
                return info
            assert time.monotonic() < deadline, f"still {st['Status']}"
            time.sleep(0.1)
    finally:
        api.close()


def _starts_after_the_stop(url: str, cid: str, since: float) -> list[str]:
    """Docker's own record of the container's events since `since`: the starts that came
    after its last update (volagent's restart policy `no`, which follows its kill)."""
    api = docker.APIClient(base_url=url, version="auto", timeout=60)
    try:
        events = api.events(
            since=int(since), until=int(time.time()) + 1, filters={"container": cid}, decode=True
        )
        actions = [str(e.get("Action") or e.get("status")) for e in events]
    finally:
        api.close()
    assert "update" in actions, actions
    last = len(actions) - 1 - actions[::-1].index("update")
    return [a for a in actions[last:] if a == "start"]


def _assert_stopped_and_reported(
    bed: Guarded, cid: str, mine: str, copies: str, since: float
) -> int:
    """Asserts the container was stopped for good and reported; the copies it made."""
    agent = bed.agent
    assert agent is not None
    doc = agent.wait_for(
        lambda d: any(
            c["id"] == cid
            and any(v["host"] == mine and v["state"] == "violation" for v in c["volumes"])
            for c in d["containers"]
        ),
        what="the swapped bind found",
        timeout=60,
    )
    assert doc["status"] == "degraded", doc["status"]
    assert any("did not prepare" in w for w in doc["warnings"]), doc["warnings"]
    info = _stopped_for_good(bed.engine.url, cid)
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "no"
    assert not _starts_after_the_stop(bed.engine.url, cid, since)
    assert agent.metric("volagent_mount_mismatches_total") >= 1
    return _copies(copies)


def test_restart_policy_container_that_copies_and_exits_onto_a_swapped_symlink(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    agent = bed.agent
    assert agent is not None
    cid, mine, copies = _run_copier(ctr, agent, "policy")
    # a few restarts first: Docker's wait before the next one doubles each time, and from
    # 1.6 s on it is far longer than volagent's look at a start (no threshold asserted)
    _restarted(ctr.api, cid, 4)
    assert _copies(copies) == 0
    since = time.time()
    _swap_for_symlink(mine, victim)
    count = _assert_stopped_and_reported(bed, cid, mine, copies, since)
    assert count <= 1, f"the other app's secret was copied {count} times"


def test_restart_policy_container_started_by_dockerd_after_its_restart_onto_a_swapped_symlink(
    bed: Guarded, ctr: Containers, victim: str
) -> None:
    agent = bed.agent
    assert agent is not None
    cid, mine, copies = _run_copier(ctr, agent, "dockerd")
    _restarted(ctr.api, cid, 1)
    bed.engine.halt()
    _swap_for_symlink(mine, victim)
    since = time.time()
    bed.engine.start()  # starts the container again, asking no plugin
    count = _assert_stopped_and_reported(bed, cid, mine, copies, since)
    # stopped at volagent's first look: before it had listed and inspected every container
    events = [e.get("event") for e in agent.log_events()]
    connected = len(events) - 1 - events[::-1].index("docker_connected")
    seen = events[connected:]
    assert "mount_mismatch" in seen and "reconciled" in seen, seen
    assert seen.index("mount_mismatch") < seen.index("reconciled"), seen
    assert count >= 1  # dockerd's own start, before anyone could look


def test_a_bind_of_the_parent_of_a_containers_source_asked_while_volagent_restarts(
    bed: Guarded, ctr: Containers
) -> None:
    """The way in for every swap above: a container binding the parent of another's bind
    source. Refused while volagent runs (rule 7); asked again and again while it restarts,
    before its Docker watch has listed the containers it judges against (40 of the same app
    make that listing take a while), it must be refused every time."""
    agent = bed.agent
    assert agent is not None
    labels = {**EVIL, "volagent.test": "1"}
    inner = agent.ns("evil", "web", "data")
    outer = agent.ns("evil", "web")
    x = ctr.create([f"{inner}:/data"], labels=labels, command=["true"])
    for i in range(40):
        ctr.create([agent.ns("evil", f"filler{i}", "d") + ":/d"], labels=labels, command=["true"])
    with pytest.raises(docker.errors.APIError):
        ctr.create([f"{outer}:/p"], labels=labels, command=["true"])
    allowed: list[str] = []
    stop = threading.Event()

    def ask_again_and_again() -> None:
        c = Containers(bed.engine.url)
        try:
            while not stop.is_set():
                try:
                    allowed.append(c.create([f"{outer}:/p"], labels=labels, command=["true"]))
                    return
                except docker.errors.APIError:
                    time.sleep(0.005)
        finally:
            c.close()

    asker = threading.Thread(target=ask_again_and_again)
    agent.stop()
    asker.start()
    try:
        agent.start()
        agent.wait_for(lambda d: any(c["id"] == x for c in d["containers"]), what="its table")
        time.sleep(1)  # and a little longer: asked once the table is whole, refused as before
    finally:
        stop.set()
        asker.join(30)
    assert not allowed, f"{outer} was bound beside {inner} (container {x[:12]}): binds nest"
