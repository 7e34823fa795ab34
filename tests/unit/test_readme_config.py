"""The README's configuration reference and the config code cannot drift: every key of the
config dataclasses is a row of the README's table with its default and its `doc` text, and
every row is a key. On a mismatch the failure prints the table as it should read."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tomli_w

from volagent import config

README = Path(__file__).resolve().parents[2] / "README.md"
START = "<!-- config-reference:"
END = "<!-- end of config-reference -->"
ROW = re.compile(r"^\| `([^`]+)` \| `(.*)` \| (.*) \|$")


def toml_defaults() -> dict[str, str]:
    """dotted key -> its value as TOML, from what `check-config` prints for an empty file."""
    doc = tomllib.loads(config.to_toml(config.from_dict({})))
    values: dict[str, str] = {}

    def walk(table: dict[str, Any], prefix: str, depth: int) -> None:
        for key, value in table.items():
            if isinstance(value, dict) and depth == 0:
                walk(value, f"{prefix}{key}.", depth + 1)
            elif isinstance(value, dict):
                values[prefix + key] = "{}" if not value else repr(value)
            else:
                values[prefix + key] = tomli_w.dumps({"v": value}).partition(" = ")[2].strip()

    walk(doc, "", 0)
    return values


def fields(obj: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from fields(value, f"{f.name}.")
        else:
            yield f"{prefix}{f.name}", f.metadata.get("doc", "")


def expected_rows() -> list[tuple[str, str, str]]:
    """(dotted key, default as TOML, doc) for every field, in declaration order."""
    defaults = toml_defaults()
    return [(key, defaults[key], doc) for key, doc in fields(config.Config())]


def render(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| key | default | what it is |", "|---|---|---|"]
    lines += [f"| `{k}` | `{d}` | {doc.replace('|', chr(92) + '|')} |" for k, d, doc in rows]
    return "\n".join(lines)


def readme_rows() -> list[tuple[str, str, str]]:
    text = README.read_text(encoding="utf-8")
    assert START in text and END in text, "README.md lost its config-reference markers"
    table = text[text.index(START) : text.index(END)].splitlines()[1:]
    rows = []
    for line in table[2:]:  # past the header and the separator
        match = ROW.match(line)
        assert match, f"README config row is not `| `key` | `default` | doc |`: {line!r}"
        key, default, doc = match.groups()
        rows.append((key, default, doc.replace("\\|", "|")))
    return rows


def test_every_config_key_is_documented_with_its_default_and_meaning() -> None:
    expected = expected_rows()
    documented = readme_rows()
    missing = sorted({k for k, _, _ in expected} - {k for k, _, _ in documented})
    unknown = sorted({k for k, _, _ in documented} - {k for k, _, _ in expected})
    hint = "\nthe table should read:\n" + render(expected)
    assert not missing, f"keys missing from README.md: {missing}{hint}"
    assert not unknown, f"README.md documents keys the config does not have: {unknown}{hint}"
    assert documented == expected, f"defaults, docs or order differ{hint}"


def test_every_field_has_a_doc() -> None:
    for key, _, doc in expected_rows():
        assert doc.strip(), f"{key} has no doc metadata"


def _keys_in_sentence(text: str, opening: str) -> list[str]:
    start = text.index(opening) + len(opening)
    end = text.index(".", start)
    while text[end + 1 : end + 2] not in (" ", "\n", ""):  # a dot inside a key name
        end = text.index(".", end + 1)
    return re.findall(r"`([a-z_.]+)`", text[start:end])


def test_the_readme_says_which_keys_remount_and_which_need_a_restart() -> None:
    # declared once, on each config field: the daemon, the mount side and this text agree
    text = " ".join(README.read_text().split())
    remount = _keys_in_sentence(text, "These keys make it remount with the new settings:")
    assert sorted(remount) == sorted(config.keys_applying(config.REMOUNT))
    restart = _keys_in_sentence(text, "These keys need a restart:")
    assert sorted(restart) == sorted([*config.keys_applying(config.RESTART), "guard.enabled"])
    assert config.keys_applying(config.RESTART_TO_ENABLE) == ["guard.enabled"]
