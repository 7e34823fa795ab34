"""Where one cleaned path lies against another, and rule 7 (binds do not nest) on them: pure
functions, for the binds of this host (volumes/) and the rack's registry (rack/) alike, and
the same rule for bind sources on the host outside the mount point (`host_path_nested`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


def under(path: str, root: str) -> bool:
    """`path` is `root` or lies below it (both cleaned)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def strictly_under(path: str, root: str) -> bool:
    return path != root and under(path, root)


def nested_with(path: str, others: Iterable[tuple[str, str]]) -> str | None:
    """Rule 7: why `path` may not be bound beside `others` ((path, whose) pairs), or None.
    Identical paths share one directory and are fine; strict nesting is not."""
    for other, whose in others:
        if strictly_under(path, other):
            return f"{path} lies inside {other}, which {whose} binds; binds may not nest"
        if strictly_under(other, path):
            return f"{path} contains {other}, which {whose} binds; binds may not nest"
    return None


@dataclass(frozen=True)
class HostBind:
    """A bind source spelled outside the mount point as the host resolved it when it was
    judged: where it led and every location the lookup visited (volumes/locate.resolve)."""

    source: str
    resolved: str
    visited: tuple[str, ...]


def host_path_nested(mine: HostBind, others: Iterable[tuple[HostBind, str]]) -> str | None:
    """Rule 7 for host paths: why `mine` may not be bound beside `others` ((bind, whose)
    pairs), or None. Docker resolves a bind source again at every start, a restart by its
    policy included, and asks nobody: whoever binds a directory strictly above a location the
    lookup visits can plant a symlink there. Identical sources share and are fine."""
    for other, whose in others:
        for place in mine.visited:
            if strictly_under(place, other.resolved):
                return (
                    f"{mine.source} leads through {place}, inside {other.source}, which {whose} "
                    f"binds: a container that binds {other.source} can change what this path "
                    "leads to; binds may not nest"
                )
        for place in other.visited:
            if strictly_under(place, mine.resolved):
                return (
                    f"{mine.source} contains {place}, which {whose}'s bind of {other.source} "
                    f"leads through: a container that binds {mine.source} can change what that "
                    "path leads to; binds may not nest"
                )
    return None
