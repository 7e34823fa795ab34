"""Test containers on a private engine: labeled as the test's own, network off, and removed
after each test."""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import docker
import docker.errors
import docker.types

from tests.testbed.image import IMAGE

TEST_LABEL = "volagent.test"
T = TypeVar("T")


def app_labels(
    app: str, service: str, rack: str | None = None, owner: str | None = None, **extra: str
) -> dict[str, str]:
    """The labels of a rack's container: convox app/service (and rack), volagent.owner."""
    labels = {"convox.app": app, "convox.service": service}
    if rack is not None:
        labels["convox.rack"] = rack
    if owner is not None:
        labels["volagent.owner"] = owner
    labels.update(extra)
    return labels


class Containers:
    """Creates and runs test containers through the engine API (what `docker create` and
    `docker run` send), and removes every container labeled as a test's."""

    def __init__(self, url: str, image: str = IMAGE) -> None:
        self.url = url
        self.image = image
        self.api = docker.APIClient(base_url=url, version="auto", timeout=120, max_pool_size=64)

    def create(
        self,
        binds: Sequence[str] = (),
        *,
        labels: Mapping[str, str] | None = None,
        command: Sequence[str] = ("sleep", "300"),
        user: str | None = None,
        mounts: Sequence[Mapping[str, Any]] = (),
        env: Sequence[str] = (),
        name: str | None = None,
        restart: str | None = None,
    ) -> str:
        """`docker create`: returns the container id. `mounts` are HostConfig.Mounts entries
        of type bind, as {"Source": ..., "Target": ..., "ReadOnly": ...}; `restart` a restart
        policy's name (`always`)."""
        host_config = self.api.create_host_config(
            restart_policy={"Name": restart} if restart else None,
            binds=list(binds),
            network_mode="none",
            mounts=[
                docker.types.Mount(
                    target=m["Target"],
                    source=m["Source"],
                    type="bind",
                    read_only=bool(m.get("ReadOnly")),
                )
                for m in mounts
            ],
        )
        all_labels = {TEST_LABEL: "1", **(labels or {})}
        created = self.api.create_container(
            self.image,
            command=list(command),
            host_config=host_config,
            labels=all_labels,
            user=user or "",
            environment=list(env),
            name=name,
        )
        return str(created["Id"])

    def start(self, container_id: str) -> None:
        self.api.start(container_id)

    def run(self, binds: Sequence[str] = (), **kwargs: Any) -> str:
        """`docker run -d`: create, then start at once (the race the agent must live with)."""
        container_id = self.create(binds, **kwargs)
        self.start(container_id)
        return container_id

    def wait(self, container_id: str, timeout: float = 60) -> int:
        result = self.api.wait(container_id, timeout=timeout)
        return int(result.get("StatusCode", -1))

    def logs(self, container_id: str) -> str:
        return bytes(self.api.logs(container_id)).decode(errors="replace")

    def remove(self, container_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_container(container_id, force=True, v=False)

    def ours(self) -> list[str]:
        found = self.api.containers(all=True, filters={"label": f"{TEST_LABEL}=1"}, quiet=True)
        return [str(c["Id"]) for c in found]

    def cleanup(self) -> None:
        """Removes every test container on the engine, in parallel."""
        ids = self.ours()
        if ids:
            parallel(self.remove, ids, workers=8)

    def close(self) -> None:
        self.api.close()


def parallel(fn: Callable[[Any], T], items: Iterable[Any], workers: int = 20) -> list[T]:
    """Calls fn on every item at once (up to `workers` threads); results in item order.
    The first exception is raised after every call has finished."""
    items = list(items)
    if not items:
        return []
    with concurrent.futures.ThreadPoolExecutor(min(workers, len(items))) as pool:
        futures = [pool.submit(fn, item) for item in items]
        concurrent.futures.wait(futures)
    return [f.result() for f in futures]
