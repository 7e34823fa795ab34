"""Where one cleaned path lies against another, and rule 7 (binds do not nest) on them: pure
functions, for the binds of this host (volumes/) and the rack's registry (rack/) alike."""

from __future__ import annotations

from collections.abc import Iterable


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
