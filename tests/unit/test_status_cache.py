"""The status socket's answers are rendered once per change, and are always what a fresh
rendering would be (the human view: within a second for its counters)."""

from __future__ import annotations

import json

from tests.unit.factories import make_state

from volagent.api.status_cache import MAX_AGE_S, StatusCache
from volagent.state import AgentState, ContainerRecord, VolumeRecord


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _state(containers: int = 3) -> AgentState:
    state = make_state()
    for i in range(containers):
        vol = VolumeRecord(f"/volumes/r-a/web/d{i}", "/data", False)
        state.upsert_container(ContainerRecord(f"c{i}", f"web-{i}", "r", "a", "web", [vol]))
        state.set_volume_state(vol, "ready")
    return state


def _fresh(state: AgentState, pretty: bool = False, **extra: object) -> bytes:
    doc = state.status_document()
    doc.update(extra)
    if pretty:
        return json.dumps(doc, indent=2).encode() + b"\n"
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def test_the_document_is_byte_for_byte_a_fresh_one() -> None:
    for containers in (0, 1, 3):
        state = _state(containers)
        state.warn("w", 'a "quoted" \x00warning, "containers": []')
        cache = StatusCache(state)
        for pretty in (False, True):
            assert cache.document(pretty=pretty) == _fresh(state, pretty)
            hosts = {"hosts": [{"host": "h\x1b"}], "hosts_error": "x"}
            assert cache.document(pretty=pretty, extra=hosts) == _fresh(state, pretty, **hosts)


def test_every_change_of_the_containers_shows_at_once() -> None:
    state = _state()
    cache = StatusCache(state)
    cache.document()
    version = state.containers_version
    vol = state.containers["c1"].volumes[0]
    state.set_volume_state(vol, "late", "came first")
    assert cache.document() == _fresh(state)
    assert json.loads(cache.document())["status"] == "degraded"
    state.forget_container("c1")
    assert cache.document() == _fresh(state)
    state.upsert_container(ContainerRecord("c9", "new", "r", "a", "web", []))
    assert cache.document(pretty=True) == _fresh(state, pretty=True)
    assert state.containers_version == version + 3
    # counters change without touching the containers: still exact
    state.guard.allowed += 5
    state.count_event()
    assert cache.document() == _fresh(state)


def test_the_containers_are_encoded_once_per_change() -> None:
    state = _state()
    cache = StatusCache(state)
    first = cache._containers_json(False)
    assert cache._containers_json(False) is first
    state.set_volume_state(state.containers["c0"].volumes[0], "ready")
    assert cache._containers_json(False) is not first


def test_the_human_view_is_kept_a_second_unless_something_that_matters_changes() -> None:
    state = _state()
    clock = Clock()
    cache = StatusCache(state, clock)
    text, verdict = cache.text(color=False, verbose=False)
    assert verdict == "ok"
    assert "0 allowed" not in text  # the guard is off
    state.count_event()
    assert cache.text(color=False, verbose=False)[0] is text  # counters may lag...
    clock.now += MAX_AGE_S
    again, _ = cache.text(color=False, verbose=False)
    assert again is not text  # ...by a second at most
    state.warn("k", "something to fix")
    assert "something to fix" in cache.text(color=False, verbose=False)[0]
    state.set_mount_state("stalled", "probe timed out")
    text, verdict = cache.text(color=False, verbose=False)
    assert verdict == "critical" and "CRITICAL" in text
    vol = state.containers["c2"].volumes[0]
    state.set_volume_state(vol, "violation", "escapes")
    assert "escapes" in cache.text(color=False, verbose=True)[0]
    # one rendering is kept per kind of view asked for
    cache.text(color=True, verbose=True)
    assert len(cache._text) == len({key[:3] for key in cache._text}) == 3
