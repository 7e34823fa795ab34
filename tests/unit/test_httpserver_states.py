"""The connection's states: the transition table is whole, a move outside it is a bug that
raises, and a slow reader's connection waits in DRAINING, then serves on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from volagent.httpserver import HttpServer, Request, Response
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


async def _until(check: Callable[[], object]) -> None:
    # no wall-clock bound of its own (a loaded machine can take its time): the test's
    # timeout ends a hang
    while not check():
        await asyncio.sleep(0.01)


def test_a_slow_reader_waits_in_draining_and_then_is_served_on(tmp_path: Path) -> None:
    big = Response(200, b"x" * (8 << 20))
    seen: list[str] = []

    def handle(req: Request) -> Response:
        seen.append(req.path)
        return big if req.path == "/big" else Response(200, b"small")

    async def main() -> None:
        server = HttpServer("test", handle)
        path = str(tmp_path / "api.sock")
        await server.start_unix(path, mode=0o600)
        reader, writer = await asyncio.open_unix_connection(path, limit=1 << 24)
        try:
            writer.write(b"GET /big HTTP/1.1\r\n\r\nGET /small HTTP/1.1\r\n\r\n")
            await _until(lambda: server.connections)
            (conn,) = server.connections
            await _until(lambda: conn.state is State.DRAINING)
            assert seen == ["/big"]  # the next request waits for the answer to be read
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK")
            assert len(await reader.readexactly(8 << 20)) == 8 << 20
            await reader.readuntil(b"\r\n\r\n")
            assert await reader.readexactly(5) == b"small"
            assert seen == ["/big", "/small"]
            await _until(lambda: conn.state is State.READING)
            writer.close()
            await _until(lambda: conn.state is State.RELEASED)
            assert not server.connections
        finally:
            writer.close()
            await server.close()

    asyncio.run(main())
