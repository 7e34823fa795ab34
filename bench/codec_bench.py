"""The codec swap: the start guard's HTTP server with its own parser, with h11 and with
httptools as the codec, the rest of the server unchanged (docs/HTTP-SERVER.md).

Two measures, each printed as a ratio to the server's own parser measured in the same run:
- parsing alone: each of the two requests dockerd sends the guard for one `docker ps -a`
  (http_bench's AuthZReq and AuthZRes), fed whole to a fresh parser, best of seven runs;
- the guard's server with the codec swapped in (the connection's parser class replaced in the
  server's process), on asyncio's loop and on uvloop: http_bench's client replaying the pair
  on one kept-alive connection, with client and server on one CPU (the cost of the work) and
  on two (where the wake-ups across CPUs dominate); p50 a pair and the server's CPU a pair.
httptools and uvloop are measured where they are installed (`pip install -e '.[bench]'`).

Each adapter gives the connection what the server's `RequestParser` does (`feed`,
`next_event`, `phase`, `buf`, `pending`). h11 writes its side of each exchange itself before
it reads the next request, so its adapter writes a minimal answer through h11 and drops the
bytes: the cost h11's users pay, who write their answers with it.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote

import h11

from bench.http_bench import PAIRS, ROUNDS, _requests, _run, serve_guard
from volagent.httpserver import connection
from volagent.httpserver.wire import (
    BODY,
    HEAD,
    IDLE,
    BadRequest,
    Phase,
    Request,
    RequestParser,
)

PARSES = 2000  # parses a run, best of seven runs


def _request(method: str, target: str, headers: dict[str, str], keep_alive: bool) -> Request:
    """A Request as the server's own parser makes it."""
    path, _, qs = target.partition("?")
    query = dict(parse_qsl(qs, keep_blank_values=True)) if qs else {}
    return Request(method, unquote(path), query, headers, keep_alive=keep_alive)


def _fields(pairs: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        out[key] = out[key] + ", " + text if key in out else text
    return out


class H11Parser:
    """h11 behind the server's parser interface."""

    _ANSWER = h11.Response(status_code=200, headers=[("Content-Length", "0")])

    def __init__(self, *, max_body: int, max_header_bytes: int, max_headers: int) -> None:
        self.max_body = max_body
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self.buf = bytearray()  # h11 holds the bytes: nothing for the connection to count
        self.phase: Phase = IDLE
        self._head: h11.Request | None = None
        self._body = bytearray()

    def feed(self, data: bytes | memoryview) -> None:
        self.conn.receive_data(bytes(data))

    def pending(self) -> bool:
        return self.phase is not IDLE or bool(self.conn.trailing_data[0].strip(b"\r\n"))

    def next_event(self) -> Request | bytes | None:
        conn = self.conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return None
                if isinstance(event, h11.Request):
                    self._head, self._body, self.phase = event, bytearray(), BODY
                elif isinstance(event, h11.Data):
                    self._body += event.data
                    if len(self._body) > self.max_body:
                        raise BadRequest(413, f"body larger than {self.max_body} bytes")
                elif isinstance(event, h11.EndOfMessage) and self._head is not None:
                    head, self._head, self.phase = self._head, None, IDLE
                    alive = conn.their_state is h11.DONE
                    req = _request(
                        head.method.decode(),
                        head.target.decode(),
                        _fields(head.headers),
                        alive,
                    )
                    req.body = bytes(self._body)
                    conn.send(self._ANSWER)
                    conn.send(h11.EndOfMessage())
                    return req
        except h11.RemoteProtocolError as exc:
            raise BadRequest(exc.error_status_hint, str(exc)) from None


class HttptoolsParser:
    """httptools behind the server's parser interface: it parses as bytes come, so whole
    requests wait in a queue for `next_event`."""

    def __init__(self, *, max_body: int, max_header_bytes: int, max_headers: int) -> None:
        import httptools  # noqa: PLC0415 (optional: only where it is installed)

        self.max_body = max_body
        self.parser = httptools.HttpRequestParser(self)
        self.error_type = httptools.HttpParserError
        self.buf = bytearray()  # httptools holds nothing back
        self.phase: Phase = IDLE
        self._ready: deque[Request] = deque()
        self._error: BadRequest | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = bytearray()

    def feed(self, data: bytes | memoryview) -> None:
        if self._error is not None:
            return
        try:
            self.parser.feed_data(bytes(data))
        except self.error_type as exc:
            self._error = BadRequest(400, str(exc))
        except BadRequest as exc:
            self._error = exc

    def pending(self) -> bool:
        return self.phase is not IDLE or bool(self._ready)

    def next_event(self) -> Request | bytes | None:
        if self._ready:
            return self._ready.popleft()
        if self._error is not None:
            raise self._error
        return None

    # httptools' callbacks
    def on_message_begin(self) -> None:
        self.phase, self._url, self._headers, self._body = HEAD, b"", [], bytearray()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.phase = BODY

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > self.max_body:
            raise BadRequest(413, f"body larger than {self.max_body} bytes")

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        alive = self.parser.should_keep_alive()
        req = _request(method, self._url.decode(), _fields(self._headers), alive)
        req.body = bytes(self._body)
        self._ready.append(req)
        self.phase = IDLE


CODECS: dict[str, Callable[..., Any]] = {"volagent": RequestParser, "h11": H11Parser}
if importlib.util.find_spec("httptools"):
    CODECS["httptools"] = HttptoolsParser


def serve(codec: str, path: str) -> None:
    """The guard's server on `path`, its connections parsing with `codec`."""
    vars(connection)["RequestParser"] = CODECS[codec]  # what each connection makes
    serve_guard(path)


def _parse_once(codec: Callable[..., Any], data: bytes) -> Request:
    parser = codec(max_body=1 << 20, max_header_bytes=16 << 10, max_headers=64)
    parser.feed(data)
    event = parser.next_event()
    if not isinstance(event, Request):
        raise RuntimeError(f"{codec.__name__} did not give the request")
    return event


def _parsing(pair: tuple[bytes, bytes]) -> None:
    print(f"parsing alone, one request, best of 7 runs of {PARSES}, the codecs taking turns")
    for data, label in zip(pair, ("AuthZReq", "AuthZRes"), strict=True):
        runs: dict[str, list[float]] = {name: [] for name in CODECS}
        for name, codec in CODECS.items():
            if _parse_once(codec, data).body != data.split(b"\r\n\r\n", 1)[1]:
                raise RuntimeError(f"{name} read another body")
        for _ in range(7):
            for name, codec in CODECS.items():
                started = time.perf_counter()
                for _ in range(PARSES):
                    _parse_once(codec, data)
                runs[name].append((time.perf_counter() - started) / PARSES)
        base = min(runs["volagent"])
        for name, times in runs.items():
            best = min(times)
            print(
                f"  {label} {len(data):>5} B  {name:<10} {best * 1e6:6.1f} us  x{best / base:5.2f}"
            )


def _serving(pair: tuple[bytes, bytes]) -> None:
    loops = (False, True) if importlib.util.find_spec("uvloop") else (False,)
    cpus = sorted(os.sched_getaffinity(0))
    settings = [("one CPU", cpus[0], cpus[0])]
    if len(cpus) > 1:
        settings.append(("two CPUs", cpus[0], cpus[1]))
    print(
        f"the guard's server with each codec, {PAIRS} request pairs a run, median of "
        f"{ROUNDS} runs taken in turns; ratios to its own parser on asyncio's loop"
    )
    try:
        for setting, client_cpu, server_cpu in settings:
            os.sched_setaffinity(0, {client_cpu})
            servers = [(name, uvloop) for uvloop in loops for name in CODECS]
            runs: dict[tuple[str, bool], list[tuple[float, float]]] = {s: [] for s in servers}
            for _ in range(ROUNDS):
                for name, uvloop in servers:
                    command = [sys.executable, "-m", "bench.codec_bench", "serve", name]
                    runs[name, uvloop].append(_run(command, uvloop, pair, server_cpu))
            base = statistics.median(r[0] for r in runs["volagent", False])
            for (name, uvloop), results in runs.items():
                p50 = statistics.median(r[0] for r in results)
                used = statistics.median(r[1] for r in results)
                label = f"{name}{' on uvloop' if uvloop else ''}, {setting}"
                print(
                    f"  {label:<30} p50 {p50 * 1e6:6.1f} us  x{p50 / base:5.2f}"
                    f"   server CPU {used * 1e6:6.1f} us"
                )
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


def main() -> None:
    pair = _requests()
    missing = [m for m in ("httptools", "uvloop") if not importlib.util.find_spec(m)]
    if missing:
        print(f"not installed, so not measured: {', '.join(missing)}")
    _parsing(pair)
    _serving(pair)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2], sys.argv[3])
    else:
        main()
