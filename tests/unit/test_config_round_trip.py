"""What `volagent check-config` prints is a config that loads back to the same config, for
every key of every type, and every TOML example the project ships passes `check-config`.

`check-config` is what provisioning runs on a rack's config before baking it into an
image: a crash there fails the image build with "invalid config"."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from volagent import config
from volagent.values import NAME_RE, Size
from volagent.vocabulary import MountType, OnViolation, OverQuota, WhenUnhealthy

CONFIG_VOCABULARIES = (MountType, WhenUnhealthy, OnViolation, OverQuota)

ROOT = Path(__file__).resolve().parents[2]
TOML_BLOCK = re.compile(r"^([ \t]*)```toml\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)

NAMES = st.from_regex(NAME_RE, fullmatch=True)
SIZES = st.builds(
    lambda number, unit: Size(f"{number}{unit}"),
    st.integers(min_value=1, max_value=10**6),
    st.sampled_from(["", "B", "KB", "MiB", "GB", "GiB", "TiB", "PB"]),
)
# A value of each type a config key may have, in the Python form the config holds; a key of
# a type missing here fails the test below with the type to add.
BY_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "str": st.text(),
    "bool": st.booleans(),
    "int": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "float": st.floats(allow_nan=False),
    "Size | None": st.none() | SIZES,
    "dict[str, Size]": st.dictionaries(NAMES, SIZES, max_size=4),
    "list[str]": st.lists(NAMES, max_size=4),
    "tuple[str, ...]": st.lists(NAMES, max_size=4).map(tuple),
    **{vocabulary.__name__: st.sampled_from(vocabulary) for vocabulary in CONFIG_VOCABULARIES},
}


def section_strategy(cls: type[Any]) -> st.SearchStrategy[Any]:
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in dataclasses.fields(cls):
        if f.name in config.SECTIONS and cls is config.Config:
            fields[f.name] = section_strategy(config.SECTIONS[f.name])
            continue
        kind = str(f.type)
        assert kind in BY_TYPE, f"{cls.__name__}.{f.name} has type {kind}: add it to BY_TYPE"
        fields[f.name] = BY_TYPE[kind]
    return st.builds(cls, **fields)


@given(section_strategy(config.Config))
def test_every_value_of_every_key_survives_to_toml_and_back(cfg: config.Config) -> None:
    # build checks types, not values: the values here are arbitrary ones of each key's type
    assert config.build(tomllib.loads(config.to_toml(cfg))) == cfg


def test_a_config_with_quotas_round_trips_through_load(tmp_path: Path) -> None:
    path = tmp_path / "volagent.toml"
    path.write_text('[quotas]\ndefault = "1.5TiB"\n[quotas.apps]\nshop = "50GiB"\nweb = "10"\n')
    cfg = config.load(str(path))
    path.write_text(config.to_toml(cfg))
    again = config.load(str(path))
    assert again == cfg
    assert (again.quotas.default, again.quotas.apps["shop"]) == (Size("1.5TiB"), Size("50GiB"))
    assert str(again.quotas.default) == "1.5TiB"


def shipped_examples() -> list[tuple[str, str]]:
    """(where, TOML text) of every ```toml block of the Markdown docs and every examples/ file."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        for match in TOML_BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{doc.relative_to(ROOT)}:{line}", textwrap.dedent(match[2])))
    for example in sorted((ROOT / "examples").glob("*.toml")):
        found.append((str(example.relative_to(ROOT)), example.read_text(encoding="utf-8")))
    return found


def test_the_docs_have_toml_examples() -> None:
    where = {w.split(":")[0] for w, _ in shipped_examples()}
    assert {"README.md", "examples/volagent.toml", "examples/local.toml"} <= where


@pytest.mark.parametrize(("where", "text"), shipped_examples(), ids=lambda v: v.split("\n")[0])
def test_check_config_passes_on_every_shipped_example(
    tmp_path: Path, where: str, text: str
) -> None:
    path = tmp_path / "volagent.toml"
    path.write_text(text, encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "volagent", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, f"{where}: {out.stderr}"
    assert config.from_dict(tomllib.loads(out.stdout)) == config.load(str(path)), where
