"""Bind sources spelled outside the shared filesystem that lead into it later, each against a
real dockerd with `--authorization-plugin=volagent` and the guard on.

A bind of a host path outside the mount point is not volagent's business while it stays
there, and one spelled outside that lands inside (a host symlink) is resolved on the host and
judged where it lands. But Docker resolves the path again at every start. The attacker (app
`evil`) binds a host directory of its own (`-v /tmp/scratch:/s`, which Docker makes), plants
a symlink there that leads to a harmless directory beside it, and binds the symlink into a
second container with a restart policy: judged at the create and at the start, it leads
outside. Then the first container points the symlink at app `other`'s directory, and the
second container's next start by its policy, which asks no plugin, mounts it. No nesting on
the shared filesystem is needed, so rule 7 does not stand in the way; each test asserts that
volagent's check after the start stops it as it stops a swapped directory of its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from tests.testbed import Containers, app_labels
from tests.testbed.guarded import VICTIM_SECRET, Guarded

pytestmark = [pytest.mark.docker, pytest.mark.mount]

OWNER = "33:33"
EVIL = app_labels("evil", "web", owner=OWNER)
# prints what its bind shows and exits at once: no process is left to look at
READ_AND_EXIT = ["sh", "-c", "cat /data/secret 2>/dev/null; exit 1"]


@pytest.fixture
def scratch() -> Iterator[str]:
    """A host directory outside the shared filesystem, for the attacker to bind."""
    path = tempfile.mkdtemp(prefix="volagent-scratch-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _sh(ctr: Containers, cid: str, script: str) -> None:
    exec_id = ctr.api.exec_create(cid, ["sh", "-c", script])["Id"]
    ctr.api.exec_start(exec_id)
    assert ctr.api.exec_inspect(exec_id)["ExitCode"] == 0, script


def _restarted(ctr: Containers, cid: str, times: int) -> None:
    """Waits until Docker has restarted the container `times` times by its policy (each
    restart waits twice as long as the one before: 0.1 s, 0.2 s, ...)."""
    deadline = time.monotonic() + 60
    while ctr.api.inspect_container(cid)["RestartCount"] < times:
        assert time.monotonic() < deadline, "Docker did not restart the container"
        time.sleep(0.05)


def _leaks_or_stopped(ctr: Containers, cid: str) -> tuple[int, dict[str, Any]]:
    """Waits until the container either printed the secret twice or neither runs nor waits
    for a restart; the number of times it printed it and its inspect data."""
    deadline = time.monotonic() + 60
    while True:
        info: dict[str, Any] = ctr.api.inspect_container(cid)
        count = ctr.logs(cid).count(VICTIM_SECRET)
        st = info["State"]
        if count >= 2 or (not st["Running"] and not st["Restarting"] and count >= 1):
            return count, info
        assert time.monotonic() < deadline, f"neither: {st['Status']}, {count} leaks"
        time.sleep(0.1)


def test_host_symlink_outside_the_mount_point_swapped_before_a_restart_policy_start(
    bed: Guarded, ctr: Containers, victim: str, scratch: str
) -> None:
    harmless = os.path.join(scratch, "harmless")
    planter = ctr.run([f"{scratch}:/s"], labels={**EVIL, "volagent.test": "1"})
    _sh(ctr, planter, f"mkdir /s/harmless && ln -s {harmless} /s/link")
    reader = ctr.create(
        [f"{scratch}/link:/data"],
        labels={**EVIL, "volagent.test": "1"},
        command=READ_AND_EXIT,
        restart="always",
    )
    ctr.start(reader)  # judged: the symlink leads outside the shared filesystem
    # a few restarts first: Docker's wait before the next one doubles each time, and from
    # 1.6 s on it is far longer than volagent's look at a start (no threshold asserted)
    _restarted(ctr, reader, 4)
    assert VICTIM_SECRET not in ctr.logs(reader)
    # the planter points the link at the other app's directory
    _sh(ctr, planter, f"ln -sfn {victim} /s/link")
    count, info = _leaks_or_stopped(ctr, reader)
    with contextlib.suppress(docker.errors.APIError):
        ctr.api.stop(reader, timeout=0)
    assert count <= 1, f"the other app's secret was read {count} times"
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "no"
    agent = bed.agent
    assert agent is not None
    doc = agent.wait_for(lambda d: d["status"] == "degraded", what="the warning", timeout=60)
    assert any("did not prepare" in w for w in doc["warnings"]), doc["warnings"]


def test_local_bind_volume_of_a_host_symlink_repointed_before_a_restart_policy_start(
    bed: Guarded, ctr: Containers, victim: str, scratch: str
) -> None:
    # the same through a volume: `type=none,o=bind,device=<the symlink>` is judged where the
    # device leads at the volume create and at each start through the API, and the local
    # driver mounts the device again at every start of a container using it
    harmless = os.path.join(scratch, "harmless")
    planter = ctr.run([f"{scratch}:/s"], labels={**EVIL, "volagent.test": "1"})
    _sh(ctr, planter, f"mkdir /s/harmless && ln -s {harmless} /s/link")
    name = "redirected"
    ctr.api.create_volume(
        name, driver="local", driver_opts={"type": "none", "o": "bind", "device": f"{scratch}/link"}
    )
    try:
        reader = ctr.create(
            [f"{name}:/data"],
            labels={**EVIL, "volagent.test": "1"},
            command=READ_AND_EXIT,
            restart="always",
        )
        ctr.start(reader)
        _restarted(ctr, reader, 4)
        assert VICTIM_SECRET not in ctr.logs(reader)
        _sh(ctr, planter, f"ln -sfn {victim} /s/link")
        count, info = _leaks_or_stopped(ctr, reader)
        with contextlib.suppress(docker.errors.APIError):
            ctr.api.stop(reader, timeout=0)
        assert count <= 1, f"the other app's secret was read {count} times"
        assert info["HostConfig"]["RestartPolicy"]["Name"] == "no"
    finally:
        ctr.remove(reader)
        with contextlib.suppress(docker.errors.APIError):
            ctr.api.remove_volume(name, force=True)
