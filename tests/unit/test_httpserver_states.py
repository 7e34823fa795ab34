"""The connection's states: the transition table is whole, a move outside it is a bug that
raises, and a slow reader's connection waits in DRAINING, then serves on."""

from __future__ import annotations

import asyncio
import socket
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


async def test_a_slow_reader_waits_in_draining_and_then_is_served_on(tmp_path: Path) -> None:
    big = Response(200, b"x" * (8 << 20))
    seen: list[str] = []

    def handle(req: Request) -> Response:
        seen.append(req.path)
        return big if req.path == "/big" else Response(200, b"small")

    server = HttpServer("test", handle)
    path = str(tmp_path / "api.sock")
    await server.start_unix(path, mode=0o600)
    loop = asyncio.get_running_loop()
    # a bare socket that reads only when told to: a stream reader would read on its own, and
    # could take the whole answer between two looks at the state (DRAINING never seen)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.setblocking(False)
    try:
        await loop.sock_connect(client, path)
        await loop.sock_sendall(client, b"GET /big HTTP/1.1\r\n\r\nGET /small HTTP/1.1\r\n\r\n")
        await _until(lambda: server.connections)
        (conn,) = server.connections
        # a connection that does not wait serves /small at once: a failure, not a hang
        await _until(lambda: conn.state is State.DRAINING or len(seen) > 1)
        assert conn.state is State.DRAINING
        assert seen == ["/big"]  # the next request waits for the answer to be read
        got = bytearray()
        while not got.endswith(b"small"):
            got += await loop.sock_recv(client, 1 << 20)
        head, _, rest = bytes(got).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert rest[: 8 << 20] == big.body
        assert rest[8 << 20 :].startswith(b"HTTP/1.1 200 OK")
        assert seen == ["/big", "/small"]
        await _until(lambda: conn.state is State.READING)
        client.close()
        await _until(lambda: conn.state is State.RELEASED)
        assert not server.connections
    finally:
        client.close()
        await server.close()
