"""Docker events to prepared directories, without ever going deaf.

The order matters: subscribe to events first, then list and reconcile every container, so
nothing created in between is missed. The event stream is read by a dedicated thread that
only hands events to the loop, so a slow handler never stalls the reader. When the stream
ends or fails, reconnect with `since` = the last event seen (backoff while Docker is away),
then reconcile again. A periodic ping and reconcile catch a stream that is silently stuck.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import docker
import docker.errors
import tenacity

from volagent import log
from volagent.retrying import exponential_jitter
from volagent.state import AgentState, VolumeRecord
from volagent.vocabulary import SETTLED_VOLUME_STATES, DockerState, VolumeState
from volagent.volumes import mount_check, namespace, start_check
from volagent.volumes.local_volume import LocalVolume
from volagent.volumes.preparer import ContainerSpec, Preparer


class EventAction(StrEnum):
    """The container events the watch acts on: Docker's `Action`, up to a `:`."""

    CREATE, START, RESTART, DESTROY, RENAME = "create", "start", "restart", "destroy", "rename"


_HANDLED = frozenset(EventAction)
API_TIMEOUT_S = 15
PING_INTERVAL_S = 10.0
RECONCILE_INTERVAL_S = 60.0
MAX_CONCURRENT_HANDLERS = 32
MAX_VERIFIED = 8192
UPDATE_ATTEMPTS = 5


class StreamEnded(Exception):
    """The event stream ended: Docker stopped, restarted, or the connection broke."""


class DockerWatch:
    """Connects to Docker, keeps the event stream alive, prepares containers' volumes."""

    def __init__(self, state: AgentState, preparer: Preparer) -> None:
        self.state = state
        self.preparer = preparer
        self.log = log.get("docker")
        self._pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="docker-api")
        self._client: Any = None
        self._lookup_client: Any = None  # the guard's, until the watch has connected
        self._stream: Any = None
        self._queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        self._last_event_time: str | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._sem = asyncio.Semaphore(MAX_CONCURRENT_HANDLERS)
        self._reconcile_lock = asyncio.Lock()
        self.first_attempt_done = asyncio.Event()
        self._verified: dict[str, int] = {}  # container id -> the pid whose mounts were checked
        # one look at a container at a time, in the order of its events: a destroy handled
        # while an earlier event's look is still under way would be undone by its record
        self._turns: dict[str, _Turn] = {}
        # set when dockerd is known to be (re)starting: the next connection attempt is now
        self._woken = asyncio.Event()

    # --- blocking calls, always through the pool -----------------------------------------
    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def _connect(self) -> Any:
        client = docker.APIClient(
            base_url=self.state.config.docker.url, version="auto", timeout=API_TIMEOUT_S
        )
        try:
            client.ping()
        except BaseException:
            client.close()  # its connection pool, and the socket of the version check
            raise
        return client

    # --- the root task ------------------------------------------------------------------
    async def run(self) -> None:
        """Until cancelled: connect, subscribe, reconcile, consume; reconnect on failure."""
        try:
            while True:
                await self._connect_with_backoff()
                try:
                    await self._consume(
                        asyncio.create_task(self._initial_reconcile(), name="docker-reconcile")
                    )
                except StreamEnded as exc:
                    self.state.metrics.reconnects.inc()
                    self.state.set_docker_state(DockerState.CONNECTING, str(exc))
                    self.log.warning(
                        "docker_stream_ended", reason=str(exc), since=self._last_event_time
                    )
        finally:
            self._close_stream()
            for task in list(self._handlers):
                task.cancel()
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _connect_with_backoff(self) -> None:
        retrying = tenacity.AsyncRetrying(
            wait=exponential_jitter(0.2, cap=5.0, jitter=0.5),
            retry=tenacity.retry_if_exception_type(Exception),
            before_sleep=self._before_retry,
            sleep=self._backoff,
        )
        async for attempt in retrying:
            with attempt:
                await self._subscribe()

    async def _backoff(self, seconds: float) -> None:
        """The wait before the next connection attempt, cut short by `wake`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._woken.wait()
        self._woken.clear()

    def wake(self) -> None:
        """dockerd has just (re)started (it activates its authorization plugin once it has
        restored its containers, just before it serves its API): connect now, not at the
        end of the backoff, since the containers it restarted are to be checked at once.
        (Set even while the watch still counts as connected: the old stream's end may not
        have been read yet.)"""
        self._woken.set()

    def _before_retry(self, rs: tenacity.RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome else None
        reason = _describe(exc)
        self.state.set_docker_state(DockerState.CONNECTING, reason)
        self.first_attempt_done.set()
        if rs.attempt_number in (1, 2) or rs.attempt_number % 20 == 0:
            self.log.warning(
                "docker_unavailable",
                reason=reason,
                attempt=rs.attempt_number,
                url=self.state.config.docker.url,
            )

    async def _subscribe(self) -> None:
        self._close_stream()
        self._client = await self._call(self._connect)
        since = self._last_event_time
        # Subscribing first: the HTTP request is sent here, before the listing below.
        self._stream = await self._call(
            self._client.events, since=since, decode=True, filters={"type": "container"}
        )
        # The reader starts at once, so events queue up in memory, not in a socket buffer,
        # while the reconcile runs.
        self._queue = asyncio.Queue()
        threading.Thread(
            target=_read_stream,
            args=(self._stream, asyncio.get_running_loop(), self._queue),
            name="docker-events",
            daemon=True,
        ).start()
        self.state.set_docker_state(DockerState.CONNECTED)
        self.log.info("docker_connected", url=self.state.config.docker.url, since=since)

    async def _initial_reconcile(self) -> None:
        try:
            await self._check_known_binds()
            await self.reconcile()
            await self.start_held()
        except Exception as exc:  # Docker went away mid-listing: the stream ends too
            self.log.warning("reconcile_failed", reason=_describe(exc))
        finally:
            self.first_attempt_done.set()

    async def _consume(self, reconcile: asyncio.Task[None]) -> None:
        queue = self._queue
        ping = asyncio.create_task(self._keepalive(queue), name="docker-keepalive")
        try:
            while True:
                item = await queue.get()
                if isinstance(item, StreamEnded):
                    raise item  # says why already (and described once is enough)
                if isinstance(item, BaseException):
                    raise StreamEnded(_describe(item)) from None
                self._dispatch(item)
        finally:
            ping.cancel()
            reconcile.cancel()
            self._close_stream()

    async def _keepalive(self, queue: asyncio.Queue[dict[str, Any] | BaseException]) -> None:
        """A stream can stay open while Docker is gone; ping, and reconcile now and then."""
        since_reconcile = 0.0
        while True:
            await asyncio.sleep(PING_INTERVAL_S)
            try:
                async with asyncio.timeout(API_TIMEOUT_S):
                    await self._call(self._client.ping)
            except Exception as exc:
                queue.put_nowait(StreamEnded(f"ping failed: {_describe(exc)}"))
                return
            since_reconcile += PING_INTERVAL_S
            if since_reconcile >= RECONCILE_INTERVAL_S:
                since_reconcile = 0.0
                try:
                    await self.reconcile()
                    # a held container whose start was refused when the mount came back (the
                    # guard could not judge it yet: the rack's registry still waiting on a
                    # restarted NFS server, say) is tried again, not left down for good
                    await self.start_held()
                except Exception as exc:
                    queue.put_nowait(StreamEnded(f"reconcile failed: {_describe(exc)}"))
                    return

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception as exc:  # a broken stream may fail to close; it is gone anyway
                self.log.debug("docker_stream_close_failed", reason=_describe(exc))

    # --- events -------------------------------------------------------------------------
    def _dispatch(self, event: dict[str, Any]) -> None:
        self.state.count_event()
        if event.get("timeNano"):
            nanos = int(event["timeNano"])
            self._last_event_time = f"{nanos // 1_000_000_000}.{nanos % 1_000_000_000:09d}"
        action = str(event.get("Action") or event.get("status") or "").split(":")[0]
        cid = str(event.get("id") or (event.get("Actor") or {}).get("ID") or "")
        if action not in _HANDLED or not cid:
            return
        task = asyncio.create_task(
            self._handle(EventAction(action), cid), name=f"event-{action}-{cid[:12]}"
        )
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _handle(self, action: EventAction, cid: str) -> None:
        async with self._one_at_a_time(cid), self._sem:
            if action == EventAction.DESTROY:
                self.state.forget_container(cid)
                self._verified.pop(cid, None)
                self.state.metrics.containers.set(len(self.state.containers))
                return
            started = action in (EventAction.START, EventAction.RESTART)
            await self.handle_container(cid, verify=started, started=started)

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, cid: str) -> AsyncIterator[None]:
        """Holds the container's turn; waiters get it in the order they asked (asyncio.Lock
        is first come, first served)."""
        turn = self._turns.get(cid)
        if turn is None:
            turn = self._turns[cid] = _Turn()
        turn.users += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.users -= 1
            if turn.users == 0:
                del self._turns[cid]

    async def handle_container(self, cid: str, verify: bool = False, started: bool = False) -> None:
        """Inspects one container and prepares its volumes; a vanished container is dropped.
        With `verify`, what it got mounted is checked as well: its bind sources walked again
        when it has just `started` (a start event) or has no process left (it exited at once,
        or waits for its restart policy), and its process's mounts when there is one."""
        try:
            data = await self._call(self._client.inspect_container, cid)
        except docker.errors.NotFound:
            self.state.forget_container(cid)
            self.state.metrics.containers.set(len(self.state.containers))
            return
        except Exception as exc:
            self.log.warning("inspect_failed", container=cid[:12], reason=_describe(exc))
            return
        spec = ContainerSpec.from_inspect(data)
        if spec.named_volumes:
            # recorded with its binds: rule 7 for host paths judges other binds against them
            devices = await self._bind_volume_devices(spec.named_volumes)
            spec.volume_devices = tuple(device for device, _ in devices)
        await self.preparer.prepare(spec, recheck=lambda: self._started(cid))
        if not verify:
            return
        st = data.get("State") or {}
        pid = st.get("Pid") or 0
        has_process = isinstance(pid, int) and pid > 0
        found: list[mount_check.Mismatch] = []
        if started or (not has_process and (st.get("Running") or st.get("Restarting"))):
            found += await self._walk_binds(cid, spec)
        if has_process:
            seen = {m.host for m in found}
            found += [m for m in await self._verify_mounts(cid, pid) if m.host not in seen]
        if found:
            await self._stop_mismatched(cid, found)

    def _prepared(self, cid: str) -> list[VolumeRecord] | None:
        """The container's volumes volagent prepared, None when there is nothing to compare
        with yet (not prepared: the mount is not healthy; checked by the reconcile that
        follows the mount's return, never against nothing)."""
        record = self.state.containers.get(cid)
        if record is not None and any(v.state == VolumeState.PENDING for v in record.volumes):
            return None
        return [v for v in (record.volumes if record else []) if v.state in SETTLED_VOLUME_STATES]

    async def _check_known_binds(self) -> None:
        """Just (re)connected: dockerd may have started containers by their restart policy
        while volagent could not look (its own restart, a reboot), and their start events
        may be gone. Every known container that may restart has its binds walked again at
        once, from what volagent recorded, before the listing and inspecting of all."""

        async def one(cid: str) -> None:
            async with self._one_at_a_time(cid), self._sem:
                record = self.state.containers.get(cid)
                found = await self._walk_binds(cid, record.spec if record else None)
                if found:
                    await self._stop_mismatched(cid, found)

        restarting = [
            cid for cid, record in self.state.containers.items() if _may_restart(record.spec)
        ]
        await asyncio.gather(*(one(cid) for cid in restarting))

    async def _walk_binds(self, cid: str, spec: ContainerSpec | None) -> list[mount_check.Mismatch]:
        """The check after a start that needs no process: every prepared bind source walked
        again as the host resolves it now, and every bind of `spec` spelled outside the
        mount point resolved again (see volumes/start_check.py)."""
        st = self.state
        prepared = self._prepared(cid)
        dev = st.mount_dev
        if prepared is None or dev is None or not st.mount_healthy:
            return []
        mp = st.config.mount_point
        binds = [
            start_check.PreparedBind(v.host, v.container, v.leaf)
            for v in prepared
            if v.leaf is not None
        ]
        # what volagent prepared, as the mountinfo check holds it: a bind that lands on the
        # shared filesystem anywhere else now (the preparer, looking at this start, records
        # it as a violation, which stops nothing by itself) was not judged at this start
        recorded = {v.host for v in prepared}
        outside = [
            (b.host, b.container)
            for b in (spec.binds if spec is not None else ())
            if b.host.startswith("/") and not namespace.touches_mount_point(mp, b.host)
        ]
        if spec is not None:
            outside += await self._bind_volume_devices(spec.named_volumes)
        if not binds and not outside:
            return []
        st.metrics.directory_walks.inc(len(binds))

        def check() -> list[mount_check.Mismatch]:
            found = start_check.check_binds(mp, dev, binds) if binds else []
            return found + start_check.check_outside(mp, outside, recorded)

        try:
            return await self.preparer.worker.run(
                check, st.config.directories.timeout_s, what="checking binds after a start"
            )
        except Exception as exc:  # the mount went away or hangs: the mount watch says so
            self.log.warning("start_check_skipped", container=cid[:12], reason=str(exc))
            return []

    async def _bind_volume_devices(self, names: list[str]) -> list[tuple[str, str]]:
        """The devices of the local-driver bind volumes among `names` ((device, "volume
        NAME") pairs): the local driver mounts the device again at every start of a container
        using the volume, following a symlink in it as a bind does."""
        out = []
        for name in names:
            try:
                data = await self.inspect_volume(name)
            except Exception as exc:  # Docker went away: the walk at the reconnect follows
                self.log.warning("start_check_skipped", volume=name[:64], reason=_describe(exc))
                continue
            vol = LocalVolume.from_inspect(name, data)
            if vol is not None and vol.bind_device:
                out.append((vol.bind_device, f"volume {name}"))
        return out

    async def _verify_mounts(self, cid: str, pid: int) -> list[mount_check.Mismatch]:
        """What the container's process has mounted against what volagent prepared, once
        per process: catches what a walk after the start cannot see (a swap undone since)."""
        if self._verified.get(cid) == pid:
            return []  # this process of it was checked already
        prepared = self._prepared(cid)
        if prepared is None:
            return []
        pairs = [(v.host, v.container) for v in prepared]
        call = functools.partial(
            mount_check.check_container, pid, self.state.config.mount_point, pairs
        )
        try:
            found: list[mount_check.Mismatch] = await self.preparer.worker.run(
                call, API_TIMEOUT_S, what="checking mounts"
            )
        except Exception as exc:  # the process exited meanwhile: the walk covers it
            self.log.debug("mount_check_skipped", container=cid[:12], reason=str(exc))
            return []
        self._verified[cid] = pid
        while len(self._verified) > MAX_VERIFIED:
            self._verified.pop(next(iter(self._verified)))
        return found

    async def _stop_for_good(self, cid: str) -> None:
        """Kill first: it also cancels a restart Docker has scheduled (a container waiting
        for its restart policy is `restarting`, and a kill ends that). Then the restart
        policy `no`, so that dockerd's own restart does not start it either: on a container
        that is stopped, since Docker undoes an update that races with the exit of a
        running one (its resources cannot be updated then); tried again if it failed."""
        try:
            await self._call(self._client.kill, cid)
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: not running, nothing to stop
                raise
        for attempt in range(UPDATE_ATTEMPTS):
            try:
                await self._call(self._client.update_container, cid, restart_policy={"Name": "no"})
                return
            except docker.errors.APIError:
                if attempt == UPDATE_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.1 * (attempt + 1))

    async def _stop_mismatched(self, cid: str, found: list[mount_check.Mismatch]) -> None:
        """A container started (by anyone: a client through the guard, its restart policy,
        dockerd coming back) onto something other than what volagent prepared: stopped, its
        restart policy turned off, its volume marked `violation` for good."""
        st = self.state
        record = st.containers.get(cid)
        reasons = "; ".join(m.reason for m in found)
        name = record.name if record else cid[:12]
        self.log.error("mount_mismatch", container=cid[:12], name=name, reason=reasons)
        st.metrics.mount_mismatches.inc()
        try:
            await self._stop_for_good(cid)
            action = "it was stopped and its restart policy turned off"
        except docker.errors.NotFound:
            # removed meanwhile (the walk at a reconnect looks at containers known from
            # before): nothing left to stop
            st.forget_container(cid)
            return
        except Exception as exc:
            action = f"stopping it failed ({_describe(exc)}): stop it by hand"
        # the record as it is now: another look at the container may have replaced it
        # meanwhile (what is marked here then stays marked, see the preparer)
        record = st.containers.get(cid)
        if record is not None:
            by_host = {v.host: v for v in record.volumes}
            for m in found:
                vol = by_host.get(m.host)
                if vol is None:
                    vol = VolumeRecord(host=m.host, container=m.container, read_only=False)
                    record.volumes.append(vol)
                    by_host[m.host] = vol
                st.set_volume_state(
                    vol, VolumeState.VIOLATION, f"{mount_check.MISMATCH}: {m.reason}"
                )
        st.warn(
            f"mount-mismatch:{cid}",
            f"container {name} started with a mount volagent did not prepare ({reasons}); "
            f"{action}. Someone swapped a directory for a symlink or bound the shared "
            "filesystem another way: look at the log (mount_mismatch) before starting it again.",
        )

    async def inspect(self, ref: str) -> dict[str, Any] | None:
        """Docker's inspect data of the container `ref` names (id, name or id prefix, as
        Docker resolves it); None when there is none. Raises when Docker cannot be asked."""
        return await self._look_up("inspect_container", ref)

    async def inspect_volume(self, name: str) -> dict[str, Any] | None:
        """Docker's data of the volume `name` (Driver, Options, ...); None when there is none.
        Raises when Docker cannot be asked. Like `inspect`, never waits for the watch."""
        return await self._look_up("inspect_volume", name)

    async def _look_up(self, method: str, name: str) -> dict[str, Any] | None:
        try:
            async with asyncio.timeout(API_TIMEOUT_S):
                # dockerd asks the guard, so it is up even while the event stream is not
                # (yet): the guard's lookups never wait for the watch to connect
                client = self._client or self._lookup_client
                if client is None:
                    client = self._lookup_client = await self._call(self._connect)
                data: dict[str, Any] = await self._call(getattr(client, method), name)
        except docker.errors.NotFound:
            return None
        return data

    async def _started(self, cid: str) -> bool:
        try:
            data = await self._call(self._client.inspect_container, cid)
        except Exception:
            return False
        return ContainerSpec.from_inspect(data).started

    async def start_held(self) -> list[str]:
        """Starts the containers Docker gave up on while the shared filesystem was away.

        At boot with the filesystem unreachable, dockerd starts `--restart always` and
        `unless-stopped` containers, the start fails on the locked mount point (nothing is
        written to the local disk), and Docker never tries again. Once the mount is healthy
        volagent starts them, through the start guard like any start. Only containers
        whose last start failed on the mount point are touched; a start refused is tried
        again at the next periodic reconcile (RECONCILE_INTERVAL_S)."""
        if self._client is None or not self.state.mount_healthy:
            return []
        mp = self.state.config.mount_point.rstrip("/") + "/"
        listed = await self._call(
            self._client.containers, all=True, filters={"status": ["exited", "created"]}
        )
        started = []
        for c in listed:
            cid = str(c["Id"])
            try:
                data = await self._call(self._client.inspect_container, cid)
            except docker.errors.NotFound:
                continue
            policy = ((data.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name")
            error = str((data.get("State") or {}).get("Error") or "")
            if policy not in ("always", "unless-stopped") or mp not in error:
                continue
            try:
                await self._call(self._client.start, cid)
            except Exception as exc:
                self.log.warning("held_start_failed", container=cid[:12], reason=_describe(exc))
                continue
            self.log.info("held_container_started", container=cid[:12], after=error[:200])
            started.append(cid)
        return started

    # --- reconcile ----------------------------------------------------------------------
    async def reconcile(self) -> dict[str, int]:
        """Every container Docker has, prepared; containers gone from Docker forgotten."""
        if self._client is None:
            return {"containers": 0}
        async with self._reconcile_lock:
            # only what was known before Docker's list was asked for can be gone from it:
            # a container the guard put in the table meanwhile was created after the list
            known = set(self.state.containers)
            listed = await self._call(self._client.containers, all=True)
            ids = {str(c["Id"]) for c in listed}
            for gone in known - ids:
                self.state.forget_container(gone)

            async def one(cid: str) -> None:
                async with self._one_at_a_time(cid), self._sem:
                    # running containers are checked too: dockerd coming back starts
                    # restart-policy containers, and their start events may be gone
                    await self.handle_container(cid, verify=True)

            await asyncio.gather(*(one(cid) for cid in ids))
            self.state.metrics.containers.set(len(self.state.containers))
            self.state.containers_listed.set()
            self.log.info("reconciled", containers=len(ids), tracked=len(self.state.containers))
            return {"containers": len(ids), "tracked": len(self.state.containers)}


@dataclass
class _Turn:
    """The looks at one container, one at a time: its lock, and how many hold or await it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


def _read_stream(
    stream: Iterator[dict[str, Any]],
    loop: asyncio.AbstractEventLoop,
    queue: asyncio.Queue[dict[str, Any] | BaseException],
) -> None:
    """The reader thread: hands every event to the loop; the end of the stream too."""
    try:
        for event in stream:
            loop.call_soon_threadsafe(queue.put_nowait, event)
        end: BaseException = StreamEnded("Docker closed the event stream")
    except BaseException as exc:
        end = exc
    with contextlib.suppress(RuntimeError):  # the loop is closed: the daemon is stopping
        loop.call_soon_threadsafe(queue.put_nowait, end)


def _may_restart(spec: ContainerSpec | None) -> bool:
    """Whether Docker may start the container by itself (a restart policy other than
    `no`); True when its policy is not known, False when nothing of it was recorded."""
    if spec is None:
        return False
    policy = spec.host_config.get("RestartPolicy")
    if not isinstance(policy, dict) or "Name" not in policy:
        return True
    return policy.get("Name") not in ("", "no")


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc) or type(exc).__name__
    if "Connection refused" in text or "No such file" in text or "FileNotFoundError" in text:
        return f"Docker is not answering ({text.splitlines()[0][:200]})"
    return text.splitlines()[0][:300]
