"""The wire codec alone: requests from bytes fed in pieces of any size, without a socket."""

from __future__ import annotations

import pytest

from volagent.httpserver.wire import (
    BODY,
    CONTINUE,
    HEAD,
    IDLE,
    BadRequest,
    Request,
    RequestParser,
    Response,
    encode_head,
    encode_response,
)


def _parser(**kw: int) -> RequestParser:
    limits = {"max_body": 1 << 20, "max_header_bytes": 4096, "max_headers": 16, **kw}
    return RequestParser(**limits)


def _events(parser: RequestParser, data: bytes, step: int) -> list[Request | bytes]:
    out: list[Request | bytes] = []
    for i in range(0, len(data), step):
        parser.feed(data[i : i + step])
        while (event := parser.next_event()) is not None:
            out.append(event)
    return out


STREAM = (
    b"\r\nGET /a%20b?x=1&y= HTTP/1.1\r\nHost: h\r\n\r\n"
    b"POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
    b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    b"GET /d HTTP/1.0\r\n\r\n"
    b"GET /e HTTP/1.1\r\nConnection: close\r\n\r\n"
)


@pytest.mark.parametrize("step", [1, 2, 7, 64, len(STREAM)])
def test_pieces_of_any_size_give_the_same_requests(step: int) -> None:
    parser = _parser()
    events = _events(parser, STREAM, step)
    assert all(isinstance(e, Request) for e in events)
    got = [(r.method, r.path, r.query, r.body, r.keep_alive) for r in events]  # type: ignore[union-attr]
    assert got == [
        ("GET", "/a b", {"x": "1", "y": ""}, b"", True),
        ("POST", "/b", {}, b"abc", True),
        ("POST", "/c", {}, b"hello world", True),
        ("GET", "/d", {}, b"", False),
        ("GET", "/e", {}, b"", False),
    ]
    assert (parser.phase, parser.buf, parser.pending()) == (IDLE, bytearray(), False)


def test_phases_and_what_is_pending() -> None:
    parser = _parser()
    parser.feed(b"\r\n\r\n")
    assert not parser.pending()
    assert parser.next_event() is None
    parser.feed(b"POST /x HTTP/1.1\r\nContent-")
    assert parser.pending()
    assert parser.next_event() is None
    assert parser.phase == HEAD
    parser.feed(b"Length: 2\r\n\r\na")
    assert parser.next_event() is None
    assert parser.phase == BODY
    parser.feed(b"bGET")
    req = parser.next_event()
    assert isinstance(req, Request) and req.body == b"ab"
    assert parser.phase == IDLE and parser.pending()


def test_expect_100_continue_comes_before_the_body() -> None:
    parser = _parser()
    parser.feed(b"POST /e HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    assert parser.next_event() == CONTINUE
    assert parser.next_event() is None
    parser.feed(b"ok")
    req = parser.next_event()
    assert isinstance(req, Request) and req.body == b"ok"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /a HTTP/1.1\r\nX: " + b"a" * 5000, 431),  # no end of head in sight
        (b"GET /a HTTP/1.1\r\nX: " + b"a" * 5000 + b"\r\n\r\n", 431),
        (b"GET /a HTTP/1.1\r\n" + b"".join(b"X%d: 1\r\n" % i for i in range(17)) + b"\r\n", 431),
        (b"POST /a HTTP/1.1\r\nContent-Length: 101\r\n\r\n", 413),
        (b"POST /a HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", 400),
        (b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST /a HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 2000, 400),
        (b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", 400),
        (
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n" + b"x" * 64 + b"\r\n"
            b"40\r\n",
            413,
        ),
        (b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + b"T: 1\r\n" * 17, 431),
        (b"GET /a HTTP/2.0\r\n\r\n", 505),
    ],
)
def test_limits_and_garbage(data: bytes, status: int) -> None:
    parser = _parser(max_body=100)
    with pytest.raises(BadRequest) as err:
        _events(parser, data, 13)
    assert err.value.status == status


def test_encoding_an_answer() -> None:
    resp = Response(200, b'{"Allow":true}\n', "application/x", {"X-A": "1"})
    raw = encode_response(resp, False)
    assert raw == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x\r\nContent-Length: 15\r\n"
        b'X-A: 1\r\n\r\n{"Allow":true}\n'
    )
    assert encode_head(resp, True).endswith(b"X-A: 1\r\nConnection: close\r\n\r\n")


def test_a_chunked_body_in_too_many_chunks_is_refused() -> None:
    # every chunk is a turn of a Python loop on the event loop: a body of one-byte chunks
    # cost 60 ms per 64 KiB before the request ever waited for its turn
    parser = _parser(max_body=64 << 10)
    assert parser.max_chunks == 1024
    head = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    ok = head + b"1\r\nx\r\n" * 1024 + b"0\r\n\r\n"
    (req,) = _events(parser, ok, 4096)
    assert isinstance(req, Request) and req.body == b"x" * 1024
    parser.feed(head + b"1\r\nx\r\n" * 1025 + b"0\r\n\r\n")
    with pytest.raises(BadRequest) as excinfo:
        parser.next_event()
    assert excinfo.value.status == 413
    assert _parser(max_body=64 << 20).max_chunks == 65536
