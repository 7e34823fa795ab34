"""The HTTP server: parsing, limits and isolation, over real Unix and TCP sockets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from volagent.httpserver import (
    BadRequest,
    HttpServer,
    Request,
    Response,
    encode_response,
    json_response,
    parse_head,
)
from volagent.httpserver.limits import PeerLimits
from volagent.httpserver.server import READ_SIZE

Seen = list[Request]


def _handler(seen: Seen) -> Callable[[Request], Awaitable[Response]]:
    async def handle(req: Request) -> Response:
        seen.append(req)
        if req.path == "/boom":
            raise RuntimeError("handler bug")
        return json_response(200, {"path": req.path, "len": len(req.body)})

    return handle


async def _exchange(path: str, data: bytes, *, eof: bool = False) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(data)
    if eof:
        writer.write_eof()
    await writer.drain()
    out = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return out


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def _serve(
    tmp_path: Path, body: Callable[[HttpServer, str, Seen], Awaitable[None]], **kw: object
) -> Seen:
    seen: Seen = []

    async def main() -> None:
        server = HttpServer("test", _handler(seen), **kw)  # type: ignore[arg-type]
        path = str(tmp_path / "api.sock")
        await server.start_unix(path, mode=0o600)
        try:
            await body(server, path, seen)
        finally:
            await server.close()
        assert not os.path.exists(path)

    asyncio.run(main())
    return seen


def test_get_with_query_headers_and_peer_credentials(tmp_path: Path) -> None:
    async def body(server: HttpServer, path: str, seen: Seen) -> None:
        assert os.stat(path).st_mode & 0o777 == 0o600
        raw = await _exchange(
            path,
            b"GET /v1/st%61tus?rack=1&x= HTTP/1.1\r\nHost: x\r\nX-Thing:  a b \r\n\r\n",
            eof=True,
        )
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
        assert json.loads(raw.split(b"\r\n\r\n", 1)[1]) == {"path": "/v1/status", "len": 0}

    seen = _serve(tmp_path, body)
    req = seen[0]
    assert (req.method, req.path, req.query) == ("GET", "/v1/status", {"rack": "1", "x": ""})
    assert req.headers == {"host": "x", "x-thing": "a b"}
    assert (req.peer_uid, req.peer_gid, req.peer_pid) == (os.getuid(), os.getgid(), os.getpid())


def test_keep_alive_and_pipelining(tmp_path: Path) -> None:
    async def body(server: HttpServer, path: str, seen: Seen) -> None:
        two = b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
        close = b"GET /c HTTP/1.1\r\nConnection: close\r\n\r\n"
        raw = await _exchange(path, two + close)
        assert raw.count(b"HTTP/1.1 200 OK") == 3
        assert raw.rstrip().endswith(b'{"path":"/c","len":0}')

    seen = _serve(tmp_path, body)
    assert [(r.path, r.body) for r in seen] == [("/a", b""), ("/b", b"abc"), ("/c", b"")]


def test_http10_closes_after_one_answer(tmp_path: Path) -> None:
    async def body(server: HttpServer, path: str, seen: Seen) -> None:
        raw = await _exchange(path, b"GET /a HTTP/1.0\r\n\r\n")
        assert b"Connection: close" in raw

    _serve(tmp_path, body)


def test_garbage_gets_400_and_the_server_keeps_serving(tmp_path: Path) -> None:
    async def body(server: HttpServer, path: str, seen: Seen) -> None:
        for junk in (
            b"\x00\xff\xfegarbage\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET /a HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET /a HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"GET /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ):
            raw = await _exchange(path, junk)
            assert _status(raw) == 400, junk
            assert b"Connection: close" in raw
            assert "error" in json.loads(raw.split(b"\r\n\r\n", 1)[1])
        raw = await _exchange(path, b"GET /ok HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert _status(raw) == 200

    seen = _serve(tmp_path, body)
    assert [r.path for r in seen] == ["/ok"]


def test_size_limits(tmp_path: Path) -> None:
    async def body(server: HttpServer, path: str, seen: Seen) -> None:
        big = b"POST /a HTTP/1.1\r\nContent-Length: 101\r\n\r\n"
        assert _status(await _exchange(path, big)) == 413
        chunked = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"40\r\n" + b"x" * 64
        assert _status(await _exchange(path, chunked + b"\r\n40\r\n" + b"y" * 64 + b"\r\n")) == 413
        long_head = b"GET /a HTTP/1.1\r\nX: " + b"a" * 3000 + b"\r\n\r\n"
        assert _status(await _exchange(path, long_head)) == 431
        many = b"GET /a HTTP/1.1\r\n" + b"".join(b"X%d: 1\r\n" % i for i in range(20)) + b"\r\n"
        assert _status(await _exchange(path, many)) == 431
        ok = b"POST /a HTTP/1.1\r\nContent-Length: 100\r\nConnection: close\r\n\r\n" + b"z" * 100
        assert _status(await _exchange(path, ok)) == 200

    seen = _serve(tmp_path, body, max_body=100, max_header_bytes=2048, max_headers=10)
    assert [len(r.body) for r in seen] == [100]


def test_chunked_body_with_extensions_and_trailers(tmp_path: Path) -> None:
    async def body(server: HttpServer, path: str, seen: Seen) -> None:
        req = (
            b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        assert _status(await _exchange(path, req)) == 200

    seen = _serve(tmp_path, body)
    assert seen[0].body == b"hello world"


def test_expect_100_continue(tmp_path: Path) -> None:
    async def body(server: HttpServer, path: str, seen: Seen) -> None:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"POST /e HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"ok")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.close()

    seen = _serve(tmp_path, body)
    assert seen[0].body == b"ok"


def test_slow_client_gets_408_while_others_are_served(tmp_path: Path) -> None:
    async def body(server: HttpServer, path: str, seen: Seen) -> None:
        slow_reader, slow_writer = await asyncio.open_unix_connection(path)
        slow_writer.write(b"GET /slow HTTP/1.1\r\nHost: ")
        # a second client is served while the first one dawdles
        raw = await _exchange(path, b"GET /fast HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert _status(raw) == 200
        raw = await asyncio.wait_for(slow_reader.read(), 30)
        assert _status(raw) == 408
        slow_writer.close()
        # an idle keep-alive connection is closed without an answer
        idle_reader, idle_writer = await asyncio.open_unix_connection(path)
        assert await asyncio.wait_for(idle_reader.read(), 30) == b""
        idle_writer.close()

    seen = _serve(tmp_path, body, header_timeout=0.3, idle_timeout=0.3)
    assert [r.path for r in seen] == ["/fast"]


async def test_a_client_that_reads_no_answer_is_let_go_after_the_write_timeout(
    tmp_path: Path,
) -> None:
    big = Response(200, b"x" * (8 << 20))

    server = HttpServer("test", lambda req: big, write_timeout=0.3)
    path = str(tmp_path / "api.sock")
    await server.start_unix(path, mode=0o600)
    try:
        _, writer = await asyncio.open_unix_connection(path)
        writer.write(_pipelined(2))  # and reads nothing
        for _ in range(100):
            if server.connections:
                break
            await asyncio.sleep(0.02)
        assert server.connections
        for _ in range(250):
            if not server.connections:
                break
            await asyncio.sleep(0.02)
        assert not server.connections
        assert server.budget.used == 0
        writer.close()
    finally:
        await server.close()


async def test_a_handler_may_answer_at_once_or_later(tmp_path: Path) -> None:
    seen: Seen = []

    def handle(req: Request) -> Response | Awaitable[Response]:
        seen.append(req)
        if req.path == "/later":

            async def later() -> Response:
                await asyncio.sleep(0.01)
                return json_response(200, {"when": "later"})

            return later()
        return json_response(200, {"when": "now"})

    server = HttpServer("test", handle)
    path = str(tmp_path / "api.sock")
    await server.start_unix(path, mode=0o600)
    try:
        raw = await _exchange(
            path, b"GET /later HTTP/1.1\r\n\r\nGET /now HTTP/1.1\r\n\r\n", eof=True
        )
    finally:
        await server.close()
    # answers go out in the order of the requests
    assert raw.index(b'"later"') < raw.index(b'"now"')
    assert [r.path for r in seen] == ["/later", "/now"]


async def test_connections_reading_in_turns_each_get_their_own_bytes(tmp_path: Path) -> None:
    # every read lands first in one buffer the server's connections share: a piece of one
    # client's body must never turn up in another's
    def handle(req: Request) -> Response:
        return json_response(200, {"path": req.path, "sha": hashlib.sha256(req.body).hexdigest()})

    bodies = {f"/c{i}": os.urandom(3 * READ_SIZE + 1000 * i) for i in range(3)}

    async def main() -> dict[str, str]:
        server = HttpServer("test", handle, max_body=1 << 20)
        path = str(tmp_path / "api.sock")
        await server.start_unix(path, mode=0o600)
        try:
            streams = {p: await asyncio.open_unix_connection(path) for p in bodies}
            for p, (_, writer) in streams.items():
                head = f"POST {p} HTTP/1.1\r\nContent-Length: {len(bodies[p])}\r\n\r\n"
                writer.write(head.encode())
            step = READ_SIZE // 3 + 7  # pieces that straddle the reads
            for at in range(0, max(map(len, bodies.values())), step):
                for p, (_, writer) in streams.items():
                    writer.write(bodies[p][at : at + step])
                    await writer.drain()
                await asyncio.sleep(0)
            got = {}
            for p, (reader, writer) in streams.items():
                writer.write_eof()
                raw = await asyncio.wait_for(reader.read(), 30)
                got[p] = json.loads(raw.split(b"\r\n\r\n", 1)[1])["sha"]
                writer.close()
            return got
        finally:
            await server.close()

    got = await main()
    assert got == {p: hashlib.sha256(b).hexdigest() for p, b in bodies.items()}


def test_a_body_too_large_gets_its_413_and_an_orderly_end_not_a_reset(tmp_path: Path) -> None:
    # the answer is decided at the head, with most of the body still on its way: closing
    # with it unread would reset the connection under the client before it read the 413
    async def body(server: HttpServer, path: str, seen: Seen) -> None:
        reader, writer = await asyncio.open_unix_connection(path)
        size = 8 * READ_SIZE
        writer.write(f"POST /big HTTP/1.1\r\nContent-Length: {size}\r\n\r\n".encode())
        for _ in range(size // 4096):
            writer.write(b"x" * 4096)
            await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        assert _status(raw) == 413, raw
        assert b"larger than" in raw
        assert seen == []

    _serve(tmp_path, body, max_body=1024)


def test_handler_exception_is_a_500_and_serving_goes_on(tmp_path: Path) -> None:
    async def body(server: HttpServer, path: str, seen: Seen) -> None:
        raw = await _exchange(
            path, b"GET /boom HTTP/1.1\r\n\r\nGET /after HTTP/1.1\r\n\r\n", eof=True
        )
        first, _, rest = raw.partition(b"HTTP/1.1 200")
        assert _status(first) == 500
        assert b"RuntimeError" in first
        assert b'"/after"' in rest

    _serve(tmp_path, body)


def test_connection_cap_answers_503(tmp_path: Path) -> None:
    async def body(server: HttpServer, path: str, seen: Seen) -> None:
        held = [await asyncio.open_unix_connection(path) for _ in range(2)]
        for _ in range(100):  # both held connections must be registered first
            if len(server.connections) == 2:
                break
            await asyncio.sleep(0.05)
        raw = await _exchange(path, b"GET /x HTTP/1.1\r\n\r\n")
        assert _status(raw) == 503
        for _, w in held:
            w.close()

    _serve(tmp_path, body, max_connections=2)


async def test_stale_socket_is_replaced_live_one_and_files_are_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens

    first = HttpServer("a", _handler([]))
    await first.start_unix(path)
    second = HttpServer("b", _handler([]))
    with pytest.raises(OSError, match="already serving"):
        await second.start_unix(path)
    await first.close()
    plain = tmp_path / "plain"
    plain.write_text("x")
    with pytest.raises(OSError, match="not a socket"):
        await second.start_unix(str(plain))
    assert plain.read_text() == "x"


async def test_prebound_socket_and_tcp(tmp_path: Path) -> None:
    seen: Seen = []
    path = str(tmp_path / "activated.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(16)

    server = HttpServer("x", _handler(seen))
    await server.start_unix(sock=listener)
    await server.start_tcp("127.0.0.1", 0)
    port = server.tcp_port
    assert port
    raw = await _exchange(path, b"GET /unix HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert _status(raw) == 200
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /tcp HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert _status(await reader.read()) == 200
    writer.close()
    await server.close()
    assert [(r.path, r.transport, r.peer_uid is None) for r in seen] == [
        ("/unix", "unix", False),
        ("/tcp", "tcp", True),
    ]


@pytest.mark.parametrize(
    "head",
    [
        b"GET  /a HTTP/1.1",
        b"GET a HTTP/1.1",
        b"G(T /a HTTP/1.1",
        b"GET /a HTTP/1.1\r\n folded: x",
        b"GET /a HTTP/1.1\r\nX: a\x01b",
        b"GET /a\x7f HTTP/1.1",
        b"GET /a\xc3\xa9 HTTP/1.1",
        b"GET /a HTTX/1.1",
    ],
)
def test_parse_head_rejects(head: bytes) -> None:
    with pytest.raises(BadRequest) as err:
        parse_head(head, 10)
    assert err.value.status == 400


def test_parse_head_joins_repeats_and_rejects_new_versions() -> None:
    _, _, _, headers = parse_head(b"GET / HTTP/1.1\r\nA: 1\r\na: 2", 10)
    assert headers == {"a": "1, 2"}
    with pytest.raises(BadRequest) as err:
        parse_head(b"GET / HTTP/2.0", 10)
    assert err.value.status == 505


def test_encode_response_drops_header_injection() -> None:
    raw = encode_response(Response(204, headers={"X-A": "1", "X-B": "evil\r\nSet: x"}), True)
    assert raw == b"HTTP/1.1 204 No Content\r\nX-A: 1\r\nConnection: close\r\n\r\n"


# --- sharing the server out among its clients ------------------------------------------------
def _pipelined(n: int, path: bytes = b"/p") -> bytes:
    return b"".join(b"GET %s%d HTTP/1.1\r\n\r\n" % (path, i) for i in range(n))


def test_too_many_requests_ahead_of_their_answers_get_429_and_a_close(tmp_path: Path) -> None:
    async def body(server: HttpServer, path: str, seen: Seen) -> None:
        raw = await _exchange(path, _pipelined(20))
        answers = raw.split(b"HTTP/1.1 ")[1:]
        assert [a[:3] for a in answers] == [b"200"] * 5 + [b"429"]
        assert b"more than 4 requests sent ahead of their answers" in answers[-1]
        assert b"Connection: close" in answers[-1]
        # a client that waits for each answer may send as many as it likes
        reader, writer = await asyncio.open_unix_connection(path)
        for i in range(10):
            writer.write(b"GET /w%d HTTP/1.1\r\n\r\n" % i)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        writer.close()

    seen = _serve(tmp_path, body, peer_limits=PeerLimits(max_pipelined=4))
    assert len(seen) == 5 + 10


@pytest.mark.parametrize("limits", [None, PeerLimits(max_pipelined=1000)])
async def test_pipelined_requests_let_other_clients_in_between(
    tmp_path: Path, limits: PeerLimits | None
) -> None:
    order: list[str] = []
    others: list[asyncio.Task[bytes]] = []

    path = str(tmp_path / "api.sock")

    async def handle(req: Request) -> Response:
        order.append(req.path)
        if req.path == "/p0":  # the flood has begun: another client asks once
            get = b"GET /other HTTP/1.1\r\nConnection: close\r\n\r\n"
            others.append(asyncio.ensure_future(_exchange(path, get)))
        return json_response(200, {})

    server = HttpServer("test", handle, peer_limits=limits)
    await server.start_unix(path, mode=0o600)
    try:
        await _exchange(path, _pipelined(300), eof=True)
        assert _status(await others[0]) == 200
    finally:
        await server.close()
    assert "/other" in order
    assert order.index("/other") < order.index("/p299")


def test_work_stops_for_a_client_that_has_gone(tmp_path: Path) -> None:
    async def body(server: HttpServer, path: str, seen: Seen) -> None:
        # sent and gone before the server even accepts: nobody will read the answers
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.sendall(_pipelined(100))
        for _ in range(200):
            if seen and not server.connections:
                break
            await asyncio.sleep(0.02)
        assert not server.connections

    seen = _serve(tmp_path, body, peer_limits=PeerLimits(max_pipelined=1000))
    assert [r.path for r in seen] == ["/p0"]


def test_partial_bodies_share_one_memory_budget(tmp_path: Path) -> None:
    half = b"POST /b HTTP/1.1\r\nContent-Length: 60000\r\n\r\n" + b"x" * 50000

    async def body(server: HttpServer, path: str, seen: Seen) -> None:
        held = []
        for expected in (1, 2):
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(half)
            held.append((reader, writer))
            for _ in range(200):  # until the server holds what was sent
                if server.budget.used >= expected * (50000 - 1024):
                    break
                await asyncio.sleep(0.02)
        assert server.budget.used >= 2 * (50000 - 1024)
        raw = await _exchange(path, half)
        assert _status(raw) == 503
        assert b"unfinished request data" in raw
        for _, writer in held:  # the bodies end: the budget is given back
            writer.write(b"y" * 10000)
        for reader, _ in held:
            assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        for _ in range(200):
            if server.budget.used == 0:
                break
            await asyncio.sleep(0.02)
        assert server.budget.used == 0
        for _, writer in held:
            writer.close()

    limits = PeerLimits(buffered_total=130 << 10)
    seen = _serve(tmp_path, body, peer_limits=limits, max_body=64 << 10, max_header_bytes=1024)
    assert [len(r.body) for r in seen] == [60000, 60000]


async def test_over_the_budget_while_an_answer_is_due_the_answer_comes_first(
    tmp_path: Path,
) -> None:
    async def handle(req: Request) -> Response:
        if req.path == "/slow":
            await asyncio.sleep(0.2)
        return json_response(200, {"path": req.path})

    server = HttpServer(
        "test",
        handle,
        max_header_bytes=1024,
        max_body=64 << 10,
        peer_limits=PeerLimits(buffered_total=8 << 10),
    )
    path = str(tmp_path / "api.sock")
    await server.start_unix(path, mode=0o600)
    try:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"GET /slow HTTP/1.1\r\n\r\n")
        await asyncio.sleep(0.05)  # /slow is being served when the rest comes
        writer.write(b"POST /big HTTP/1.1\r\nContent-Length: 60000\r\n\r\n" + b"x" * 20000)
        raw = await asyncio.wait_for(reader.read(), 30)
        writer.close()
    finally:
        await server.close()
    first, _, rest = raw.partition(b"HTTP/1.1 503")
    assert _status(first) == 200 and b'"/slow"' in first
    assert b"unfinished request data" in rest
    assert server.budget.used == 0


def test_a_refused_connection_is_told_why(tmp_path: Path) -> None:
    async def body(server: HttpServer, path: str, seen: Seen) -> None:
        held = await asyncio.open_unix_connection(path)
        for _ in range(100):
            if server.connections:
                break
            await asyncio.sleep(0.02)

        # a blocking client, as `volagent status` is: it must read the reason, not a reset
        def ask() -> bytes:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(30)
                s.connect(path)
                s.sendall(b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n")
                raw = b""
                while chunk := s.recv(65536):
                    raw += chunk
                return raw

        raw = await asyncio.to_thread(ask)
        assert _status(raw) == 503
        assert b"too many connections (1)" in raw
        held[1].close()

    _serve(tmp_path, body, max_connections=1)


async def test_socket_file_gets_its_mode_and_group(tmp_path: Path) -> None:
    path = str(tmp_path / "g.sock")
    server = HttpServer("g", _handler([]))
    gid = 65534 if os.geteuid() == 0 else os.getgid()
    await server.start_unix(path, mode=0o660, group=gid)
    st = os.stat(path)
    assert (st.st_mode & 0o777, st.st_gid) == (0o660, gid)
    await server.close()
