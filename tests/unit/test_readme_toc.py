"""The README's table of contents stays complete and true: every `##` section is listed, in
the document's order, and every entry's anchor is a heading of the README."""

from __future__ import annotations

import re
from pathlib import Path

from tests.unit.markdown_doc import anchors, headings

README = Path(__file__).resolve().parents[2] / "README.md"
TOC_ENTRY = re.compile(r"^\s*- \[(?P<title>[^]]+)\]\(#(?P<anchor>[^)]+)\)")


def toc() -> list[tuple[str, str]]:
    """(title, anchor) of each entry of the first list of links to anchors in the README."""
    entries: list[tuple[str, str]] = []
    for line in README.read_text(encoding="utf-8").splitlines():
        match = TOC_ENTRY.match(line)
        if match:
            entries.append((match["title"], match["anchor"]))
        elif entries and line.strip():
            break
    return entries


def test_every_section_is_in_the_table_of_contents_in_order() -> None:
    sections = [h.anchor for h in headings(README.read_text(encoding="utf-8")) if h.level == 2]
    listed = [anchor for _, anchor in toc()]
    missing = [s for s in sections if s not in listed]
    assert not missing, f"README sections missing from its table of contents: {missing}"
    assert [a for a in listed if a in sections] == sections, "the table of contents is out of order"


def test_every_entry_of_the_table_of_contents_names_a_heading() -> None:
    known = anchors(README.read_text(encoding="utf-8"))
    entries = toc()
    assert entries, "README.md has no table of contents (a list of `- [Title](#anchor)` lines)"
    broken = [(title, anchor) for title, anchor in entries if anchor not in known]
    assert not broken, f"table of contents entries naming no heading of README.md: {broken}"
