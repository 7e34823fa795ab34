"""Rule 7 for host paths: the step-by-step resolver of bind sources outside the mount point
(volumes/locate.resolve), the rule on what it visits (nesting.host_path_nested), and the
Preparer holding a container's binds to it against the binds this host knows."""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.unit.factories import make_state

from volagent.nesting import HostBind, host_path_nested
from volagent.volumes.locate import MAX_LINKS, resolve
from volagent.volumes.preparer import ContainerSpec, Preparer
from volagent.worker import TimedWorker

LABELS = {"convox.app": "a", "convox.service": "web"}


# --- the resolver ------------------------------------------------------------------------------
def test_resolve_records_each_directory_each_symlink_and_where_it_leads(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "run").symlink_to("../run")  # as /var/run -> /run
    resolved, visited = resolve(f"{tmp_path}/var/run/docker.sock")
    assert resolved == f"{tmp_path}/run/docker.sock"
    assert visited[-1] == resolved
    for place in (f"{tmp_path}/var", f"{tmp_path}/var/run", f"{tmp_path}/run", str(tmp_path)):
        assert place in visited
    assert resolved == os.path.realpath(f"{tmp_path}/var/run/docker.sock")


def test_resolve_follows_absolute_and_chained_symlinks_and_takes_a_missing_tail_as_written(
    tmp_path: Path,
) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "link").symlink_to(tmp_path / "a")
    resolved, visited = resolve(f"{tmp_path}/s/link/missing/x")
    assert resolved == f"{tmp_path}/b/missing/x"
    for place in (f"{tmp_path}/s/link", f"{tmp_path}/a", f"{tmp_path}/b", f"{tmp_path}/b/missing"):
        assert place in visited


def test_resolve_gives_up_past_the_kernels_limit_of_symlinks(tmp_path: Path) -> None:
    (tmp_path / "l0").symlink_to(tmp_path / "l1")
    (tmp_path / "l1").symlink_to(tmp_path / "l0")
    with pytest.raises(OSError) as excinfo:
        resolve(f"{tmp_path}/l0")
    assert excinfo.value.errno == errno.ELOOP
    chain = tmp_path / "chain"
    chain.mkdir()
    (chain / "end").mkdir()
    previous = "end"
    for i in range(MAX_LINKS):  # exactly the limit: followed
        (chain / f"c{i}").symlink_to(previous)
        previous = f"c{i}"
    assert resolve(f"{chain}/{previous}")[0] == f"{chain}/end"


# --- the rule ----------------------------------------------------------------------------------
def _bind(path: str, resolved: str | None = None, *extra: str) -> HostBind:
    return HostBind(path, resolved or path, (*extra, path, *([resolved] if resolved else [])))


def test_a_source_leading_through_another_binds_source_is_refused() -> None:
    planter = _bind("/tmp/s")
    reader = _bind("/tmp/s/link", "/tmp/s/harmless", "/tmp", "/tmp/s")
    why = host_path_nested(reader, [(planter, "container p")])
    assert why is not None
    assert "inside /tmp/s, which container p binds" in why
    assert "a container that binds /tmp/s can change what this path leads to" in why
    # a symlink leading into another bind's source from anywhere
    elsewhere = _bind("/opt/link", "/tmp/s/x", "/opt", "/tmp", "/tmp/s")
    assert host_path_nested(elsewhere, [(planter, "container p")]) is not None


def test_a_source_containing_a_location_another_bind_visits_is_refused() -> None:
    reader = _bind("/tmp/s/link", "/tmp/s/harmless", "/tmp", "/tmp/s")
    why = host_path_nested(_bind("/tmp/s"), [(reader, "container r")])
    assert why is not None and "contains /tmp/s/link" in why and "container r" in why


def test_identical_sources_and_unrelated_ones_are_fine() -> None:
    sock = HostBind("/var/run/docker.sock", "/run/docker.sock", ("/var", "/var/run", "/run"))
    assert host_path_nested(sock, [(sock, "container a")]) is None
    assert host_path_nested(_bind("/tmp/s"), [(_bind("/tmp/s"), "container a")]) is None
    assert host_path_nested(_bind("/tmp/s"), [(_bind("/tmp/t"), "container a")]) is None
    assert host_path_nested(_bind("/tmp/s"), [(sock, "container a")]) is None


# --- the preparer ------------------------------------------------------------------------------
@pytest.fixture
def preparer(tmp_path: Path) -> Iterator[Preparer]:
    mp = tmp_path / "volumes"
    mp.mkdir()
    st = make_state(mp, mount_state=None, docker_state=None)
    worker = TimedWorker("test-fs")
    yield Preparer(st, worker)
    worker.close()


def _spec(cid: str, binds: list[str], labels: dict[str, str] | None = None) -> ContainerSpec:
    data: dict[str, Any] = {
        "Id": cid,
        "Name": f"/{cid}",
        "Config": {"Labels": LABELS if labels is None else labels, "Env": []},
        "HostConfig": {"Binds": binds},
    }
    return ContainerSpec.from_inspect(data)


async def _judged(preparer: Preparer, spec: ContainerSpec) -> list[str]:
    """The rule 7 violations `spec` gets, the container then recorded as known."""
    outcome = await preparer.prepare(spec)
    return [
        v.error or ""
        for v in (outcome.violations if outcome else [])
        if "rule 7" in (v.error or "")
    ]


async def test_preparer_refuses_a_bind_through_another_apps_containers_source(
    preparer: Preparer, tmp_path: Path
) -> None:
    scratch = tmp_path / "scratch"
    (scratch / "harmless").mkdir(parents=True)
    (scratch / "link").symlink_to(scratch / "harmless")
    # a container naming no app is the platform's: neither judged nor counted
    assert await _judged(preparer, _spec("o", [f"{scratch}:/s"], labels={})) == []
    assert preparer.state.containers["o"].spec.host_binds == ()
    assert await _judged(preparer, _spec("p", [f"{scratch}:/s"])) == []
    assert preparer.state.containers["p"].spec.host_binds[0].resolved == str(scratch)
    # the same host path twice is shared
    assert await _judged(preparer, _spec("q", [f"{scratch}:/s"])) == []
    errors = await _judged(preparer, _spec("r", [f"{scratch}/link:/data"]))
    assert len(errors) == 1 and "container p" in errors[0], errors
    # refused, it is still a container a restart policy may start: it counts
    assert await _judged(preparer, _spec("s", [f"{scratch}:/s"])) != []


async def test_preparer_judges_a_containers_own_binds_and_not_itself_at_its_start(
    preparer: Preparer, tmp_path: Path
) -> None:
    scratch = tmp_path / "scratch"
    (scratch / "dir").mkdir(parents=True)
    errors = await _judged(preparer, _spec("c", [f"{scratch}:/s", f"{scratch}/dir:/d"]))
    assert errors and all("the same container" in e for e in errors), errors
    preparer.state.forget_container("c")
    alone = _spec("d", [f"{scratch}/dir:/d"])
    assert await _judged(preparer, alone) == []
    # judged again (a start): its own record is not another
    assert await _judged(preparer, alone) == []


async def test_preparer_judges_the_device_of_a_local_bind_volume(
    preparer: Preparer, tmp_path: Path
) -> None:
    scratch = tmp_path / "scratch"
    (scratch / "link").mkdir(parents=True)
    assert await _judged(preparer, _spec("p", [f"{scratch}:/s"])) == []
    reader = _spec("r", [])
    reader.volume_devices = (f"{scratch}/link",)
    errors = await _judged(preparer, reader)
    assert len(errors) == 1 and f"{scratch}/link" in errors[0], errors
    # and the other way round: the device recorded, a bind of the directory holding it
    preparer.state.forget_container("p")
    preparer.state.forget_container("r")
    await preparer.prepare(dataclasses.replace(reader, id="r2", name="r2"))
    assert await _judged(preparer, _spec("p2", [f"{scratch}:/s"]))
