"""The Docker watch, transition by transition: the events it handles (create, start, restart,
destroy, rename) and the ones it ignores; the stream ending and the reconnect with `since`;
the reconcile that forgets what Docker no longer has, but not what was added while Docker was
listing; the start of containers Docker gave up on while the mount was away; the check
after a start that stops a container with a mount volagent did not prepare.

The watch, the Preparer and its directory walk run for real on a temporary mount point. Faked
at the boundary: docker-py's APIClient (a small in-memory engine answering with docker-py's
shapes: inspect dicts, `containers()` lists of dicts with "Id", an events generator of
dicts), and the mount tables the check after a start reads (/proc/<pid>/mountinfo of the
container's process). Every step waits for a condition, never for the wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import tenacity
from tests.unit.changes import GUARD_S, Changes, capturing_logs
from tests.unit.factories import make_state

from volagent.mount import table
from volagent.state import AgentState, ContainerRecord
from volagent.volumes import mount_check
from volagent.volumes.preparer import Preparer
from volagent.watch import events
from volagent.watch.events import DockerWatch
from volagent.worker import TimedWorker

ZERO_TIME = "0001-01-01T00:00:00Z"


# --- docker-py's APIClient, in memory -------------------------------------------------------
class Stream:
    """What `APIClient.events(decode=True)` returns: a generator of event dicts that ends when
    the daemon closes the connection, with `close()` (docker-py's CancellableStream)."""

    _END = object()

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.closed = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        item = self._q.get()
        if item is self._END:
            self._q.put(self._END)
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        event: dict[str, Any] = item
        return event

    def push(self, event: dict[str, Any]) -> None:
        self._q.put(event)

    def end(self) -> None:
        self._q.put(self._END)

    def fail(self, exc: BaseException) -> None:
        """The connection breaks mid-stream: iterating raises, as urllib3 does."""
        self._q.put(exc)

    def close(self) -> None:
        self.closed = True
        self.end()


class Engine:
    """The containers and the calls volagent makes, answered the way docker-py does."""

    def __init__(self, changes: Changes) -> None:
        self.changes = changes
        self.data: dict[str, dict[str, Any]] = {}  # id -> inspect data
        self.streams: list[Stream] = []
        self.events_calls: list[dict[str, Any]] = []
        self.list_calls: list[dict[str, Any]] = []
        self.inspected: list[str] = []
        self.started: list[str] = []
        self.killed: list[str] = []
        self.updated: list[tuple[str, dict[str, Any]]] = []
        self.clients: list[dict[str, Any]] = []
        self.during_list: Callable[[], None] | None = None  # runs while a list is in flight
        self.fail_start: set[str] = set()
        self.fail_pings = 0  # the next pings that find nobody answering
        self.pings = 0
        self.hold_inspect: dict[str, threading.Event] = {}  # id -> answer once it is set
        self.fail_kill = False
        self._lock = threading.Lock()
        self.closed = 0  # clients volagent closed (those whose first ping failed)

    def client(self, **kwargs: Any) -> Engine:
        """Stands in for `docker.APIClient(...)`."""
        self.clients.append(kwargs)
        return self

    def _called(self) -> None:
        self.changes.poke()

    # docker.APIClient's methods, same names and shapes
    def close(self) -> None:
        self.closed += 1

    def ping(self) -> bool:
        with self._lock:
            self.pings += 1
            fail, self.fail_pings = self.fail_pings > 0, max(0, self.fail_pings - 1)
        self._called()
        if fail:
            # what docker-py raises when the socket is there but nobody listens
            raise docker.errors.DockerException(
                "Error while fetching server API version: ('Connection aborted.', "
                "ConnectionRefusedError(111, 'Connection refused'))"
            )
        return True

    def events(
        self,
        since: Any = None,
        until: Any = None,
        filters: dict[str, Any] | None = None,
        decode: bool | None = None,
    ) -> Stream:
        stream = Stream()
        with self._lock:
            self.events_calls.append({"since": since, "filters": filters, "decode": decode})
            self.streams.append(stream)
        self._called()
        return stream

    def inspect_container(self, container: str) -> dict[str, Any]:
        self.inspected.append(container)
        data = self.data.get(container)
        held = self.hold_inspect.pop(container, None)
        self._called()
        if held is not None:
            held.wait(GUARD_S)  # Docker answered; the answer is still on its way
        if data is None:
            raise docker.errors.NotFound(f"No such container: {container}")
        return data

    def containers(
        self, all: bool = False, filters: dict[str, Any] | None = None, **_: Any
    ) -> list[dict[str, Any]]:
        self.list_calls.append({"all": all, "filters": filters})
        statuses = (filters or {}).get("status")
        out = []
        for cid, data in list(self.data.items()):
            status = data["State"]["Status"]
            if not all and status != "running":
                continue
            if statuses and status not in statuses:
                continue
            out.append(
                {
                    "Id": cid,
                    "Names": [data["Name"]],
                    "Image": "alpine",
                    "State": status,
                    "Status": status,
                    "Labels": data["Config"]["Labels"],
                }
            )
        if self.during_list is not None:
            hook, self.during_list = self.during_list, None
            hook()
        self._called()
        return out

    def start(self, container: str) -> None:
        if container in self.fail_start:
            raise docker.errors.APIError(f"cannot start {container}")
        # as Docker: a started container runs, its last error gone (a reconcile meanwhile
        # must not find it exited and start it again)
        if container in self.data:
            self.data[container]["State"].update(Status="running", Running=True, Error="")
        self.started.append(container)
        self._called()

    def kill(self, container: str, signal: Any = None) -> None:
        if self.fail_kill:
            raise docker.errors.APIError("kill refused")
        self.killed.append(container)
        self._called()

    def update_container(self, container: str, **kwargs: Any) -> dict[str, Any]:
        self.updated.append((container, kwargs))
        self._called()
        return {"Warnings": []}

    # the test's side of the engine
    def add(
        self,
        cid: str,
        *,
        binds: list[str] | None = None,
        labels: dict[str, str] | None = None,
        status: str = "created",
        pid: int = 0,
        policy: str = "no",
        error: str = "",
    ) -> dict[str, Any]:
        running = status == "running"
        data: dict[str, Any] = {
            "Id": cid,
            "Name": f"/{cid}",
            "Config": {"Labels": labels or {}, "Env": [], "User": "", "Image": "alpine"},
            "HostConfig": {
                "Binds": binds or [],
                "RestartPolicy": {"Name": policy, "MaximumRetryCount": 0},
            },
            "State": {
                "Status": status,
                "Running": running,
                "Pid": pid if running else 0,
                "ExitCode": 0,
                "Error": error,
                "StartedAt": "2026-11-29T10:00:00.000000000Z" if running else ZERO_TIME,
            },
            "Mounts": [
                {
                    "Type": "bind",
                    "Source": b.split(":")[0],
                    "Destination": b.split(":")[1],
                    "Mode": "",
                    "RW": True,
                    "Propagation": "rprivate",
                }
                for b in binds or []
            ],
        }
        self.data[cid] = data
        return data

    def emit(self, action: str, cid: str, nano: int = 1_764_410_000_000_000_000) -> None:
        """An event of the newest stream, as docker-py decodes it."""
        name = self.data[cid]["Name"].lstrip("/") if cid in self.data else cid
        self.streams[-1].push(
            {
                "status": action,
                "id": cid,
                "from": "alpine",
                "Type": "container",
                "Action": action,
                "Actor": {"ID": cid, "Attributes": {"image": "alpine", "name": name}},
                "scope": "local",
                "time": nano // 1_000_000_000,
                "timeNano": nano,
            }
        )


@dataclass
class Bed:
    mp: Path
    state: AgentState
    engine: Engine
    changes: Changes
    tables: dict[str, list[table.MountEntry]] = field(default_factory=dict)
    logs: list[dict[str, Any]] = field(default_factory=list)
    upserts: list[str] = field(default_factory=list)  # container ids, as recorded
    docker_states: list[tuple[str, str | None]] = field(default_factory=list)
    checked: list[int] = field(default_factory=list)  # pids whose mounts were read

    @property
    def labels(self) -> dict[str, str]:
        return {
            "convox.app": "a",
            "convox.service": "web",
            "volagent.owner": f"{os.getuid()}:{os.getgid()}",
        }

    def bind(self, rel: str, at: str = "/data") -> str:
        return f"{self.mp}/{rel}:{at}"

    def events(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.logs
            if e["event"] == name and all(e.get(k) == v for k, v in fields.items())
        ]

    def metric(self, name: str, **labels: str) -> float | None:
        return self.state.metrics.registry.get_sample_value(name, labels)

    def volume_states(self, cid: str) -> list[str]:
        record = self.state.containers.get(cid)
        return [v.state for v in record.volumes] if record else []

    async def until(self, pred: Callable[[], bool], what: str) -> None:
        await self.changes.until(pred, what)

    def sees(self, pid: int, mounts: dict[str, str]) -> None:
        """What process `pid` has mounted: container path -> path under the mount point."""
        dev = os.stat(self.mp).st_dev
        self.tables[f"/proc/{pid}/mountinfo"] = [
            table.MountEntry(
                mount_id=500 + i,
                parent_id=1,
                dev=dev,
                root="/" + os.path.relpath(host, self.mp),
                mount_point=ctr,
                options="rw",
                fstype="nfs4",
                source="server:/",
                super_options="rw",
            )
            for i, (ctr, host) in enumerate(mounts.items())
        ]


@pytest.fixture
def bed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bed]:
    mp = tmp_path / "mp"
    mp.mkdir()
    changes = Changes()
    engine = Engine(changes)
    state = make_state(mp, docker_state=None)
    b = Bed(mp=mp, state=state, engine=engine, changes=changes)
    # the host's mount table: the shared filesystem (its root) at the mount point
    b.tables[table.MOUNTINFO] = [
        table.MountEntry(1, 0, os.stat(mp).st_dev, "/", str(mp), "rw", "nfs4", "server:/", "rw")
    ]

    def read_table(path: str = table.MOUNTINFO) -> list[table.MountEntry]:
        if path.startswith("/proc/") and path != table.MOUNTINFO:
            b.checked.append(int(path.split("/")[2]))
        return list(b.tables.get(path, []))

    monkeypatch.setattr(docker, "APIClient", engine.client)
    monkeypatch.setattr(mount_check, "read_table", read_table)
    real_upsert, real_docker_state = state.upsert_container, state.set_docker_state

    def upsert(rec: ContainerRecord) -> None:
        b.upserts.append(rec.id)
        real_upsert(rec)

    def docker_state(st: str, error: str | None = None) -> None:
        b.docker_states.append((st, error))
        real_docker_state(st, error)

    state.upsert_container = upsert  # type: ignore[method-assign]
    state.set_docker_state = docker_state  # type: ignore[method-assign]

    with capturing_logs(b.logs, changes):
        yield b


@contextlib.asynccontextmanager
async def watching(b: Bed) -> AsyncIterator[DockerWatch]:
    """The watch running, connected, its first reconcile done."""
    b.changes.bind()
    worker = TimedWorker("test-fs")
    watch = DockerWatch(b.state, Preparer(b.state, worker))
    task = asyncio.create_task(watch.run())
    b.changes.watch(task)

    async def relay_state_changes() -> None:  # the state's changes wake the test too
        while True:
            await b.state.changed()
            b.changes.poke()

    relay = asyncio.create_task(relay_state_changes())
    first = asyncio.create_task(watch.first_attempt_done.wait())
    first.add_done_callback(lambda _: b.changes.poke())
    try:
        await b.until(watch.first_attempt_done.is_set, "the first reconcile")
        yield watch
    finally:
        first.cancel()
        relay.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for stream in b.engine.streams:
            stream.end()  # the reader threads finish
        worker.close()


# --- events -------------------------------------------------------------------------------
async def test_events_drive_the_records(bed: Bed) -> None:
    eng = bed.engine
    data_dir = bed.mp / "r1-a/web/data"

    async with watching(bed):
        eng.add("c1", binds=[bed.bind("r1-a/web/data")], labels=bed.labels)
        eng.emit("create", "c1")
        await bed.until(lambda: bed.upserts == ["c1"], "c1 recorded")
        assert bed.volume_states("c1") == ["ready"]
        assert data_dir.is_dir()
        assert bed.state.containers["c1"].name == "c1"
        assert bed.metric("volagent_containers") == 1

        # renamed: the record follows, and lookups by the old name find nothing
        eng.data["c1"]["Name"] = "/c1-renamed"
        eng.emit("rename", "c1")
        await bed.until(lambda: bed.upserts == ["c1", "c1"], "rename")
        assert bed.state.container_named("c1-renamed") is bed.state.containers["c1"]
        assert bed.state.container_named("c1") is None

        # started, and restarted: looked at again and its mounts checked
        eng.data["c1"]["State"].update(Running=True, Status="running", Pid=4242)
        bed.sees(4242, {"/data": str(data_dir)})
        for n, action in enumerate(("start", "restart"), start=3):
            eng.emit(action, "c1")
            await bed.until(lambda n=n: bed.upserts.count("c1") >= n, action)
        assert bed.state.containers["c1"].started
        await bed.until(lambda: bed.checked != [], "the mounts checked")

        # what volagent does not handle is counted, not acted on
        seen = len(eng.inspected)
        eng.emit("die", "c1")
        eng.emit("exec_start: sh -c true", "c1")
        del eng.data["c1"]
        eng.emit("destroy", "c1")
        await bed.until(lambda: "c1" not in bed.state.containers, "destroy")
        assert len(eng.inspected) == seen  # none of the three was inspected
    assert bed.metric("volagent_containers") == 0
    assert bed.state.container_named("c1-renamed") is None
    assert bed.metric("volagent_docker_events_total") == 7
    assert bed.state.docker.events == 7
    assert bed.engine.killed == []  # its mounts were the prepared ones
    assert data_dir.is_dir()  # a destroyed container's data stays


async def test_an_event_for_a_container_already_gone_forgets_it(bed: Bed) -> None:
    async with watching(bed):
        bed.engine.add("c1", binds=[bed.bind("r1-a/web/data")], labels=bed.labels)
        bed.engine.emit("create", "c1")
        await bed.until(lambda: "c1" in bed.state.containers, "c1 known")
        # removed before its start event was handled: inspect says 404
        del bed.engine.data["c1"]
        bed.engine.emit("start", "c1")
        await bed.until(lambda: "c1" not in bed.state.containers, "c1 forgotten")
    assert bed.metric("volagent_containers") == 0


async def test_a_destroy_is_not_undone_by_an_earlier_event_still_being_handled(bed: Bed) -> None:
    """`docker run --rm`: create, start, die and destroy come within moments. The start's
    handler has Docker's answer while the destroy is handled; the container must not come
    back into the table (its binds would count for the nesting rule) once both are done."""
    eng = bed.engine

    async with watching(bed):
        eng.add("c1", binds=[bed.bind("r1-a/web/data")], labels=bed.labels)
        eng.emit("create", "c1")
        await bed.until(lambda: bed.upserts == ["c1"], "c1 recorded")
        answer = eng.hold_inspect["c1"] = threading.Event()
        eng.emit("start", "c1")
        await bed.until(lambda: "c1" not in eng.hold_inspect, "the start's inspect")
        del eng.data["c1"]  # gone from Docker: its destroy event follows
        eng.emit("destroy", "c1")
        await bed.until(lambda: bed.metric("volagent_docker_events_total") == 3, "dispatch")
        await asyncio.sleep(0)  # the destroy's handler gets its turn
        answer.set()
        await bed.until(lambda: bed.upserts == ["c1", "c1"], "the start handled")
        await bed.until(lambda: "c1" not in bed.state.containers, "c1 forgotten")
    assert bed.state.listed_containers() == []
    assert list(bed.state.live_binds()) == []


# --- the stream ends ----------------------------------------------------------------------
async def test_a_stream_that_ends_reconnects_with_since_the_last_event(bed: Bed) -> None:
    eng = bed.engine
    nano = 1_764_410_123_456_789_012

    async with watching(bed):
        assert bed.state.docker.state == "connected"
        eng.add("c1", labels=bed.labels)
        eng.emit("create", "c1", nano=nano)
        await bed.until(lambda: "c1" in bed.state.containers, "c1 known")
        # Docker restarts: the stream ends; a container appears meanwhile
        eng.add("c2", labels=bed.labels)
        eng.streams[-1].end()
        await bed.until(lambda: len(eng.events_calls) == 2, "a new subscription")
        # the reconcile after the reconnect finds what happened while away
        await bed.until(lambda: len(bed.events("reconciled")) == 2, "the second reconcile")
        assert "c2" in bed.state.containers
        assert bed.state.docker.state == "connected"
    first, second = eng.events_calls
    assert first == {"since": None, "filters": {"type": "container"}, "decode": True}
    assert second == {
        "since": "1764410123.456789012",
        "filters": {"type": "container"},
        "decode": True,
    }
    (ended,) = bed.events("docker_stream_ended")
    assert ended["reason"] == "Docker closed the event stream"
    assert ended["since"] == "1764410123.456789012"
    assert bed.metric("volagent_docker_reconnects_total") == 1
    assert bed.docker_states == [
        ("connected", None),
        ("connecting", "Docker closed the event stream"),
        ("connected", None),
    ]
    assert len(bed.events("reconciled")) == 2
    assert [c["base_url"] for c in eng.clients] == [bed.state.config.docker.url] * 2


async def test_a_stream_that_breaks_reconnects_saying_why(bed: Bed) -> None:
    eng = bed.engine

    async with watching(bed):
        eng.streams[-1].fail(ConnectionResetError(104, "Connection reset by peer"))
        await bed.until(lambda: len(eng.events_calls) == 2, "a new subscription")
        await bed.until(lambda: bed.state.docker.state == "connected", "connected")
    (ended,) = bed.events("docker_stream_ended")
    assert ended["reason"] == "[Errno 104] Connection reset by peer"
    assert bed.docker_states[1] == ("connecting", ended["reason"])
    assert eng.events_calls[1]["since"] is None  # no event was seen before it broke
    assert bed.metric("volagent_docker_reconnects_total") == 1


async def test_docker_away_at_start_is_retried_and_said(
    bed: Bed, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[tuple[float, float, float]] = []

    def no_wait(initial: float, cap: float, jitter: float) -> tenacity.wait.wait_base:
        waits.append((initial, cap, jitter))
        return tenacity.wait_none()  # the backoff's sleep, injected: no real waiting

    monkeypatch.setattr(events, "exponential_jitter", no_wait)
    bed.engine.fail_pings = 3

    async with watching(bed):
        await bed.until(lambda: bed.state.docker.state == "connected", "connected")
    assert waits  # the retry has a backoff
    assert bed.engine.closed == 3  # each client whose ping failed was closed
    states = [s for s, _ in bed.docker_states]
    assert states == ["connecting", "connecting", "connecting", "connected"]
    for _, error in bed.docker_states[:3]:
        assert error is not None and error.startswith("Docker is not answering (")
    # said on the first two attempts, not at every one
    assert [e["attempt"] for e in bed.events("docker_unavailable")] == [1, 2]
    assert len(bed.engine.events_calls) == 1


async def test_a_silent_stream_is_found_out_by_the_ping_and_reconnected(
    bed: Bed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "PING_INTERVAL_S", 0.01)
    monkeypatch.setattr(events, "RECONCILE_INTERVAL_S", 3600.0)
    eng = bed.engine

    async with watching(bed):
        pings = eng.pings
        await bed.until(lambda: eng.pings >= pings + 2, "the keepalive pinging")
        eng.fail_pings = 1  # Docker went away; its stream says nothing
        await bed.until(lambda: len(eng.events_calls) == 2, "a new subscription")
        await bed.until(lambda: bed.state.docker.state == "connected", "connected")
    assert eng.streams[0].closed
    (ended,) = bed.events("docker_stream_ended")
    # said once, as the status showed it meanwhile
    assert ended["reason"].startswith("ping failed: Docker is not answering (Error while")
    assert ended["reason"].count("Docker is not answering") == 1
    assert ("connecting", ended["reason"]) in bed.docker_states
    assert bed.metric("volagent_docker_reconnects_total") == 1


async def test_the_keepalive_reconciles_now_and_then(
    bed: Bed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "PING_INTERVAL_S", 0.01)
    monkeypatch.setattr(events, "RECONCILE_INTERVAL_S", 0.02)

    async with watching(bed):
        # a container whose events were lost
        bed.engine.add("quiet", labels=bed.labels)
        await bed.until(
            lambda: any(e["tracked"] == 1 for e in bed.events("reconciled")),
            "a reconcile that found it",
        )
        assert "quiet" in bed.state.containers
    assert len(bed.engine.events_calls) == 1  # no reconnect was needed


# --- reconcile ----------------------------------------------------------------------------
def container_record(cid: str) -> ContainerRecord:
    return ContainerRecord(id=cid, name=cid, rack="r1", app="a", service="web")


async def test_reconcile_forgets_what_docker_lost_but_not_what_came_during_the_list(
    bed: Bed,
) -> None:
    eng = bed.engine
    eng.add("kept", labels=bed.labels)
    bed.state.upsert_container(container_record("gone"))  # known here, no longer in Docker
    added: list[str] = []

    loop = asyncio.get_running_loop()

    async def guard_adopts() -> None:
        # the guard allowed a create and Docker named the container: it is in the table
        # now, though the list Docker is answering was made before it existed
        bed.state.upsert_container(container_record("fresh"))
        added.append("fresh")

    eng.during_list = lambda: asyncio.run_coroutine_threadsafe(guard_adopts(), loop).result(GUARD_S)
    async with watching(bed):
        pass
    assert added == ["fresh"]  # the list really was in flight when it came
    assert "gone" not in bed.state.containers
    assert "fresh" in bed.state.containers
    assert "kept" in bed.state.containers
    assert bed.metric("volagent_containers") == 2
    (done,) = bed.events("reconciled")
    assert (done["containers"], done["tracked"]) == (1, 2)


# --- start_held ---------------------------------------------------------------------------
async def test_start_held_starts_only_restart_policy_containers_that_failed_on_the_mount(
    bed: Bed,
) -> None:
    eng = bed.engine
    mp = str(bed.mp)

    def failed_on(path: str) -> str:
        return (
            f"error while creating mount source path '{path}/r1-a/web/data': "
            f"mkdir {path}/r1-a: operation not permitted"
        )

    eng.add("always", status="exited", policy="always", error=failed_on(mp))
    eng.add("unless", status="created", policy="unless-stopped", error=failed_on(mp))
    eng.add("onfail", status="exited", policy="on-failure", error=failed_on(mp))
    eng.add("nopolicy", status="exited", policy="no", error=failed_on(mp))
    eng.add("other-error", status="exited", policy="always", error="OCI runtime create failed")
    eng.add("sibling", status="exited", policy="always", error=failed_on(mp + "2"))
    eng.add("running", status="running", pid=77, policy="always", error=failed_on(mp))
    bed.state.set_mount_state("unmounted")
    bed.state.mount_dev = None

    async with watching(bed) as watch:
        # while the mount is away, nothing is started (it would fail the same way)
        assert eng.started == []
        bed.state.set_mount_state("mounted")
        bed.state.mount_dev = os.stat(bed.mp).st_dev
        started = await watch.start_held()
    assert started == ["always", "unless"]
    assert eng.started == ["always", "unless"]
    assert eng.list_calls[-1] == {"all": True, "filters": {"status": ["exited", "created"]}}
    assert [e["container"] for e in bed.events("held_container_started")] == ["always", "unless"]


async def test_start_held_goes_on_after_a_start_that_fails(bed: Bed) -> None:
    eng = bed.engine
    error = f"error while creating mount source path '{bed.mp}/r1-a/web/data': read-only"
    eng.add("first", status="exited", policy="always", error=error)
    eng.add("second", status="exited", policy="always", error=error)
    eng.fail_start = {"first"}

    async with watching(bed):  # the first reconcile starts what was held
        pass
    assert eng.started == ["second"]
    (failed,) = bed.events("held_start_failed")
    assert failed["container"] == "first"


async def test_a_held_start_refused_is_tried_again_at_the_periodic_reconcile(
    bed: Bed, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the guard refused it when the mount came back (the rack's registry not answering yet):
    # Docker's record of the failed start on the mount point stays, and volagent tries again
    monkeypatch.setattr(events, "PING_INTERVAL_S", 0.01)
    monkeypatch.setattr(events, "RECONCILE_INTERVAL_S", 0.02)
    eng = bed.engine
    error = f"error while creating mount source path '{bed.mp}/r1-a/web/data': read-only"
    eng.add("held", status="exited", policy="always", error=error)
    eng.fail_start = {"held"}

    async with watching(bed):
        await bed.until(lambda: bed.events("held_start_failed"), "the first start refused")
        eng.fail_start = set()
        # the log line follows Docker's answer: wait for it, not for the engine's side
        await bed.until(lambda: bed.events("held_container_started"), "the start tried again")
    assert [e["container"] for e in bed.events("held_container_started")] == ["held"]
    assert eng.started == ["held"]


# --- the check after a start --------------------------------------------------------------
def started_container(bed: Bed, pid: int) -> None:
    bed.engine.add(
        "c1",
        binds=[bed.bind("r1-a/web/data")],
        labels=bed.labels,
        status="running",
        pid=pid,
        policy="always",
    )


async def test_a_container_started_with_the_prepared_mounts_is_left_alone(bed: Bed) -> None:
    async with watching(bed) as watch:
        started_container(bed, 4242)
        bed.sees(4242, {"/data": str(bed.mp / "r1-a/web/data")})
        # what a start event runs, awaited to its end
        await watch.handle_container("c1", verify=True)
        assert bed.volume_states("c1") == ["ready"]
    assert bed.checked == [4242]
    assert bed.engine.killed == [] and bed.engine.updated == []
    assert bed.state.warnings == []
    assert not bed.events("mount_mismatch")


async def test_each_process_of_a_container_is_checked_once(bed: Bed) -> None:
    async with watching(bed) as watch:
        started_container(bed, 4242)
        bed.sees(4242, {"/data": str(bed.mp / "r1-a/web/data")})
        await watch.handle_container("c1", verify=True)
        await watch.handle_container("c1", verify=True)  # the same process: known good
        assert bed.checked == [4242]
        # restarted: a new process, whose mounts Docker resolved afresh
        bed.engine.data["c1"]["State"]["Pid"] = 5151
        bed.sees(5151, {"/data": str(bed.mp / "r1-a/web/other")})
        await watch.handle_container("c1", verify=True)
    assert bed.checked == [4242, 5151]
    assert bed.engine.killed == ["c1"]


async def test_a_container_started_with_another_mount_is_stopped_and_marked(bed: Bed) -> None:
    swapped = bed.mp / "r1-a/web/other"

    async with watching(bed):
        started_container(bed, 4242)
        # someone swapped the directory for a symlink: the container got another one
        bed.sees(4242, {"/data": str(swapped)})
        bed.engine.emit("start", "c1")
        await bed.until(lambda: bed.state.warnings != [], "the warning")
    eng = bed.engine
    assert eng.updated == [("c1", {"restart_policy": {"Name": "no"}})]
    assert eng.killed == ["c1"]
    # the prepared directory is not what it got, and what it got was never prepared
    volumes = {v.host: v for v in bed.state.containers["c1"].volumes}
    assert set(volumes) == {str(bed.mp / "r1-a/web/data"), str(swapped)}
    for vol in volumes.values():
        assert vol.state == "violation"
        assert vol.error is not None and vol.error.startswith(mount_check.MISMATCH)
        assert str(swapped) in vol.error
    (warning,) = bed.state.warnings
    assert "it was stopped and its restart policy turned off" in warning
    (logged,) = bed.events("mount_mismatch")
    assert logged["log_level"] == "error" and logged["container"] == "c1"
    assert bed.metric("volagent_violations_total") == 2
    assert bed.state.verdict() == "degraded"


async def test_a_container_that_exited_at_once_is_walked_and_stopped_after_a_swap(bed: Bed) -> None:
    """No process is left whose mounts could be read: the start event walks the bind source
    again, finds the symlink, stops the container and turns its restart policy off."""
    data = bed.mp / "r1-a/web/data"
    other = bed.mp / "r1-b/web/data"

    async with watching(bed) as watch:
        bed.engine.add("c1", binds=[bed.bind("r1-a/web/data")], labels=bed.labels, policy="always")
        await watch.handle_container("c1")  # its create event: prepared
        assert bed.volume_states("c1") == ["ready"]
        other.mkdir(parents=True)
        data.rename(data.with_name("data.moved"))
        data.symlink_to(other)
        bed.engine.data["c1"]["State"]["Status"] = "exited"
        bed.engine.emit("start", "c1")
        await bed.until(lambda: bed.state.warnings != [], "the warning")
    assert bed.checked == []  # no process: nothing to read in /proc
    assert bed.engine.killed == ["c1"]
    assert bed.engine.updated == [("c1", {"restart_policy": {"Name": "no"}})]
    assert bed.volume_states("c1") == ["violation"]
    (warning,) = bed.state.warnings
    assert "is a symlink now" in warning and "restart policy turned off" in warning
    assert bed.metric("volagent_mount_mismatches_total") == 1


async def test_a_container_that_cannot_be_stopped_says_so(bed: Bed) -> None:
    bed.engine.fail_kill = True

    async with watching(bed):
        started_container(bed, 4242)
        bed.sees(4242, {"/data": str(bed.mp / "r1-a/web/other")})
        bed.engine.emit("restart", "c1")
        await bed.until(lambda: bed.state.warnings != [], "the warning")
    (warning,) = bed.state.warnings
    assert "stopping it failed (kill refused): stop it by hand" in warning
    assert bed.volume_states("c1") == ["violation", "violation"]


async def test_the_reconcile_checks_running_containers_too(bed: Bed) -> None:
    """dockerd coming back starts restart-policy containers; their start events may be
    gone, so the reconcile checks what is running."""
    started_container(bed, 4242)
    bed.sees(4242, {"/data": str(bed.mp / "r1-a/web/data"), "/more": str(bed.mp / "r1-b")})

    async with watching(bed):
        await bed.until(lambda: "violation" in bed.volume_states("c1"), "c1 marked")
    record_ = bed.state.containers["c1"]
    assert bed.engine.killed == ["c1"]
    states = {v.host: v.state for v in record_.volumes}
    assert states == {str(bed.mp / "r1-a/web/data"): "ready", str(bed.mp / "r1-b"): "violation"}


async def test_a_running_container_is_not_judged_while_its_volumes_wait_for_the_mount(
    bed: Bed,
) -> None:
    """volagent (re)starting next to running containers: Docker answers before the mount has
    been looked at, so their volumes are `pending`, not prepared. Their mounts are checked
    once they are, never against nothing (which stopped a healthy container)."""
    bed.state.set_mount_state("mounting")
    started_container(bed, 4242)
    bed.sees(4242, {"/data": str(bed.mp / "r1-a/web/data")})

    async with watching(bed) as watch:
        await watch.handle_container("c1", verify=True)
        assert bed.volume_states("c1") == ["pending"]
        assert bed.checked == []
        bed.state.set_mount_state("mounted")
        await watch.handle_container("c1", verify=True)  # the reconcile once it is up
        assert bed.volume_states("c1") == ["ready"]
    assert bed.checked == [4242]
    assert bed.engine.killed == [] and bed.engine.updated == []
    assert not bed.events("mount_mismatch")
