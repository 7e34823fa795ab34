"""Fixtures of the integration test bed: one private dockerd per session with the busybox
image, test containers removed after each test, and the agent as a real process.

A module that needs an engine started differently (the start guard's
`--authorization-plugin=volagent`) uses `dockerd_factory`, or `Dockerd` from the testbed
package in a fixture of its own scope.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from tests.testbed import (
    IMAGE,
    AgentFactory,
    AgentProcess,
    Containers,
    Dockerd,
    DockerdFactory,
    build_rootfs_tar,
    ensure_image,
)
from tests.testbed import mounts as testbed_mounts
from tests.testbed.guarded import VICTIM_SECRET, Guarded
from tests.testbed.plugin_home import PluginHome


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The test image's root filesystem as a tarball, built once per session."""
    return build_rootfs_tar(str(tmp_path_factory.mktemp("image") / "rootfs.tar"))


@pytest.fixture(scope="session")
def dockerd(busybox_rootfs: str) -> Iterator[Dockerd]:
    """The session's private engine, with the busybox image imported."""
    engine = Dockerd()
    try:
        engine.start()
        ensure_image(engine.client(), busybox_rootfs)
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def docker_url(dockerd: Dockerd) -> str:
    return dockerd.url


@pytest.fixture(scope="session")
def docker_client(dockerd: Dockerd) -> docker.DockerClient:
    return dockerd.client()


@pytest.fixture(scope="session")
def busybox_image(dockerd: Dockerd) -> str:
    """The tag of the test image on the session engine."""
    return IMAGE


@pytest.fixture
def dockerd_factory(busybox_rootfs: str) -> Iterator[DockerdFactory]:
    """Starts extra private engines (`factory(*extra_args, with_image=True)`), each with
    the busybox image; all are stopped and removed after the test."""
    started: list[Dockerd] = []

    def factory(*extra_args: str, with_image: bool = True) -> Dockerd:
        engine = Dockerd(extra_args)
        started.append(engine)
        engine.start()
        if with_image:
            ensure_image(engine.client(), busybox_rootfs)
        return engine

    try:
        yield factory
    finally:
        for engine in reversed(started):
            engine.stop()


@pytest.fixture
def containers(dockerd: Dockerd) -> Iterator[Containers]:
    """Creates test containers on the session engine; removes them all after the test."""
    made = Containers(dockerd.url)
    try:
        yield made
    finally:
        made.cleanup()
        made.close()


@pytest.fixture
def agent_factory(request: pytest.FixtureRequest) -> Iterator[AgentFactory]:
    """Makes agents (`factory(docker_url=..., rack=..., config={...})`, not started); every
    one is stopped, its mounts undone and its directories removed after the test."""
    made: list[AgentProcess] = []

    def factory(docker_url: str | None = None, **kwargs: Any) -> AgentProcess:
        if docker_url is None:
            docker_url = request.getfixturevalue("docker_url")
        agent = AgentProcess(docker_url, **kwargs)
        made.append(agent)
        return agent

    try:
        yield factory
    finally:
        for agent in reversed(made):
            agent.close()
        for agent in made:
            assert not testbed_mounts.mounts_under(agent.base), "mounts left behind"


@pytest.fixture
def agent(agent_factory: AgentFactory) -> AgentProcess:
    """An agent on the session engine, started and answering."""
    return agent_factory().start()


# --- an engine that asks volagent's start guard (module scope: one engine per module) ------
@pytest.fixture(scope="module")
def guarded(busybox_rootfs: str) -> Iterator[Guarded]:
    home = PluginHome()
    engine = home.dockerd("--authorization-plugin=volagent")
    bed = Guarded(home, engine)
    try:
        bed.start_agent()  # dockerd activates its plugin at start: someone must answer
        engine.start()
        ensure_image(engine.client(), busybox_rootfs)
        yield bed
    finally:
        try:
            if bed.agent is None or not bed.agent.running:
                bed.start_agent()  # removing containers goes through the guard too
            Containers(engine.url).cleanup()
            with docker.APIClient(base_url=engine.url, version="auto") as api:
                for vol in (api.volumes() or {}).get("Volumes") or []:
                    api.remove_volume(vol["Name"], force=True)
        finally:
            engine.stop()
            bed.stop_agent()
            home.close()


@pytest.fixture
def bed(guarded: Guarded) -> Iterator[Guarded]:
    """The module's engine with an agent serving its guard (tests may swap in another)."""
    guarded.start_agent()
    yield guarded
    if guarded.agent is None or not guarded.agent.running:
        guarded.start_agent()
    made = Containers(guarded.engine.url)
    try:
        made.cleanup()
    finally:
        made.close()
    guarded.stop_agent(graceful=False)


@pytest.fixture
def ctr(bed: Guarded) -> Iterator[Containers]:
    made = Containers(bed.engine.url)
    yield made
    made.close()


@pytest.fixture
def victim(bed: Guarded) -> str:
    """Another app's directory (app `other`), holding a secret."""
    agent = bed.agent
    assert agent is not None
    data = agent.ns("other", "web", "data")
    os.makedirs(data, exist_ok=True)
    with open(os.path.join(data, "secret"), "w") as f:
        f.write(VICTIM_SECRET)
    return data
