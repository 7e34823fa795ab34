"""Issue 2 acceptance: hostile input. A bad app label, a bind escaping with `..` into another
app, a bind through a symlink a container planted in its own namespace (to /etc, to another
app): nothing is created outside the namespace, the volume is `violation` with a reason, and
the daemon keeps running."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.testbed import AgentProcess, Containers, app_labels
from tests.testbed.agent import all_in, container
from tests.testbed.disk import namespaces_tree, tree

pytestmark = [pytest.mark.docker, pytest.mark.mount]

OWNER = "1234:1234"


@pytest.fixture
def etc_marker() -> Iterator[str]:
    """A name in the host's /etc that must never come to exist."""
    path = f"/etc/volagent-test-{uuid.uuid4().hex[:12]}"
    yield path
    if os.path.lexists(path):  # clean up the host even when the product failed
        os.rmdir(path) if os.path.isdir(path) else os.unlink(path)


def violation_of(agent: AgentProcess, cid: str) -> dict[str, object]:
    doc = agent.wait_for(lambda d: all_in(d, [cid], ["violation"]), what=f"{cid[:12]} violation")
    c = container(doc, cid)
    assert c is not None
    (vol,) = c["volumes"]
    assert isinstance(vol["error"], str)
    assert vol["error"]
    assert doc["status"] in ("degraded", "critical")
    return dict(vol)


def still_serving(agent: AgentProcess, containers: Containers) -> None:
    """The daemon is alive and still prepares an honest container."""
    path = agent.ns("honest", "web", uuid.uuid4().hex[:8])
    cid = containers.create([f"{path}:/d"], labels=app_labels("honest", "web", owner=OWNER))
    agent.wait_for(lambda d: all_in(d, [cid], ["ready"]), what="honest container ready")
    assert agent.running
    assert os.stat(path).st_uid == 1234


def test_app_label_climbing_out(
    agent: AgentProcess, containers: Containers, etc_marker: str
) -> None:
    app = "../../etc"
    ups = "../" * agent.mount_point.count("/")
    binds = [
        f"{agent.mount_point}/r1-{app}/web/data:/data",
        f"{agent.mount_point}/{ups}{etc_marker.lstrip('/')}:/etc-data",
    ]
    cid = containers.create(binds, labels=app_labels(app, "web", owner=OWNER))
    doc = agent.wait_for(lambda d: all_in(d, [cid], ["violation"]), what="violation")
    c = container(doc, cid)
    assert c is not None
    assert len(c["volumes"]) == 2
    for vol in c["volumes"]:
        assert vol["state"] == "violation"
        assert "rule 6" in vol["error"] and "app name" in vol["error"], vol
    assert not os.path.lexists(etc_marker)
    assert namespaces_tree(agent.mount_point) == []
    still_serving(agent, containers)


def test_dotdot_escape_into_another_app(agent: AgentProcess, containers: Containers) -> None:
    other = agent.ns("victim")
    os.makedirs(os.path.join(other, "web"))
    before = tree(other)
    bind = f"{agent.ns('attacker', 'web')}/../../r1-victim/web/stolen:/data"
    cid = containers.create([bind], labels=app_labels("attacker", "web", owner=OWNER))
    vol = violation_of(agent, cid)
    assert "rule 5" in str(vol["error"]) and ".." in str(vol["error"])
    assert tree(other) == before
    assert not os.path.exists(agent.ns("attacker"))
    still_serving(agent, containers)


def test_bind_into_another_apps_namespace(agent: AgentProcess, containers: Containers) -> None:
    cid = containers.create(
        [f"{agent.ns('victim', 'web', 'data')}:/data"],
        labels=app_labels("attacker", "web", owner=OWNER),
    )
    vol = violation_of(agent, cid)
    assert "rule 5" in str(vol["error"])
    assert namespaces_tree(agent.mount_point) == []


def test_bind_through_a_planted_symlink(
    agent: AgentProcess, containers: Containers, etc_marker: str
) -> None:
    # another app with data of its own, which the attacker wants to reach
    victim = containers.create(
        [f"{agent.ns('victim', 'web', 'data')}:/d"], labels=app_labels("victim", "web", owner=OWNER)
    )
    agent.wait_for(lambda d: all_in(d, [victim], ["ready"]), what="victim ready")
    victim_before = tree(agent.ns("victim"))

    # a container of app "attacker" plants links inside its own namespace
    plant = agent.ns("attacker", "web", "plant")
    planter = containers.run(
        [f"{plant}:/plant"],
        labels=app_labels("attacker", "web"),
        command=["sh", "-c", f"ln -s /etc /plant/to-etc && ln -s {agent.ns('victim')} /plant/to-b"],
    )
    assert containers.wait(planter) == 0, containers.logs(planter)
    assert os.readlink(os.path.join(plant, "to-etc")) == "/etc"
    # gone, so that what follows is about the links, not about binds nesting (rule 7)
    containers.remove(planter)
    agent.wait_for(lambda d: container(d, planter) is None, what="the planter forgotten")

    # later containers of the same app bind through them (created, never started: Docker
    # itself would follow the link at start)
    name = os.path.basename(etc_marker)
    through_etc = containers.create(
        [f"{plant}/to-etc/{name}:/data"], labels=app_labels("attacker", "web", owner=OWNER)
    )
    through_b = containers.create(
        [f"{plant}/to-b/web/new/data:/data"], labels=app_labels("attacker", "web", owner=OWNER)
    )
    for cid in (through_etc, through_b):
        vol = violation_of(agent, cid)
        assert "rule 4" in str(vol["error"]) and "symlink" in str(vol["error"]), vol

    assert not os.path.lexists(etc_marker)
    assert tree(agent.ns("victim")) == victim_before
    still_serving(agent, containers)
