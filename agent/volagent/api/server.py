"""The routes of the local socket: health, status, metrics, and two root-only actions.

Every answer comes from the in-memory AgentState, never from the filesystem, so the socket
answers at once even while the shared filesystem hangs, and rendered once per change (see
status_cache), so a client asking in a loop costs little. State-changing calls are for root
only, judged by the peer credentials of the Unix socket. Over TCP (`[api] metrics_address`,
for node scraping) only `/metrics` and `/v1/health` are served.

The socket shares the event loop with the start guard; `server()` gives it the limits that
keep any one client from holding it (see httpserver.limits, and README "Security model").
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from volagent import log
from volagent.api.status_cache import StatusCache
from volagent.errors import VolagentError
from volagent.httpserver import HttpServer, Request, Response, error_response, json_response
from volagent.httpserver.limits import PeerLimits
from volagent.state import AgentState

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# how long `?rack=1` waits for the hosts list before answering without it
HOSTS_TIMEOUT_S = 1.0
# how long a hosts list read from the heartbeats serves further `?rack=1` requests
HOSTS_MAX_AGE_S = 1.0
# the socket's limits: its requests are small (POST bodies are `{}`)
MAX_BODY = 64 << 10
MAX_CONNECTIONS = 256
ACCEPT_BATCH = 8  # per turn of the loop, when the socket's share of it allows
LIMITS = PeerLimits(
    per_uid_connections=16,
    root_reserved=64,
    max_pipelined=16,
    buffered_total=4 << 20,
    loop_share=0.1,
)

Action = Callable[[], Awaitable[dict[str, Any]]]
HostsSource = Callable[[], Awaitable[list[dict[str, Any]]]]
UsageSource = Callable[[], list[dict[str, Any]]]

_TRUE = ("1", "true", "yes", "on", "")


def _flag(req: Request, name: str) -> bool:
    return name in req.query and req.query[name].lower() in _TRUE


_TCP_ROUTES = ("/metrics", "/v1/health")


class StatusApi:
    """Answers the local socket's requests from `state`; `on_reconcile`/`on_remount` are the
    daemon's actions, `hosts` lists the rack's hosts from their heartbeats (None: unknown)."""

    def __init__(
        self,
        state: AgentState,
        on_reconcile: Action,
        on_remount: Action,
        hosts: HostsSource | None = None,
        usage: UsageSource | None = None,
    ) -> None:
        self.state = state
        self.hosts = hosts
        self.cache = StatusCache(state)
        self._hosts_read: tuple[float, list[dict[str, Any]], str | None] | None = None
        self.usage = usage
        self._log = log.get("api")
        self._routes: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {
            "/v1/health": {"GET": self._health},
            "/v1/status": {"GET": self._status},
            "/metrics": {"GET": self._metrics},
            "/v1/reconcile": {"POST": functools.partial(self._act, "reconcile", on_reconcile)},
            "/v1/remount": {"POST": functools.partial(self._act, "remount", on_remount)},
        }

    def server(self) -> HttpServer:
        return HttpServer(
            "api",
            self.handle,
            max_body=MAX_BODY,
            max_connections=MAX_CONNECTIONS,
            peer_limits=LIMITS,
            accept_batch=ACCEPT_BATCH,
        )

    async def handle(self, req: Request) -> Response:
        if req.transport == "tcp" and req.path not in _TCP_ROUTES:
            return error_response(404, f"{req.path} is served on the local socket only")
        methods = self._routes.get(req.path)
        if methods is None:
            return error_response(404, f"no such endpoint: {req.path}")
        method = "GET" if req.method == "HEAD" else req.method
        route = methods.get(method)
        if route is None:
            allowed = ", ".join(sorted({*methods, "HEAD"} if "GET" in methods else methods))
            resp = error_response(405, f"{req.method} is not allowed on {req.path}; use {allowed}")
            resp.headers["Allow"] = allowed
            return resp
        return await route(req)

    # --- reads -------------------------------------------------------------------------
    async def _health(self, req: Request) -> Response:
        health = self.state.health()
        return json_response(200 if health["healthy"] else 503, health)

    async def _status(self, req: Request) -> Response:
        """The status document; `rack=1` adds the hosts. For the command line, which stays
        light by neither parsing JSON nor rendering: `format=text` (with `color=1`,
        `verbose=1`) is the human view, `pretty=1` indents the JSON, and the verdict travels
        in the `X-Volagent-Status` header."""
        extra: dict[str, Any] | None = None
        if _flag(req, "rack"):
            hosts, error = await self._rack_hosts()
            extra = {"hosts": hosts, **({"hosts_error": error} if error else {})}
            # per app, from the usage walk's last records (in memory: never waits on the mount)
            extra["usage"] = self.usage() if self.usage else []
        if req.query.get("format", "json") == "text":
            text, verdict = self.cache.text(
                color=_flag(req, "color"), verbose=_flag(req, "verbose"), extra=extra
            )
            headers = {"X-Volagent-Status": verdict}
            return Response(200, text.encode(), "text/plain; charset=utf-8", headers)
        verdict = self.state.verdict()
        body = self.cache.document(pretty=_flag(req, "pretty"), extra=extra)
        return Response(200, body, headers={"X-Volagent-Status": verdict})

    async def _rack_hosts(self) -> tuple[list[dict[str, Any]], str | None]:
        now = time.monotonic()
        if self._hosts_read is not None and now - self._hosts_read[0] < HOSTS_MAX_AGE_S:
            return self._hosts_read[1], self._hosts_read[2]
        hosts, error = await self._read_rack_hosts()
        self._hosts_read = (time.monotonic(), hosts, error)
        return hosts, error

    async def _read_rack_hosts(self) -> tuple[list[dict[str, Any]], str | None]:
        if self.hosts is None:
            return [], "the rack view is not available in this agent"
        try:
            async with asyncio.timeout(HOSTS_TIMEOUT_S):
                hosts = await self.hosts()
            return list(hosts), None
        except TimeoutError:
            return [], f"the hosts list did not come within {HOSTS_TIMEOUT_S:g} s"
        except Exception as exc:  # a broken rack view must not break the status answer
            self._log.warning("rack_hosts_failed", error=repr(exc))
            return [], f"cannot list hosts: {exc}"

    async def _metrics(self, req: Request) -> Response:
        self.state.metrics.containers.set(len(self.state.containers))
        return Response(200, self.state.metrics.render(), PROMETHEUS_CONTENT_TYPE)

    # --- root-only actions -------------------------------------------------------------
    async def _act(self, name: str, action: Action, req: Request) -> Response:
        if req.peer_uid != 0:
            who = "an unknown peer" if req.peer_uid is None else f"uid {req.peer_uid}"
            self._log.warning("api_forbidden", action=name, peer_uid=req.peer_uid)
            return error_response(403, f"{name} is for root only; {who} may not call it")
        self._log.info("api_action", action=name, peer_pid=req.peer_pid)
        try:
            result = await action()
        except VolagentError as exc:
            return error_response(503, f"{name} failed: {exc}")
        return json_response(200, result)
