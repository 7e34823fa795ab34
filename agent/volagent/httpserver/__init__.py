"""volagent's HTTP/1.1 server for its local sockets, shared by the start guard and the status
API: `wire` turns bytes into requests and responses into bytes (no sockets, no clock),
`connection` is one client's connection around it (deadlines, limits, keep-alive, closing),
`server` listens, admits or refuses connections and stops; `limits` and `listener` share
the server out among its clients."""

from volagent.httpserver.server import HttpServer
from volagent.httpserver.wire import (
    BadRequest,
    Request,
    Response,
    encode_response,
    error_response,
    json_response,
    parse_head,
)

__all__ = [
    "BadRequest",
    "HttpServer",
    "Request",
    "Response",
    "encode_response",
    "error_response",
    "json_response",
    "parse_head",
]
