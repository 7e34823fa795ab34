"""The closed vocabularies' strings are an interface: the status document and the metric
labels carry exactly these, whatever the enums' members are called."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tests.unit.factories import make_state

from volagent import cli
from volagent.api import render
from volagent.state import AgentState, ContainerRecord, VolumeRecord
from volagent.vocabulary import (
    PROBLEM_VOLUME_STATES,
    DockerState,
    MountState,
    Verdict,
    VolumeState,
)

MOUNT_STATES = ["mounted", "mounting", "stalled", "unmounted", "local", "disabled"]


def test_mount_states_in_the_status_document_and_the_metrics() -> None:
    assert [s.value for s in MountState] == MOUNT_STATES
    state = make_state(mount_state=None, docker_state=None)
    for name in MOUNT_STATES:
        state.set_mount_state(name)
        doc = json.loads(json.dumps(state.status_document()))
        assert doc["mount"]["state"] == name
        text = state.metrics.render().decode()
        series = {line for line in text.splitlines() if line.startswith("volagent_mount_state{")}
        assert series == {
            f'volagent_mount_state{{state="{s}"}} {1.0 if s == name else 0.0}' for s in MOUNT_STATES
        }
        up = 1.0 if name in ("mounted", "local") else 0.0
        assert f"volagent_mount_up {up}" in text.splitlines()
    with pytest.raises(ValueError, match="unknown mount state 'mountd'"):
        state.set_mount_state("mountd")


FIXTURES = Path(__file__).parent.parent / "fixtures" / "vocabulary"
AGENT = Path(__file__).parent.parent.parent / "agent" / "volagent"


def _known_state() -> AgentState:
    """A state with a volume in each state, a degraded verdict and counted decisions."""
    state = make_state()
    record = ContainerRecord("c" * 64, "web", "r", "app", "api")
    for i, s in enumerate(VolumeState):
        vol = VolumeRecord(f"/volumes/r-app/api/{s}", f"/data/{i}", read_only=i % 2 == 1)
        record.volumes.append(vol)
        state.set_volume_state(vol, s, None if s == VolumeState.READY else f"why {s}")
    state.upsert_container(record)
    state.guard.enabled, state.guard.allowed, state.guard.denied = True, 3, 1
    state.warn("k", "a warning")
    return state


def test_status_document_is_pinned() -> None:
    doc = json.loads(json.dumps(_known_state().status_document()))
    # the times and the version vary from run to run; their keys stay
    for part in (doc["mount"], doc["docker"]):
        assert isinstance(part.pop("since"), str)
    assert isinstance(doc.pop("version"), str)
    # as text: the order of the keys is pinned too
    assert json.dumps(doc, indent=2) + "\n" == (FIXTURES / "status-document.json").read_text()


def test_verdicts_in_the_status_document_and_healthz() -> None:
    state = make_state(mount_state=None, docker_state=None)
    assert state.health() == {"healthy": False, "status": "critical"}
    state.set_mount_state(MountState.LOCAL)
    state.set_docker_state(DockerState.CONNECTED)
    assert json.loads(json.dumps(state.health())) == {"healthy": False, "status": "degraded"}
    state.set_mount_state(MountState.MOUNTED)
    assert json.loads(json.dumps(state.status_document()))["status"] == "ok"
    with pytest.raises(ValueError, match="'redy'"):
        state.set_volume_state(VolumeRecord("/volumes/x", "/x", False), "redy")  # type: ignore[arg-type]


def test_metric_label_values_are_pinned() -> None:
    text = _known_state().metrics.render().decode()
    # the agent's own series; `_created` carries the wall-clock time, build_info the version
    lines = [
        line
        for line in text.splitlines()
        if line.startswith("volagent_") and "_created" not in line and "build_info" not in line
    ]
    assert lines == (FIXTURES / "metrics.txt").read_text().splitlines()


def test_the_renderers_tables_are_the_vocabulary() -> None:
    # `volagent status` reads the JSON without importing the enums (its start-up time): its
    # tables must still name exactly the states the daemon writes
    assert set(cli.EXIT_BY_STATUS) == set(Verdict)
    assert set(render._VERDICT_STYLE) == set(Verdict)
    assert set(render.PROBLEM_STATES) == PROBLEM_VOLUME_STATES == set(render.FIX_VOLUME)
    assert set(render._STATE_ORDER) == set(VolumeState)
    assert set(render.FIX_MOUNT) == set(MountState) - {MountState.MOUNTED}
    assert set(render._STATE_STYLE) <= set(VolumeState) | set(MountState) | set(DockerState)


# a state, verdict, outcome or route kind compared with, or set to, a string literal: the
# enum's member is what mypy can check. The status renderer and the CLI read the JSON without
# the enums (test_the_renderers_tables_are_the_vocabulary pins them instead).
_LITERAL_STATE = re.compile(
    r"(state|verdict|outcome|\.kind|mount\.type)\)?\s*(==|!=|\bnot in\b|\bin\b)\s*[(\[{]?\s*\"|"
    r"\"\s*(==|!=)\s*[\w.]*(state|verdict|outcome)\b|"
    r"set_\w*state\([^)]*\"|\bstate=\""
)
_READ_THE_JSON = {"api/render.py", "cli.py"}


def test_no_state_is_compared_as_a_string_literal() -> None:
    found = [
        f"{path.relative_to(AGENT)}:{n}: {line.strip()}"
        for path in sorted(AGENT.rglob("*.py"))
        if str(path.relative_to(AGENT)) not in _READ_THE_JSON
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if _LITERAL_STATE.search(line)
    ]
    assert not found, "compare with the StrEnum's member instead:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "line",
    [
        'if v.state == "violation":',
        'if vol.state not in ("violation", "ready"):',
        'return {"healthy": verdict != "ok"}',
        'st.set_volume_state(vol, "failed", str(exc))',
        'VolumeRecord(b.host, b.container, state="failed")',
        'if moved.outcome == "kept":',
        'if route(method, uri).kind != "create":',
        'if "connected" == self.state.docker.state:',
        'if cfg.mount.type in ("local", "nfs"):',
    ],
)
def test_the_scan_finds_literal_states(line: str) -> None:
    assert _LITERAL_STATE.search(line)


def test_mypy_strict_refuses_a_misspelt_state(tmp_path: Path) -> None:
    """A misspelt member, or a bare string where a state goes, fails `make lint`."""
    from mypy import api

    snippet = tmp_path / "misspelt.py"
    snippet.write_text(
        "from volagent.state import AgentState\n"
        "from volagent.vocabulary import MountState\n"
        "def f(st: AgentState) -> None:\n"
        "    st.set_mount_state(MountState.MOUNTD)\n"
        '    st.set_mount_state("mounted")\n'
    )
    project = AGENT.parent.parent / "pyproject.toml"
    out, _, status = api.run(
        ["--config-file", str(project), "--cache-dir", str(tmp_path / "cache"), str(snippet)]
    )
    assert status == 1
    assert '"type[MountState]" has no attribute "MOUNTD"' in out
    assert 'incompatible type "str"; expected "MountState"' in out
