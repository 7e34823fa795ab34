"""Requests to the start guard as dockerd sends them (the AuthZ plugin protocol), and its
answers, for the unit tests that ask a Guard in-process."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from volagent.guard.plugin import Guard
from volagent.httpserver import Request, Response

LABELS = {"convox.app": "a", "convox.service": "web", "volagent.owner": "33:33"}


def plugin_body(method: str, uri: str, body: Any = None, **extra: Any) -> bytes:
    doc: dict[str, Any] = {
        "User": "",
        "RequestMethod": method,
        "RequestUri": uri,
        "RequestHeaders": {"Content-Type": "application/json"},
    }
    if body is not None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        doc["RequestBody"] = base64.b64encode(raw).decode()
    doc.update(extra)
    return json.dumps(doc).encode()


def ask(g: Guard, raw: bytes, path: str = "/AuthZPlugin.AuthZReq", uid: int = 0) -> Response:
    req = Request("POST", path, {}, {}, raw, peer_uid=uid)
    return asyncio.run(g.handle(req))


def decision(resp: Response) -> dict[str, Any]:
    assert resp.status == 200, resp.body
    doc = json.loads(resp.body)
    assert isinstance(doc, dict)
    return doc


def create_body(*binds: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "Image": "busybox",
        "Labels": LABELS if labels is None else labels,
        "HostConfig": {"Binds": list(binds)},
    }


def create(g: Guard, *binds: str, name: str = "web-1", **kw: Any) -> dict[str, Any]:
    uri = f"/v1.41/containers/create?name={name}"
    return decision(ask(g, plugin_body("POST", uri, create_body(*binds, **kw))))
