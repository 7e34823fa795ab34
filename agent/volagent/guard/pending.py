"""Creates the start guard allowed and Docker has not answered yet.

An allowed create is held under its request (URI and body) until Docker's answer names the
new container's id (AuthZRes); then the guard hands it to the daemon's one table of
containers (`AgentState.containers`), which the Docker watch, the nesting rule, the usage
records and every later start read. From the moment it is judged, a create's binds count as
live (rule 7): two creates judged at once cannot nest. Bounded: the oldest entries go.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from volagent.nesting import HostBind
from volagent.state import AgentState, VolumeRecord
from volagent.vocabulary import VolumeState
from volagent.volumes.namespace import Identity
from volagent.volumes.preparer import ContainerSpec

MAX_PENDING = 512


@dataclass(frozen=True)
class AllowedCreate:
    """A create the guard allowed: what it was judged from, and its volumes as prepared."""

    spec: ContainerSpec
    volumes: list[VolumeRecord]
    identity: Identity | None = None  # None: nothing of it was on the shared filesystem


def request_key(uri: str, body: bytes) -> bytes:
    """The key of a create request: a digest of its URI and body."""
    # a digest, so creates waiting for their answer hold no bodies (up to 1 MiB each)
    return hashlib.sha256(uri.encode() + b"\0" + body).digest()


class PendingCreates:
    """Allowed creates waiting for their id, and the binds they reserve. Owned by the event
    loop."""

    def __init__(self, state: AgentState) -> None:
        self.state = state
        self._pending: OrderedDict[bytes, AllowedCreate] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def reserve(self, key: bytes, paths: list[str], host: tuple[HostBind, ...] = ()) -> None:
        """A create being judged (`key`: its request_key): its binds count as live at once
        (`host`: its sources outside the mount point, for rule 7 on host paths)."""
        self.state.reserved_binds[key] = tuple(paths)
        self.state.reserved_host_binds[key] = host

    def release(self, key: bytes) -> None:
        """A create that was refused after all gives its reservation back."""
        if key not in self._pending:
            self.state.reserved_binds.pop(key, None)
            self.state.reserved_host_binds.pop(key, None)

    def allowed(self, key: bytes, create: AllowedCreate) -> None:
        """An allowed create: held until Docker answers it, its binds reserved."""
        self._pending[key] = create
        self._pending.move_to_end(key)
        self.state.reserved_binds[key] = tuple(
            v.host for v in create.volumes if v.state != VolumeState.VIOLATION
        )
        self.state.reserved_host_binds[key] = create.spec.host_binds
        while len(self._pending) > MAX_PENDING:
            old, _ = self._pending.popitem(last=False)
            self.state.reserved_binds.pop(old, None)
            self.state.reserved_host_binds.pop(old, None)

    def answered(self, key: bytes) -> AllowedCreate | None:
        """Docker answered the create: what was allowed, no longer pending, its reservation
        given back (the caller puts the container in the state's table, whose binds are
        live from then on)."""
        self.state.reserved_binds.pop(key, None)
        self.state.reserved_host_binds.pop(key, None)
        return self._pending.pop(key, None)
