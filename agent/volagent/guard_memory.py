"""What the start guard remembers about containers, so a start is judged from memory.

A create the guard allowed is held under its request (URI and body) until Docker's answer
names the new container's id (AuthZRes), then kept by id and by name. A start is looked up
here first, then in the daemon's state (containers the Docker watch inspected, those
created before the guard ran included). Both tables are bounded: the oldest entries go.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

from volagent.preparer import ContainerSpec
from volagent.state import AgentState, VolumeRecord

MAX_KNOWN = 8192
MAX_PENDING = 512


@dataclass
class Known:
    """A container with binds under the mount point, as the guard last saw it."""

    name: str
    volumes: list[VolumeRecord]
    spec: ContainerSpec | None = None  # from the create body: lets a start re-prepare
    inherited: list[VolumeRecord] = field(default_factory=list)  # through VolumesFrom
    id: str = ""

    @property
    def all_volumes(self) -> list[VolumeRecord]:
        return [*self.volumes, *self.inherited]


def _request_key(uri: str, body: bytes) -> bytes:
    # a digest, so creates waiting for their answer hold no bodies (up to 1 MiB each)
    return hashlib.sha256(uri.encode() + b"\0" + body).digest()


class GuardMemory:
    """Containers by id and name; creates waiting for their id. Owned by the event loop."""

    def __init__(self, state: AgentState) -> None:
        self.state = state
        self._by_id: OrderedDict[str, Known] = OrderedDict()
        self._by_name: dict[str, str] = {}
        self._pending: OrderedDict[bytes, Known] = OrderedDict()
        self._settling: OrderedDict[str, bytes] = OrderedDict()  # id -> reserved binds key

    def __len__(self) -> int:
        return len(self._by_id)

    # --- creates ------------------------------------------------------------------------
    def expect(self, uri: str, body: bytes, known: Known) -> None:
        """An allowed create: remembered until Docker answers it. Its binds count as live
        from now on (rule 7), so two creates judged at once cannot nest."""
        key = _request_key(uri, body)
        self._pending[key] = known
        self._pending.move_to_end(key)
        self.state.reserved_binds[key] = tuple(
            v.host for v in known.all_volumes if v.state != "violation"
        )
        while len(self._pending) > MAX_PENDING:
            old, _ = self._pending.popitem(last=False)
            self.state.reserved_binds.pop(old, None)

    def reserve(self, uri: str, body: bytes, paths: list[str]) -> None:
        """A create being judged: its binds count as live at once (rule 7), so that another
        create judged meanwhile cannot nest with them."""
        self.state.reserved_binds[_request_key(uri, body)] = tuple(paths)

    def release(self, uri: str, body: bytes) -> None:
        """A create that was refused after all gives its reservation back."""
        key = _request_key(uri, body)
        if key not in self._pending:
            self.state.reserved_binds.pop(key, None)

    def created(self, uri: str, body: bytes, container_id: str) -> Known | None:
        """Docker answered the create: the container is known by its id from now on."""
        key = _request_key(uri, body)
        known = self._pending.pop(key, None)
        if known is None or not container_id:
            self.state.reserved_binds.pop(key, None)
            return None
        # the binds stay reserved until the Docker watch holds the container
        self._settling[container_id] = key
        self.settle()
        known.id = container_id
        self._by_id[container_id] = known
        self._by_id.move_to_end(container_id)
        if known.name:
            self._by_name[known.name] = container_id
        while len(self._by_id) > MAX_KNOWN:
            old_id, old = self._by_id.popitem(last=False)
            if old.name and self._by_name.get(old.name) == old_id:
                del self._by_name[old.name]
        return known

    # --- lookups ------------------------------------------------------------------------
    def settle(self) -> None:
        """Reserved binds of created containers the state knows now are its to hold."""
        for cid in [c for c in self._settling if c in self.state.containers]:
            self.state.reserved_binds.pop(self._settling.pop(cid), None)
        while len(self._settling) > MAX_PENDING:
            _, key = self._settling.popitem(last=False)
            self.state.reserved_binds.pop(key, None)

    def find(self, ref: str) -> Known | None:
        """The container a start names (full id, unique id prefix or name), from the
        guard's memory first, then from the daemon's state; None when neither knows it."""
        ref = ref.lstrip("/")
        if not ref:
            return None
        hit = self._by_id.get(ref)
        if hit is None and ref in self._by_name:
            hit = self._by_id.get(self._by_name[ref])
            seen = self.state.containers.get(hit.id) if hit is not None else None
            if seen is not None and seen.name != ref:
                hit = None  # renamed since: the Docker watch knows the name it has now
        if hit is not None:
            return hit
        return self._from_state(ref) or self._by_prefix(ref)

    def _from_state(self, ref: str) -> Known | None:
        containers = self.state.containers
        record = containers.get(ref) or self.state.container_named(ref)
        if record is None:
            prefixed = [c for c in containers.values() if c.id.startswith(ref)]
            record = prefixed[0] if len(prefixed) == 1 else None
        if record is None:
            return None
        return Known(name=record.name, volumes=list(record.volumes), spec=record.spec, id=record.id)

    def _by_prefix(self, ref: str) -> Known | None:
        matches = [k for cid, k in self._by_id.items() if cid.startswith(ref)]
        return matches[0] if len(matches) == 1 else None

    def volumes_from(self, refs: list[str]) -> tuple[list[VolumeRecord], list[str]]:
        """The binds on the shared filesystem a container inherits through VolumesFrom
        (`name[:ro|:rw]`), and the references nobody knows (they cannot be judged)."""
        out: list[VolumeRecord] = []
        unknown: list[str] = []
        for ref in refs:
            name, _, mode = ref.partition(":")
            source = self.find(name)
            if source is None:
                unknown.append(name)
                continue
            for v in source.all_volumes:
                ro = v.read_only or mode == "ro"
                out.append(VolumeRecord(v.host, v.container, ro, v.state, v.error))
        return out, unknown
