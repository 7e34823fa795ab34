"""The closed vocabularies' strings are an interface: the status document and the metric
labels carry exactly these, whatever the enums' members are called."""

from __future__ import annotations

import json

import pytest

from volagent.config import Config
from volagent.state import AgentState
from volagent.vocabulary import MountState

MOUNT_STATES = ["mounted", "mounting", "stalled", "unmounted", "local", "disabled"]


def test_mount_states_in_the_status_document_and_the_metrics() -> None:
    assert [s.value for s in MountState] == MOUNT_STATES
    state = AgentState(Config(rack="r"))
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
