"""The Preparer on real directories: ready, late (the disk says Docker made the directory
before volagent, for a container that had started), pending, violation, and a settled state
that is never re-judged."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.testbed.disk import owner_mode
from tests.unit.factories import make_state

from volagent.state import AgentState
from volagent.volumes.preparer import ContainerSpec, Outcome, Preparer
from volagent.worker import TimedWorker

# tests marked `root` have volagent make a directory (its parents root 0755, rule 2) or
# judge one another user owns (Docker makes missing bind sources root's)

LABELS = {"convox.app": "a", "convox.service": "web", "volagent.owner": "1234:1234"}


@pytest.fixture
def state(mp: Path) -> AgentState:
    return make_state(mp)


@pytest.fixture
def preparer(state: AgentState) -> Iterator[Preparer]:
    worker = TimedWorker("test-fs")
    yield Preparer(state, worker)
    worker.close()


def spec(
    mp: Path,
    *,
    rel: str = "r1-a/web/data",
    labels: dict[str, str] | None = None,
    started: bool = False,
    cid: str = "c1",
    user: str = "",
) -> ContainerSpec:
    inspect: dict[str, Any] = {
        "Id": cid,
        "Name": f"/{cid}",
        "Config": {"Labels": LABELS if labels is None else labels, "Env": [], "User": user},
        "HostConfig": {"Binds": [f"{mp}/{rel}:/data"]},
        "State": {
            "Running": started,
            "StartedAt": "2026-01-01T00:00:00Z" if started else "0001-01-01T00:00:00Z",
        },
    }
    return ContainerSpec.from_inspect(inspect)


async def run(
    preparer: Preparer,
    s: ContainerSpec,
    recheck: Callable[[], Awaitable[bool]] | None = None,
) -> Outcome:
    outcome = await preparer.prepare(s, recheck)
    assert outcome is not None
    return outcome


def docker_made(path: Path) -> None:
    """What Docker leaves when it creates a bind source at start: root:root 0755."""
    path.mkdir(parents=True)
    os.chown(path, 0, 0)
    os.chmod(path, 0o755)  # noqa: S103 - Docker's own mode, on purpose


@pytest.mark.root
async def test_missing_directory_is_created_ready(mp: Path, preparer: Preparer) -> None:
    outcome = await run(preparer, spec(mp))
    assert [v.state for v in outcome.volumes] == ["ready"]
    assert owner_mode(mp / "r1-a/web/data") == (1234, 1234, 0o755)
    assert preparer.state.verdict() == "ok"
    record = preparer.state.containers["c1"]
    assert (record.rack, record.app, record.service) == ("r1", "a", "web")


@pytest.mark.root
async def test_docker_made_dir_under_a_started_container_is_late(
    mp: Path, preparer: Preparer
) -> None:
    docker_made(mp / "r1-a/web/data")
    outcome = await run(preparer, spec(mp, started=True))
    (vol,) = outcome.volumes
    assert vol.state == "late"
    assert vol.error and "started before" in vol.error
    assert owner_mode(mp / "r1-a/web/data") == (
        0,
        0,
        0o755,
    )  # existing: never chowned after the fact
    assert preparer.state.verdict() == "degraded"  # late is a problem worth reporting


@pytest.mark.root
async def test_docker_made_dir_is_late_when_the_recheck_sees_it_started(
    mp: Path, preparer: Preparer
) -> None:
    docker_made(mp / "r1-a/web/data")
    calls = []

    async def started() -> bool:
        calls.append(1)
        return True

    (vol,) = (await run(preparer, spec(mp, started=False), started)).volumes
    assert vol.state == "late"
    assert calls == [1]


@pytest.mark.root
async def test_root_dir_of_a_container_not_started_is_ready(mp: Path, preparer: Preparer) -> None:
    # e.g. made by an operator before: existing data, not a race that was lost
    docker_made(mp / "r1-a/web/data")

    async def not_started() -> bool:
        return False

    (vol,) = (await run(preparer, spec(mp, started=False), not_started)).volumes
    assert vol.state == "ready"


@pytest.mark.root
async def test_existing_dir_with_another_owner_is_ready_not_late(
    mp: Path, preparer: Preparer
) -> None:
    leaf = mp / "r1-a/web/data"
    leaf.mkdir(parents=True)
    os.chown(leaf, 999, 999)
    (vol,) = (await run(preparer, spec(mp, started=True))).volumes
    assert vol.state == "ready"
    assert owner_mode(leaf)[:2] == (999, 999)


@pytest.mark.root
async def test_root_0755_asked_for_cannot_be_late(mp: Path, preparer: Preparer) -> None:
    docker_made(mp / "r1-a/web/data")
    labels = {"convox.app": "a", "convox.service": "web"}  # config default: 0:0 0755
    (vol,) = (await run(preparer, spec(mp, labels=labels, started=True))).volumes
    assert vol.state == "ready"


@pytest.mark.root
async def test_mode_label_difference_alone_makes_late(mp: Path, preparer: Preparer) -> None:
    docker_made(mp / "r1-a/web/data")
    labels = {"convox.app": "a", "convox.service": "web", "volagent.mode": "0700"}
    (vol,) = (await run(preparer, spec(mp, labels=labels, started=True))).volumes
    assert vol.state == "late"


@pytest.mark.root
async def test_late_stays_late_with_its_reason(mp: Path, preparer: Preparer) -> None:
    docker_made(mp / "r1-a/web/data")
    (first,) = (await run(preparer, spec(mp, started=True))).volumes
    (again,) = (await run(preparer, spec(mp, started=True))).volumes  # the next event or reconcile
    assert (again.state, again.error) == ("late", first.error)
    assert again.error


@pytest.mark.root
async def test_settled_state_is_never_rejudged(mp: Path, preparer: Preparer) -> None:
    s = spec(mp)
    (vol,) = (await run(preparer, s)).volumes
    assert vol.state == "ready"
    leaf = mp / "r1-a/web/data"
    os.chown(leaf, 0, 0)  # looks Docker-made now; the container has started since
    (vol,) = (await run(preparer, spec(mp, started=True))).volumes
    assert vol.state == "ready"


async def test_unhealthy_mount_leaves_pending_and_creates_nothing(
    mp: Path, state: AgentState, preparer: Preparer
) -> None:
    state.set_mount_state("stalled", "probe timed out")
    state.mount_dev = None
    (vol,) = (await run(preparer, spec(mp))).volumes
    assert vol.state == "pending"
    assert vol.error and "stalled" in vol.error
    assert os.listdir(mp) == []


async def test_mount_gone_underneath_leaves_pending(
    mp: Path, state: AgentState, preparer: Preparer
) -> None:
    state.mount_dev = os.stat(mp).st_dev + 1  # the healthy mount was on another device
    (vol,) = (await run(preparer, spec(mp))).volumes
    assert vol.state == "pending"
    assert os.listdir(mp) == []


async def test_cross_app_bind_is_a_violation(mp: Path, preparer: Preparer) -> None:
    (vol,) = (await run(preparer, spec(mp, rel="r1-b/web/data"))).volumes
    assert vol.state == "violation"
    assert vol.error and "rule 5" in vol.error
    assert os.listdir(mp) == []


async def test_symlink_in_the_namespace_is_a_violation(
    mp: Path, tmp_path: Path, preparer: Preparer
) -> None:
    (mp / "r1-a/web").mkdir(parents=True)
    target = tmp_path / "elsewhere"
    target.mkdir()
    (mp / "r1-a/web/link").symlink_to(target)
    (vol,) = (await run(preparer, spec(mp, rel="r1-a/web/link/data"))).volumes
    assert vol.state == "violation"
    assert vol.error and "rule 4" in vol.error
    assert os.listdir(target) == []


async def test_unlabeled_container_binding_the_shared_filesystem_is_a_violation(
    mp: Path, preparer: Preparer
) -> None:
    s = spec(mp, labels={})
    outcome = await preparer.prepare(s)
    assert outcome is not None
    (vol,) = outcome.volumes
    assert vol.state == "violation" and vol.error and "rule 6" in vol.error
    assert os.listdir(mp) == []
    # recorded all the same: its directory counts as in use
    assert [v.host for v in preparer.state.containers["c1"].volumes] == [vol.host]


@pytest.mark.root
async def test_numeric_user_owns_the_leaf(mp: Path, preparer: Preparer) -> None:
    labels = {"convox.app": "a", "convox.service": "web"}
    await run(preparer, spec(mp, labels=labels, user="33:44"))
    assert owner_mode(mp / "r1-a/web/data")[:2] == (33, 44)


async def test_a_directory_this_host_recorded_lately_is_not_touched(
    mp: Path, preparer: Preparer
) -> None:
    # this host's usage record of the directory is recent: the mtime gc reads is left alone
    # (gc reads the record); without one, an old mtime is set to now
    then = time.time() - 2 * 86400
    for rel in ("r1-a/web/data", "r1-b/web/data"):
        (mp / rel).mkdir(parents=True)
        for p in (mp / rel.split("/")[0], mp / rel.rsplit("/", 1)[0]):
            os.utime(p, (then, then))
    preparer.state.usage_recorded[("r1-a", "web")] = time.time() - 60
    await run(preparer, spec(mp, rel="r1-a/web/data", cid="c1"))
    b = {**LABELS, "convox.app": "b"}
    await run(preparer, spec(mp, rel="r1-b/web/data", labels=b, cid="c2"))
    assert os.stat(mp / "r1-a/web").st_mtime == pytest.approx(then)
    assert os.stat(mp / "r1-b/web").st_mtime > then + 86400


async def test_a_start_compares_with_the_create_walk(mp: Path, preparer: Preparer) -> None:
    # a start walks again; a directory swapped since the create (another inode at the path)
    # is judged from scratch, and the record of the path follows what is there now
    (mp / "r1-a/web/data").mkdir(parents=True)
    s = spec(mp)
    await run(preparer, s)
    host = f"{mp}/r1-a/web/data"
    first = preparer._walked[host].identity
    await preparer.prepare(s, rewalk=True)
    assert preparer._walked[host].identity == first
    (mp / "r1-a/web/data").rename(mp / "r1-a/web/old")
    (mp / "r1-a/web/data").mkdir()
    await preparer.prepare(s, rewalk=True)
    assert preparer._walked[host].identity != first
    assert preparer._walked[host].identity[-1][1] == os.stat(mp / "r1-a/web/data").st_ino
