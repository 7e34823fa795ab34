"""The connection's states: the transition table is whole, and a move outside it is a bug
that raises."""

from __future__ import annotations

import pytest

from volagent.httpserver import connection as conn_module
from volagent.httpserver.connection import TRANSITIONS, Connection, State


def _reachable(start: State) -> set[State]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in TRANSITIONS[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_table_is_whole_and_every_state_ends_released() -> None:
    assert set(TRANSITIONS) == set(State)
    assert _reachable(State.OPENING) == set(State)
    for state in State:
        assert State.RELEASED in _reachable(state)
    assert TRANSITIONS[State.RELEASED] == frozenset()
    # the module's globals are the members, in their order
    for state in State:
        assert getattr(conn_module, state.name) is state


def test_a_move_outside_the_table_raises() -> None:
    conn = Connection.__new__(Connection)  # no server or socket needed to change state
    conn.state = State.LINGERING
    with pytest.raises(RuntimeError, match="from lingering to reading"):
        conn._become(State.READING)
    conn._become(State.CLOSED)
    conn._become(State.RELEASED)
    assert conn.state is State.RELEASED
