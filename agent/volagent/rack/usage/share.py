"""Which host of the rack walks which namespace: rendezvous (highest random weight) hashing
over the live hosts of the heartbeats.

Every host computes the same owner from the same list of fresh heartbeats, with nothing to
coordinate and no lock files; a host joining or leaving moves only the namespaces it wins or
held. A host that has not seen its own heartbeat yet still counts itself, so a lone host
walks everything from the start.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any


def weight(host: str, namespace: str) -> int:
    """The host's stable pseudo-random weight for a namespace (the same on every host)."""
    digest = hashlib.blake2b(f"{host}\0{namespace}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(hosts: Iterable[str], namespace: str) -> str | None:
    """The host that walks `namespace`; ties (never in practice) go to the smaller name."""
    best: tuple[int, str] | None = None
    for host in hosts:
        key = (weight(host, namespace), host)
        if best is None or key[0] > best[0] or (key[0] == best[0] and host < best[1]):
            best = key
    return best[1] if best else None


def live_hosts(rack_view: Iterable[dict[str, Any]], me: str, rack: str) -> list[str]:
    """The hosts sharing the walk of `rack`'s namespaces: every host of the rack view that is
    not stale and is of this rack (another rack's hosts may share the filesystem; a heartbeat
    that names no rack is counted in), and this host itself."""
    hosts = {
        str(h["host"])
        for h in rack_view
        if not h.get("stale") and str(h.get("rack") or rack) == rack
    }
    hosts.add(me)
    return sorted(hosts)


def mine(namespaces: Iterable[str], hosts: list[str], me: str) -> list[str]:
    """The namespaces this host walks."""
    return [ns for ns in namespaces if owner(hosts, ns) == me]
