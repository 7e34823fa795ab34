"""What the start guard remembers about containers, so a start is judged from memory.

A create the guard allowed is held under its request (URI and body) until Docker's answer
names the new container's id (AuthZRes), then kept by id and by name. A start is looked up
here first, then in the daemon's state (containers the Docker watch inspected, those
created before the guard ran included). Both tables are bounded: the oldest entries go.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from volagent.state import AgentState, ContainerRecord, VolumeRecord
from volagent.volumes.preparer import ContainerSpec

MAX_KNOWN = 8192
MAX_PENDING = 512


@dataclass
class Known:
    """A container with binds under the mount point, as the guard last saw it."""

    name: str
    volumes: list[VolumeRecord]
    spec: ContainerSpec | None = None  # from the create body: lets a start re-prepare
    id: str = ""


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
            v.host for v in known.volumes if v.state != "violation"
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
        """The container a start or a VolumesFrom names, resolved the way Docker resolves
        it: the full id, then the name, then a unique id prefix. The Docker watch's state
        is the truth about containers that exist; the guard's own memory speaks only for
        containers created a moment ago that the watch has not seen yet, so a name that
        was removed or renamed since cannot point somewhere Docker does not."""
        ref = ref.lstrip("/")
        if not ref:
            return None
        st = self.state
        record = st.containers.get(ref)
        if record is not None:
            return _known(record)
        hit = self._by_id.get(ref)
        if hit is not None and hit.id in self._settling:
            return hit
        record = st.container_named(ref)
        if record is not None:
            return _known(record)
        hit = self._by_id.get(self._by_name.get(ref, ""))
        if hit is not None and hit.id in self._settling:
            return hit
        found = [_known(c) for c in st.containers.values() if c.id.startswith(ref)]
        found += [k for cid, k in self._settling_known() if cid.startswith(ref)]
        return found[0] if len(found) == 1 else None  # none, or ambiguous: not known

    def _settling_known(self) -> list[tuple[str, Known]]:
        return [(cid, self._by_id[cid]) for cid in self._settling if cid in self._by_id]

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
            for v in source.volumes:
                ro = v.read_only or mode == "ro"
                out.append(VolumeRecord(v.host, v.container, ro, v.state, v.error))
        return out, unknown


def _known(record: ContainerRecord) -> Known:
    return Known(name=record.name, volumes=list(record.volumes), spec=record.spec, id=record.id)
