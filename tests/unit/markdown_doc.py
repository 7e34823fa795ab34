"""Headings and anchors of a Markdown document as GitHub renders them, for the tests that
keep the README's table of contents and the alerts' runbook links true."""

from __future__ import annotations

import re
from dataclasses import dataclass

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


@dataclass(frozen=True)
class Heading:
    level: int
    title: str
    anchor: str


def slug(title: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped (hyphens
    and underscores kept), each space a hyphen."""
    text = re.sub(r"`|\*\*|\[([^]]*)\]\([^)]*\)", r"\1", title).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def headings(text: str) -> list[Heading]:
    """Every heading outside fenced code, with its anchor (a repeated one gets `-1`, `-2`)."""
    found: list[Heading] = []
    seen: dict[str, int] = {}
    in_fence = False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else HEADING.match(line)
        if match is None:
            continue
        base = slug(match[2])
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.append(Heading(len(match[1]), match[2], base if count == 0 else f"{base}-{count}"))
    return found


def anchors(text: str) -> set[str]:
    """The anchors a link `#...` into the document may name."""
    return {h.anchor for h in headings(text)}
