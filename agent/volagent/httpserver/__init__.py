"""volagent's HTTP/1.1 server for its local sockets, shared by the start guard and the status
API: `wire` turns bytes into requests and responses into bytes (no sockets), the connection
and the server own the sockets and their lifecycle, `limits` and `listener` share the server
out among its clients."""

from volagent.httpserver.limits import PeerLimits
from volagent.httpserver.server import (
    BadRequest,
    Handler,
    HttpServer,
    Request,
    Response,
    encode_response,
    error_response,
    json_response,
    parse_head,
)

__all__ = [
    "BadRequest",
    "Handler",
    "HttpServer",
    "PeerLimits",
    "Request",
    "Response",
    "encode_response",
    "error_response",
    "json_response",
    "parse_head",
]
