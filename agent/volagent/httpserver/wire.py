"""HTTP/1.1 on the wire, without sockets: request bytes in, requests out; responses in, bytes
out. Nothing here reads a clock or a socket, so every limit and every malformed request can be
checked with plain bytes (the connection, in connection.py, owns time and the socket).

`RequestParser` is fed what the socket gave, in pieces of any size, and hands out whole
requests (head and body) one at a time. It holds the server's hard limits: a head larger than
`max_header_bytes` or with more than `max_headers` fields is a 431, a body larger than
`max_body` (or chunked in more than `max_chunks` chunks) a 413, a garbled request a 400, a
version other than 1.0 and 1.1 a 505; the connection answers the error and closes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token, ASCII only
_TARGET_BAD = re.compile(r"[\x00-\x20\x7f]")  # controls and space
# str.isprintable() is False for every character this looks for and costs a fraction of a
# regex search, so the search runs only on the rare value that is not printable (the start
# guard parses a request head for every Docker API call).
_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls but tab
# empty lines, not bare CRs: "\rGET" is no request line
_EMPTY_LINES = re.compile(rb"(?:\r?\n)*")
# a chunk-size line: hex digits only (int(x, 16) alone would take "0x1a", "+1a", " 1a" and
# "1_a", which other parsers frame differently), then extensions without controls, which are
# ignored; white space before ";" (RFC 9112's BWS) or at the end is let through
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]+)[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?")
_REASONS = {s.value: s.phrase for s in HTTPStatus}
# the longest chunk-size line of a chunked body
MAX_CHUNK_LINE = 1024
# the most chunks of a chunked body: one per KiB of the body limit, and at least this many.
# Each chunk costs the event loop a turn of a Python loop: a 64 KiB body of one-byte chunks
# took 60 ms of it, parsed before the request waits for its turn (servers whose share of the
# loop is held to a turnstile were not held to it)
MIN_MAX_CHUNKS = 1024
# the interim answer to `Expect: 100-continue`
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes = b""
    peer_uid: int | None = None
    peer_pid: int | None = None
    peer_gid: int | None = None
    transport: str = "unix"  # "unix" or "tcp": what the request came through
    keep_alive: bool = True  # whether the client keeps the connection open after the answer


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, obj: object) -> Response:
    return Response(status, json.dumps(obj, separators=(",", ":")).encode() + b"\n")


def error_response(status: int, message: str) -> Response:
    return json_response(status, {"error": message, "status": status})


class BadRequest(Exception):
    """The request cannot be served; `status` is the answer, after which the connection closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- requests ----------------------------------------------------------------------------
class Phase(StrEnum):
    """Where the parser is: between requests, inside a request head, inside a request body
    (`RequestParser.phase`); and inside a chunked body, where the body is: a chunk-size
    line, a chunk's data, the trailer fields."""

    IDLE = "idle"
    HEAD = "head"
    BODY = "body"
    CHUNK_SIZE = "chunk size"
    CHUNK_DATA = "chunk data"
    TRAILERS = "trailers"


# as module globals: looking a member up on its enum class costs about 140 ns on Python 3.11
IDLE, HEAD, BODY, _CHUNK_SIZE, _CHUNK_DATA, _TRAILERS = Phase


class RequestParser:
    """Requests from the bytes of one connection, in order.

    `feed` adds bytes; `next_event` then gives a whole `Request` (its `keep_alive` says
    whether the connection goes on after it), or `CONTINUE` (bytes the connection sends at
    once: the client waits for them before sending the body), or None when more bytes are
    needed: `phase` says whether the parser is between requests (`IDLE`) or inside a head
    or body. Raises BadRequest for a request that breaks the protocol or the limits; the
    parser is of no further use then. `buf` holds the bytes not parsed yet."""

    def __init__(self, *, max_body: int, max_header_bytes: int, max_headers: int) -> None:
        self.max_body = max_body
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.buf = bytearray()
        self.phase: Phase = IDLE
        self._request: Request | None = None  # its head parsed, its body not yet
        self._length = 0  # the body's Content-Length; -1: chunked
        self._chunked = bytearray()
        self._chunk_state = _CHUNK_SIZE
        self._chunk_size = 0
        self._trailers = 0
        self._chunks_seen = 0
        self.max_chunks = max(MIN_MAX_CHUNKS, max_body >> 10)

    def feed(self, data: bytes | memoryview) -> None:
        self.buf += data

    def pending(self) -> bool:
        """Whether the bytes held begin a request, not just the empty lines a client may
        send between requests (without copying a large buffer to find out)."""
        if self.phase is not IDLE:
            return True
        buf = self.buf
        return bool(buf) and (buf[0] not in b"\r\n" or bool(buf.lstrip(b"\r\n")))

    def next_event(self) -> Request | bytes | None:
        if self.phase is IDLE:
            buf = self.buf
            if buf and buf[0] in b"\r\n":  # empty lines before a request line (RFC 9112)
                empty = _EMPTY_LINES.match(buf)
                del buf[: empty.end() if empty else 0]
            if not buf or buf == b"\r":  # (the CR of a CRLF still to come)
                return None
            self.phase = HEAD
        if self.phase is HEAD:
            return self._head()
        return self._body()

    def _head(self) -> Request | bytes | None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > self.max_header_bytes:
                raise BadRequest(431, f"request head larger than {self.max_header_bytes} bytes")
            return None
        if end > self.max_header_bytes:
            raise BadRequest(431, f"request head larger than {self.max_header_bytes} bytes")
        head = bytes(buf[:end])
        del buf[: end + 4]
        method, target, version, headers = parse_head(head, self.max_headers)
        path, _, qs = target.partition("?")
        query = dict(parse_qsl(qs, keep_blank_values=True)) if qs else {}
        keep_alive = _wants_keep_alive(version, headers.get("connection", ""))
        if "%" in path:
            path = unquote(path)
        request = Request(method, path, query, headers, keep_alive=keep_alive)
        te = headers.get("transfer-encoding")
        cl = headers.get("content-length")
        if te is not None and cl is not None:
            raise BadRequest(400, "both Transfer-Encoding and Content-Length")
        if te is not None:
            if te.strip().lower() != "chunked":
                raise BadRequest(501, f"transfer-encoding {te!r} is not supported")
            self._length = -1
            self._chunked = bytearray()
            self._chunk_state = _CHUNK_SIZE
            self._trailers = 0
            self._chunks_seen = 0
        elif cl is None:
            self.phase = IDLE
            return request
        else:
            if not cl.isdigit() or not cl.isascii():
                raise BadRequest(400, f"bad Content-Length {cl!r}")
            self._length = int(cl)
            if self._length > self.max_body:
                raise BadRequest(
                    413, f"body of {self._length} bytes is larger than {self.max_body}"
                )
        self._request = request
        self.phase = BODY
        if headers.get("expect", "").lower() == "100-continue":
            return CONTINUE
        return self._body()

    def _body(self) -> Request | None:
        request = self._request
        if request is None:
            raise RuntimeError("no request head to read a body for")
        if self._length >= 0:
            length = self._length
            if len(self.buf) < length:
                return None
            request.body = bytes(self.buf[:length])
            del self.buf[:length]
        elif not self._chunks():
            return None
        else:
            request.body = bytes(self._chunked)
            self._chunked = bytearray()
        self._request = None
        self.phase = IDLE
        return request

    def _chunks(self) -> bool:
        """Reads a chunked body on; whether it has ended (trailers included)."""
        buf = self.buf
        while True:
            if self._chunk_state is _CHUNK_DATA:
                size = self._chunk_size
                if len(buf) < size + 2:
                    return False
                if buf[size : size + 2] != b"\r\n":
                    raise BadRequest(400, "chunk not followed by CRLF")
                self._chunked += buf[:size]
                del buf[: size + 2]
                self._chunk_state = _CHUNK_SIZE
                continue
            line = self._line(MAX_CHUNK_LINE if self._chunk_state is _CHUNK_SIZE else None)
            if line is None:
                return False
            if self._chunk_state is _TRAILERS:  # checked, then dropped
                if not line:
                    return True
                self._trailers += 1
                if self._trailers > self.max_headers:
                    raise BadRequest(431, "too many trailer fields")
                _check_trailer(line)
                continue
            match = _CHUNK_LINE.fullmatch(line)
            if match is None:
                raise BadRequest(400, f"bad chunk size line {line[:20]!r}")
            size = int(match[1], 16)
            if size == 0:
                self._chunk_state = _TRAILERS
                continue
            if len(self._chunked) + size > self.max_body:
                raise BadRequest(413, f"chunked body larger than {self.max_body} bytes")
            self._chunks_seen += 1
            if self._chunks_seen > self.max_chunks:
                raise BadRequest(413, f"chunked body in more than {self.max_chunks} chunks")
            self._chunk_size = size
            self._chunk_state = _CHUNK_DATA

    def _line(self, limit: int | None) -> bytes | None:
        """A line up to its CRLF, None when it has not all come yet."""
        end = self.buf.find(b"\r\n")
        if end < 0:
            if len(self.buf) > (self.max_header_bytes if limit is None else limit):
                raise BadRequest(400, "line too long")
            return None
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line


def parse_head(head: bytes, max_headers: int) -> tuple[str, str, str, dict[str, str]]:
    """The request line and header fields of a request head; raises BadRequest(400/431)."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest(400, "request head is not ASCII") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise BadRequest(400, "malformed method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(
            400 if not version.startswith("HTTP/") else 505, "unsupported HTTP version"
        )
    if not target.startswith("/") or _TARGET_BAD.search(target):
        raise BadRequest(400, "malformed request target")
    if len(lines) - 1 > max_headers:
        raise BadRequest(431, f"more than {max_headers} header fields")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise BadRequest(400, "malformed header field")
        name = name.lower()
        value = value.strip(" \t")
        if not value.isprintable() and _VALUE_BAD.search(value):
            raise BadRequest(400, f"control character in header {name}")
        if name in headers:
            if name in ("content-length", "host", "transfer-encoding"):
                raise BadRequest(400, f"repeated header {name}")
            headers[name] += ", " + value
        else:
            headers[name] = value
    return method, target, version, headers


def _check_trailer(line: bytes) -> None:
    """A trailer field is never read, but it must be one (a name, a colon, a value without
    controls), as a header field must."""
    name, sep, value = line.partition(b":")
    if not sep or not _TOKEN.fullmatch(name.decode("latin-1")) or not value.isascii():
        raise BadRequest(400, "malformed trailer field")
    if _VALUE_BAD.search(value.decode("ascii")):
        raise BadRequest(400, "control character in a trailer field")


def _wants_keep_alive(version: str, connection: str) -> bool:
    if not connection:
        return version != "HTTP/1.0"
    tokens = {t.strip().lower() for t in connection.split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


# --- responses ---------------------------------------------------------------------------
def encode_response(resp: Response, close: bool) -> bytes:
    return encode_head(resp, close) + resp.body


# heads of answers without header fields of their own, by what decides them: a server gives
# few different answers (the start guard's "allow" to nearly every call)
_HEADS: dict[tuple[int, str, int, bool], bytes] = {}
_HEADS_MAX = 256


def encode_head(resp: Response, close: bool) -> bytes:
    """The status line and header fields of `resp`, up to the blank line."""
    if resp.headers:
        return _encode_head(resp, close)
    key = (resp.status, resp.content_type, len(resp.body), close)
    head = _HEADS.get(key)
    if head is None:
        if len(_HEADS) >= _HEADS_MAX:
            _HEADS.clear()
        head = _HEADS[key] = _encode_head(resp, close)
    return head


def _encode_head(resp: Response, close: bool) -> bytes:
    lines = [f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Unknown')}"]
    if resp.status not in (204, 304):
        lines.append(f"Content-Type: {resp.content_type}")
        lines.append(f"Content-Length: {len(resp.body)}")
    for name, value in resp.headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            continue
        lines.append(f"{name}: {value}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
