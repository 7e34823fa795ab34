"""Named volumes judged where a container uses them: each looked up in Docker and judged
like a volume create, whatever made it; no lookup for a create that mounts none."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from tests.unit import factories
from tests.unit.guard_requests import LABELS, ask, create, decision, plugin_body

from volagent.guard.plugin import Guard
from volagent.state import AgentState
from volagent.volumes.namespace import volume_names_of
from volagent.volumes.preparer import Preparer
from volagent.worker import TimedWorker


@pytest.fixture
def worker() -> Iterator[TimedWorker]:
    w = TimedWorker("test-named", max_threads=1)
    yield w
    w.close()


@pytest.fixture
def state(mp: Path) -> AgentState:
    return factories.make_state(mp, guard={"enabled": True})


class Volumes:
    """Docker's volumes, as `GET /volumes/NAME` answers; remembers what was asked."""

    def __init__(self, volumes: Mapping[str, Mapping[str, Any]]) -> None:
        self.volumes = volumes
        self.asked: list[str] = []

    async def __call__(self, name: str) -> Mapping[str, Any] | None:
        self.asked.append(name)
        return self.volumes.get(name)


def guard_with(state: AgentState, worker: TimedWorker, volumes: Volumes) -> Guard:
    return Guard(state, Preparer(state, worker), inspect_volume=volumes)


def create_with(g: Guard, host_config: dict[str, Any]) -> dict[str, Any]:
    body = {"Image": "busybox", "Labels": LABELS, "HostConfig": host_config}
    return decision(ask(g, plugin_body("POST", "/v1.41/containers/create?name=w", body)))


def test_names_of_binds_and_mounts() -> None:
    hc = {
        "Binds": ["/abs:/a", "data:/d:ro", "data:/e", "/x"],
        "Mounts": [
            {"Type": "volume", "Source": "logs", "Target": "/l"},
            {"Type": "volume", "Source": "", "Target": "/anon"},
            {"Type": "bind", "Source": "/b", "Target": "/b"},
        ],
    }
    assert volume_names_of(hc) == ["data", "logs"]


def test_a_create_without_named_volumes_looks_nothing_up(
    state: AgentState, worker: TimedWorker, mp: Path
) -> None:
    volumes = Volumes({})
    g = guard_with(state, worker, volumes)
    assert create(g, "/tmp/x:/x") == {"Allow": True}
    assert volumes.asked == []
    assert state.metrics.registry.get_sample_value("volagent_guard_volume_lookups_total") == 0


def test_an_existing_bind_volume_of_the_shared_filesystem_is_refused_by_name(
    state: AgentState, worker: TimedWorker, mp: Path
) -> None:
    bind = {"Driver": "local", "Options": {"type": "none", "o": "bind", "device": f"{mp}/r1-b"}}
    volumes = Volumes({"stolen": bind})
    g = guard_with(state, worker, volumes)
    for hc in (
        {"Binds": ["stolen:/data"]},
        {"Mounts": [{"Type": "volume", "Source": "stolen", "Target": "/data"}]},
        # the DriverConfig is ignored by Docker for a volume that exists
        {
            "Mounts": [
                {
                    "Type": "volume",
                    "Source": "stolen",
                    "Target": "/data",
                    "VolumeOptions": {"DriverConfig": {"Name": "local", "Options": {}}},
                }
            ]
        },
    ):
        answer = create_with(g, hc)
        assert answer["Allow"] is False, hc
        assert "exists already" in answer["Msg"] and "stolen" in answer["Msg"]
    assert volumes.asked == ["stolen"] * 3


def test_missing_plain_tmpfs_and_plugin_volumes_are_allowed(
    state: AgentState, worker: TimedWorker
) -> None:
    volumes = Volumes(
        {
            "plain": {"Driver": "local", "Options": None},
            "tmp": {"Driver": "local", "Options": {"type": "tmpfs", "device": "tmpfs"}},
            "plugged": {"Driver": "some/plugin", "Options": {"o": "bind", "device": "/"}},
        }
    )
    g = guard_with(state, worker, volumes)
    answer = create_with(g, {"Binds": ["plain:/a", "tmp:/b", "plugged:/c", "new:/d"]})
    assert answer == {"Allow": True}
    assert volumes.asked == ["plain", "tmp", "plugged", "new"]


def test_a_named_volume_that_cannot_be_looked_up_is_refused(
    state: AgentState, worker: TimedWorker
) -> None:
    g = Guard(state, Preparer(state, worker))  # no Docker to ask
    answer = create_with(g, {"Binds": ["data:/data"]})
    assert answer["Allow"] is False
    assert "cannot be judged" in answer["Msg"]
