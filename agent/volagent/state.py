"""The one state object of the daemon, owned by the event loop.

Every task writes here through small methods; the socket and the guard read it. Nothing in
here does I/O, so a status answer never waits on the shared filesystem.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import field
from datetime import UTC, datetime
from typing import Any

from volagent import __version__
from volagent.codec import LOCAL, NULL_IF_EMPTY, Record
from volagent.config import Config
from volagent.metrics import Metrics
from volagent.nesting import HostBind
from volagent.vocabulary import (
    HEALTHY_MOUNT_STATES,
    PROBLEM_VOLUME_STATES,
    DockerState,
    MountState,
    Verdict,
    VolumeState,
)


def now_iso(ts: float | None = None) -> str:
    """ISO-8601 in UTC with milliseconds, what the status document carries."""
    return (
        datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class MountStatus(Record):
    state: MountState = MountState.UNMOUNTED
    mount_point: str = "/volumes"
    type: str = ""
    source: str = ""
    file_system_id: str = field(default="", metadata=NULL_IF_EMPTY)
    since: str = field(default_factory=now_iso)
    last_probe_ms: float | None = None
    error: str | None = None


class DockerStatus(Record):
    state: DockerState = DockerState.CONNECTING
    events: int = 0
    since: str = field(default_factory=now_iso)
    error: str | None = None


class VolumeRecord(Record):
    host: str
    container: str
    read_only: bool
    state: VolumeState = VolumeState.PENDING
    error: str | None = None
    # (device, inode) of the directory volagent prepared for it: what a start must mount
    leaf: tuple[int, int] | None = field(default=None, metadata=LOCAL)


class ContainerRecord(Record):
    id: str
    name: str
    rack: str
    app: str
    service: str
    volumes: list[VolumeRecord] = field(default_factory=list)
    started: bool = field(default=False, metadata=LOCAL)
    # the ContainerSpec it was judged from: a start re-walks with it
    spec: Any = field(default=None, metadata=LOCAL)


class GuardStatus(Record):
    enabled: bool = False
    allowed: int = 0
    denied: int = 0


class AgentState:
    """Everything the daemon knows. Mutated only from the event loop thread."""

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.mount = MountStatus(mount_point=config.mount_point)
        # set once the mount side has looked at the mount point: healthy, or unhealthy with
        # a reason (until then `unmounted` only means nobody has looked yet)
        self.mount_known = asyncio.Event()
        # set once the Docker watch has listed every container: the table is then complete
        self.containers_listed = asyncio.Event()
        # set, and replaced by a fresh one, whenever the mount turns healthy or unhealthy
        self._mount_flip = asyncio.Event()
        # set, and replaced by a fresh one, whenever a method below changes the state
        self._changed = asyncio.Event()
        self.docker = DockerStatus()
        self.guard = GuardStatus(enabled=config.guard.enabled)
        self.containers: dict[str, ContainerRecord] = {}
        self._container_names: dict[str, str] = {}  # name -> id, for lookups by name
        # binds of creates the guard allowed whose container has no id yet, by request
        self.reserved_binds: dict[bytes, tuple[str, ...]] = {}
        # their bind sources outside the mount point, as resolved when judged (rule 7 for
        # host paths), by request
        self.reserved_host_binds: dict[bytes, tuple[HostBind, ...]] = {}
        # the time of this host's last usage record of each (top-level directory, directory
        # below it) on the shared filesystem: a recent one marks it used for gc
        self.usage_recorded: dict[tuple[str, str], float] = {}
        # when the registry's keeper recorded the end of all of a directory's use on this
        # host, before removing its entry (rack/registry_task.py): the usage recorder then
        # writes no last record of its own
        self.use_ends_recorded: dict[tuple[str, str], float] = {}
        # the mount epoch in whose rack view every host sharing the filesystem said its gc
        # reads the registry (rack/heartbeat.py); None: not seen. Then a create whose binds
        # the registry holds leaves out gc's mtime mark (volumes/trashcheck.py)
        self.gc_reads_registry_in: int | None = None
        # counts changes of the containers and their volumes, which go through the methods
        # below: what is rendered from them (the status socket's cache) keys on it
        self.containers_version = 0
        self._problem_scan: tuple[int, bool] = (-1, False)  # (version, any volume in trouble)
        # keyed warnings, so a condition that clears takes its warning with it
        self._warnings: dict[str, str] = {}
        # st_dev of the healthy shared filesystem at the mount point; the fs layer refuses to
        # create anything on another device. None while the mount is not healthy.
        self.mount_dev: int | None = None
        # how many times the mount was lost: a mount after another may be another filesystem
        # on the device number the first one freed
        self.mount_epoch = 0
        self.host_id = ""
        self.instance_id = ""
        # until when this host's entries in the rack's registry surely stand (epoch s):
        # other hosts forget a host no sooner than `forget_after_s` after its last heartbeat
        # (the value that heartbeat said); half of it from each heartbeat written
        self.entries_trusted_until = 0.0
        # counts the heartbeats written once that trust had run out: since the last, no
        # entry of this host may have been forgotten by another host
        self.heartbeat_lapses = 0
        # the host name this host's registry entries all bear (the keeper's whole pass under
        # it): a former name's heartbeat stays until then, or other hosts forget its entries
        self.entries_named = ""
        self.started_at = time.time()
        self.stopping = False
        # app -> why it is over its [quotas] limit (set by the usage walk); makes us degraded
        self.over_quota: dict[str, str] = {}

    # --- mount -------------------------------------------------------------------------
    @property
    def mount_healthy(self) -> bool:
        return self.mount.state in HEALTHY_MOUNT_STATES

    def set_mount_state(self, name: MountState, error: str | None = None) -> None:
        try:
            state = MountState(name)
        except ValueError:
            raise ValueError(f"unknown mount state {name!r}") from None
        was_healthy = self.mount_healthy
        if state != self.mount.state:
            self.mount.state = state
            self.mount.since = now_iso()
        self.mount.error = error
        self.metrics.set_mount_state(state)
        if self.mount_healthy or error:
            self.mount_known.set()
        if self.mount_healthy != was_healthy:
            flipped, self._mount_flip = self._mount_flip, asyncio.Event()
            flipped.set()
        self._tell_waiters()

    async def mount_health_flipped(self) -> None:
        """Returns once the mount turns healthy or unhealthy, from what it is now."""
        await self._mount_flip.wait()

    async def changed(self) -> None:
        """Returns once the state is changed (mount, Docker, containers, volumes) after the
        call: a waiter looks again at what it waits for, with no polling."""
        await self._changed.wait()

    def _tell_waiters(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def rename(self, host: str) -> None:
        """This host's name changes: its registry entries bear the former one until the
        registry's keeper has set them all again."""
        if host != self.host_id:
            self.host_id = host
            self.entries_named = ""
            # no heartbeat names it yet: other hosts judge its entries by their own
            # forget_after_s until one lands (and that one is a lapse: nothing held)
            self.entries_trusted_until = 0.0

    def note_heartbeat_sent(self, at: float, forget_after_s: float) -> None:
        """A heartbeat of time `at` saying `forget_after_s` is being written: it may land
        though its write fails or is given up on, so the trust is no longer than it says."""
        self.entries_trusted_until = min(self.entries_trusted_until, at + forget_after_s / 2)

    def note_heartbeat(self, at: float, forget_after_s: float) -> None:
        """A heartbeat of time `at` saying `forget_after_s` was written."""
        if at >= self.entries_trusted_until:
            self.heartbeat_lapses += 1
        self.entries_trusted_until = at + forget_after_s / 2

    # --- docker ------------------------------------------------------------------------
    def set_docker_state(self, state: DockerState, error: str | None = None) -> None:
        if state != self.docker.state:
            self.docker.state = state
            self.docker.since = now_iso()
        self.docker.error = error
        self.metrics.docker_connected.set(1 if state == DockerState.CONNECTED else 0)
        self._tell_waiters()

    def count_event(self) -> None:
        self.docker.events += 1
        self.metrics.events.inc()
        self._tell_waiters()

    # --- containers --------------------------------------------------------------------
    def upsert_container(self, record: ContainerRecord) -> None:
        old = self.containers.get(record.id)
        if old is not None and old.name != record.name:
            self._container_names.pop(old.name, None)
        self.containers[record.id] = record
        if record.name:
            self._container_names[record.name] = record.id
        self.containers_version += 1
        self._tell_waiters()

    def forget_container(self, container_id: str) -> None:
        old = self.containers.pop(container_id, None)
        if old is not None and self._container_names.get(old.name) == container_id:
            del self._container_names[old.name]
        self.containers_version += 1
        self._tell_waiters()

    def listed_containers(self) -> list[ContainerRecord]:
        """The containers the status document lists: those with something on the shared
        filesystem (the others are known only to judge a VolumesFrom of them)."""
        return [c for c in self.containers.values() if c.volumes]

    def container_named(self, name: str) -> ContainerRecord | None:
        cid = self._container_names.get(name)
        return self.containers.get(cid) if cid else None

    def find_container(self, ref: str) -> ContainerRecord | None:
        """The container a start or a VolumesFrom names, resolved the way Docker resolves
        it: the full id, then the name, then a unique id prefix; None when none or several
        match."""
        ref = ref.lstrip("/")
        if not ref:
            return None
        record = self.containers.get(ref) or self.container_named(ref)
        if record is not None:
            return record
        found = [c for c in self.containers.values() if c.id.startswith(ref)]
        return found[0] if len(found) == 1 else None

    def live_binds(self, exclude: str = "") -> Iterator[tuple[str, str]]:
        """Every bind on the shared filesystem that a container may be using, with whose it
        is: containers known here (but `exclude`) and creates allowed a moment ago. Other
        hosts' binds are in the rack's registry, judged at the claim (rack/registry_task.py)."""
        for c in self.containers.values():
            if c.id == exclude:
                continue
            for v in c.volumes:
                if v.state != VolumeState.VIOLATION:
                    yield v.host, f"container {c.name or c.id[:12]}"
        for paths in self.reserved_binds.values():
            for path in paths:
                yield path, "a container being created"

    def known_host_binds(self, exclude: str = "") -> Iterator[tuple[HostBind, str]]:
        """Every bind this host knows, for rule 7 on host paths, with whose it is: sources
        outside the mount point as resolved when judged, of every known container (stopped
        ones too: a restart policy starts them without asking) but `exclude`, app or not,
        and of creates being judged; and the live binds on the shared filesystem."""
        for c in self.containers.values():
            if c.id == exclude:
                continue
            whose = f"container {c.name or c.id[:12]}"
            for bind in getattr(c.spec, "host_binds", ()):
                yield bind, whose
        for binds in self.reserved_host_binds.values():
            for bind in binds:
                yield bind, "a container being created"
        for path, whose in self.live_binds(exclude):
            yield HostBind(path, path, (path,)), whose

    def set_volume_state(
        self, volume: VolumeRecord, state: VolumeState, error: str | None = None
    ) -> None:
        state = VolumeState(state)  # a ValueError names a state outside the vocabulary
        if state != volume.state:
            if state == VolumeState.LATE:
                self.metrics.late.inc()
            elif state == VolumeState.VIOLATION:
                self.metrics.violations.inc()
        volume.state = state
        volume.error = error
        self.containers_version += 1
        self._tell_waiters()

    # --- warnings ----------------------------------------------------------------------
    def warn(self, key: str, text: str) -> None:
        self._warnings[key] = text

    def clear_warning(self, key: str) -> None:
        self._warnings.pop(key, None)

    @property
    def warnings(self) -> list[str]:
        return list(self._warnings.values())

    # --- the status document -----------------------------------------------------------
    def verdict(self) -> Verdict:
        if not self.mount_healthy or self.docker.state != DockerState.CONNECTED:
            return Verdict.CRITICAL
        if self.mount.state == MountState.LOCAL or self.over_quota or self._any_problem_volume():
            return Verdict.DEGRADED
        return Verdict.OK

    def _any_problem_volume(self) -> bool:
        # the health check asks this for every request: scan once per change
        version, found = self._problem_scan
        if version != self.containers_version:
            found = any(
                v.state in PROBLEM_VOLUME_STATES
                for c in self.containers.values()
                for v in c.volumes
            )
            self._problem_scan = (self.containers_version, found)
        return found

    def health(self) -> dict[str, Any]:
        verdict = self.verdict()
        return {"healthy": verdict == Verdict.OK, "status": verdict}

    def status_document(self, *, containers: bool = True) -> dict[str, Any]:
        """The status document; `containers=False` leaves its list of containers empty (the
        socket splices in one it rendered earlier, see status_cache)."""
        verdict = self.verdict()
        return {
            "status": verdict,
            "healthy": verdict == Verdict.OK,
            "version": __version__,
            "mount": self.mount.encode(),
            "docker": self.docker.encode(),
            "guard": self.guard.encode(),
            "containers": ([c.encode() for c in self.listed_containers()] if containers else []),
            "warnings": self.warnings,
        }
