"""The guard's parsers and rules against generated attacker input: no body, however odd,
makes them raise anything but the one error that means "cannot read this" (which denies).

Hypothesis builds create, start and volume bodies from the fields dockerd reads (in every
case spelling Go accepts), with values an attacker would try: paths in every spelling,
lone surrogates, NULs, wrong types, deep nesting. Each generated body is then mutated into
further variants, so one run judges well over 50,000 bodies.
"""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.factories import make_state

from volagent.guard.protocol import (
    CreateBodyError,
    parse_create_body,
    parse_volume_body,
    route,
)
from volagent.volumes.locate import CONTAINS, INSIDE, OUTSIDE, Landing
from volagent.volumes.preparer import Preparer
from volagent.worker import TimedWorker

MP = "/volumes"
EXAMPLES = 2_600
VARIANTS = 20  # mutated bodies judged per generated one
FIELDS = ["Labels", "Env", "User", "HostConfig", "Binds", "Mounts", "VolumesFrom", "Image"]
HC_FIELDS = ["Binds", "Mounts", "VolumesFrom", "NetworkMode"]
PATHS = [
    f"{MP}/r1-a/web/data",
    f"/{MP}/r1-b/web/data",
    f"/proc/self/root{MP}/r1-b",
    f"{MP}/r1-a/../r1-b",
    f"{MP}/r1-a/web/\ud800",
    f"{MP}/r1-a/web/\x00x",
    f"{MP}/.volagent/trash",
    "/",
    "//",
    "relative/path",
    "named-volume",
    "",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.sampled_from(PATHS),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(FIELDS), inner, max_size=4)
    ),
    max_leaves=12,
)
bind_specs = st.builds(
    lambda host, ctr, opts: f"{host}:{ctr}{opts}",
    st.sampled_from(PATHS),
    st.sampled_from(["/data", "", "/x:/y"]),
    st.sampled_from(["", ":ro", ":rw,z", ":"]),
)
mounts = st.dictionaries(
    st.sampled_from(["Type", "Source", "Target", "ReadOnly", "VolumeOptions", "type"]),
    st.one_of(st.sampled_from(["bind", "volume", "tmpfs"]), st.sampled_from(PATHS), values),
    max_size=5,
)
host_configs = st.fixed_dictionaries(
    {},
    optional={
        "Binds": st.one_of(st.lists(bind_specs, max_size=4), values),
        "Mounts": st.one_of(st.lists(mounts, max_size=3), values),
        "VolumesFrom": st.one_of(st.lists(st.text(max_size=8), max_size=3), values),
    },
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "Labels": st.one_of(
            st.dictionaries(
                st.sampled_from(["convox.app", "convox.rack", "convox.service", "volagent.owner"]),
                st.one_of(st.sampled_from(["a", "b", "r1", "r1-b", "\ud800", "0:0", ""]), values),
                max_size=4,
            ),
            values,
        ),
        "Env": st.one_of(st.lists(st.sampled_from(["APP=a", "APP=b", "RACK=r2", "x"])), values),
        "User": st.one_of(st.sampled_from(["", "33:33", "nobody", "\ud800"]), values),
        "HostConfig": st.one_of(host_configs, values),
        "Binds": st.lists(bind_specs, max_size=2),
    },
)


def _mutate(doc: Any, rng: random.Random) -> Any:
    """One variant of a body: keys in other cases, paths swapped, fields moved up a level."""
    if isinstance(doc, dict):
        out = {}
        for key, value in doc.items():
            spelled = key.upper() if rng.random() < 0.1 else key  # Go matches keys in any case
            out[spelled] = _mutate(value, rng)
        if "HostConfig" in out and isinstance(out["HostConfig"], dict) and rng.random() < 0.2:
            out.update(out.pop("HostConfig"))  # the embedded HostConfig of old clients
        return out
    if isinstance(doc, list):
        return [_mutate(v, rng) for v in doc]
    if isinstance(doc, str) and rng.random() < 0.3:
        return rng.choice(PATHS) + rng.choice(["", ":/data", ":/data:ro"])
    return doc


def _encode(doc: Any, rng: random.Random) -> bytes:
    text = json.dumps(doc)  # lone surrogates become \\ud800 escapes, as an attacker sends them
    if rng.random() < 0.05:
        text = text[: rng.randrange(len(text) + 1)]  # cut short
    return text.encode()


def _landings(spec: Any, rng: random.Random) -> dict[str, Landing]:
    """Where each outside bind would land, drawn at random: the rules must hold for any."""
    out = {}
    for b in spec.binds:
        kind = rng.choice([INSIDE, CONTAINS, OUTSIDE, "unresolved"])
        path = rng.choice([f"{MP}/r1-b/web", f"{MP}/r1-a/web/x", MP, "could not resolve"])
        out[b.host] = Landing(b.host, kind, path)
    return out


COUNTED = {"bodies": 0}


@pytest.fixture(scope="module")
def preparer(tmp_path_factory: pytest.TempPathFactory) -> Preparer:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    state = make_state(mount_point=MP, state_dir=str(tmp), docker_state=None)
    return Preparer(state, TimedWorker("fuzz", max_threads=1))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
@given(doc=bodies, seed=st.integers(0, 2**32 - 1))
def test_no_create_or_start_body_makes_the_rules_raise(
    preparer: Preparer, doc: dict[str, Any], seed: int
) -> None:
    rng = random.Random(seed)  # noqa: S311 - reproducible variants, not secrets
    for _ in range(VARIANTS):
        raw = _encode(_mutate(doc, rng), rng)
        COUNTED["bodies"] += 1
        for uri in ("/v1.41/containers/create?name=x", "/v1.23/containers/abc/start"):
            assert route("POST", uri).kind in ("create", "start")
        try:
            create = parse_create_body(raw, "x")
        except CreateBodyError:
            continue  # denied as unreadable
        outcome = preparer.outcome_of(create.spec, _landings(create.spec, rng))
        if outcome is not None:
            preparer.check_nesting(outcome)
            assert len(outcome.volumes) == len(outcome.plans)
            for vol in outcome.volumes:
                assert vol.state in ("pending", "violation", "failed")
        with contextlib.suppress(CreateBodyError):
            parse_volume_body(raw)


def test_the_fuzzing_judged_enough_bodies() -> None:
    # runs after the property above in file order; alone, it has nothing to count
    if COUNTED["bodies"]:
        assert COUNTED["bodies"] >= 50_000
