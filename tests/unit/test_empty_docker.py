"""The benches' engine that runs nothing answers what volagent's Docker watch asks, through
the same client library: connect (ping, the version), list, subscribe to events."""

from __future__ import annotations

from pathlib import Path

import docker
from tests.testbed.empty_docker import EmptyDocker


def test_the_watch_client_connects_lists_nothing_and_waits_for_events(tmp_path: Path) -> None:
    with EmptyDocker(tmp_path) as engine:
        client = docker.APIClient(base_url=engine.url, version="auto", timeout=5)
        try:
            assert client.ping()
            assert client.containers(all=True) == []
            events = client.events(decode=True)  # the stream opens and stays quiet
            events.close()
        finally:
            client.close()
    assert not (tmp_path / "docker.sock").exists()
