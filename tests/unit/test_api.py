"""The local socket's routes, called with requests on a real AgentState."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.unit.factories import make_state

from volagent.api import server as api_module
from volagent.api.server import PROMETHEUS_CONTENT_TYPE, StatusApi
from volagent.errors import TemporaryError
from volagent.httpserver import Request, Response
from volagent.state import AgentState, ContainerRecord, VolumeRecord


def _state(healthy: bool = True) -> AgentState:
    if healthy:
        return make_state()
    return make_state(mount_state=None, docker_state=None)


class _Actions:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def reconcile(self) -> dict[str, Any]:
        self.calls.append("reconcile")
        return {"reconciled": True}

    async def remount(self) -> dict[str, Any]:
        self.calls.append("remount")
        raise TemporaryError("mount program failed")


async def _call(api: StatusApi, method: str, path: str, **kw: Any) -> Response:
    query = kw.pop("query", {})
    return await api.handle(Request(method, path, query, {}, b"", **kw))


def _api(state: AgentState, actions: _Actions | None = None, **kw: Any) -> StatusApi:
    actions = actions or _Actions()
    return StatusApi(state, actions.reconcile, actions.remount, **kw)


async def test_health_follows_the_verdict() -> None:
    state = _state()
    api = _api(state)
    ok = await _call(api, "GET", "/v1/health")
    assert (ok.status, json.loads(ok.body)) == (200, {"healthy": True, "status": "ok"})
    state.set_mount_state("stalled", "probe timed out")
    bad = await _call(api, "GET", "/v1/health")
    assert (bad.status, json.loads(bad.body)) == (503, {"healthy": False, "status": "critical"})
    head = await _call(api, "HEAD", "/v1/health")
    assert head.status == 503


async def test_status_is_the_document_and_rack_adds_hosts() -> None:
    state = _state()
    rec = ContainerRecord(
        "c1", "web-1", "r", "a", "web", [VolumeRecord("/volumes/r-a/web/d", "/d", False)]
    )
    state.upsert_container(rec)
    state.set_volume_state(rec.volumes[0], "late")

    async def hosts() -> list[dict[str, Any]]:
        return [{"host": "h1", "instance_id": "i-1", "status": "ok", "last_seen": "x"}]

    api = _api(state, hosts=hosts)
    doc = json.loads((await _call(api, "GET", "/v1/status")).body)
    assert doc["status"] == "degraded"
    assert doc["containers"][0]["volumes"][0]["state"] == "late"
    assert "hosts" not in doc
    doc = json.loads((await _call(api, "GET", "/v1/status", query={"rack": "1"})).body)
    assert doc["hosts"][0]["host"] == "h1"
    assert "hosts_error" not in doc


async def test_rack_view_failures_do_not_break_status() -> None:
    async def broken() -> list[dict[str, Any]]:
        raise OSError("heartbeat dir unreadable")

    doc = json.loads(
        (await _call(_api(_state(), hosts=broken), "GET", "/v1/status", query={"rack": "1"})).body
    )
    assert doc["hosts"] == []
    assert "heartbeat dir unreadable" in doc["hosts_error"]
    doc = json.loads((await _call(_api(_state()), "GET", "/v1/status", query={"rack": "1"})).body)
    assert doc["hosts"] == []
    assert doc["hosts_error"]


async def test_hosts_that_do_not_come_in_time_are_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_module, "HOSTS_TIMEOUT_S", 0.05)
    ended: list[str] = []

    async def slow() -> list[dict[str, Any]]:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise
        return []

    doc = json.loads(
        (await _call(_api(_state(), hosts=slow), "GET", "/v1/status", query={"rack": "1"})).body
    )
    assert doc["hosts"] == []
    assert "did not come within 0.05 s" in doc["hosts_error"]
    assert ended == ["cancelled"]


async def test_metrics_is_prometheus_text() -> None:
    state = _state()
    state.upsert_container(ContainerRecord("c1", "n", "r", "a", "s"))
    resp = await _call(_api(state), "GET", "/metrics")
    assert resp.status == 200
    assert resp.content_type == PROMETHEUS_CONTENT_TYPE
    families = {f.name: f for f in text_string_to_metric_families(resp.body.decode())}
    assert families["volagent_mount_up"].samples[0].value == 1
    assert families["volagent_containers"].samples[0].value == 1


async def test_actions_are_root_only() -> None:
    actions = _Actions()
    api = _api(_state(), actions)
    denied = await _call(api, "POST", "/v1/reconcile", peer_uid=1000, peer_pid=1)
    assert denied.status == 403
    assert "root" in json.loads(denied.body)["error"]
    assert (await _call(api, "POST", "/v1/remount", peer_uid=None)).status == 403
    assert actions.calls == []
    ok = await _call(api, "POST", "/v1/reconcile", peer_uid=0, peer_pid=1)
    assert (ok.status, json.loads(ok.body)) == (200, {"reconciled": True})
    failed = await _call(api, "POST", "/v1/remount", peer_uid=0, peer_pid=1)
    assert failed.status == 503
    assert "mount program failed" in json.loads(failed.body)["error"]
    assert actions.calls == ["reconcile", "remount"]


async def test_unknown_paths_and_methods() -> None:
    api = _api(_state())
    assert (await _call(api, "GET", "/v2/nothing")).status == 404
    wrong = await _call(api, "POST", "/v1/status", peer_uid=0)
    assert wrong.status == 405
    assert wrong.headers["Allow"] == "GET, HEAD"
    assert (await _call(api, "GET", "/v1/reconcile", peer_uid=0)).headers["Allow"] == "POST"


async def test_tcp_serves_metrics_and_health_only() -> None:
    api = _api(_state())
    assert (await _call(api, "GET", "/metrics", transport="tcp")).status == 200
    assert (await _call(api, "GET", "/v1/health", transport="tcp")).status == 200
    assert (await _call(api, "GET", "/v1/status", transport="tcp")).status == 404
    assert (await _call(api, "POST", "/v1/reconcile", transport="tcp", peer_uid=0)).status == 404


async def test_status_for_the_command_line_text_pretty_and_verdict_header() -> None:
    state = _state()
    api = _api(state)
    plain = await _call(api, "GET", "/v1/status")
    assert plain.headers["X-Volagent-Status"] == "ok"
    pretty = await _call(api, "GET", "/v1/status", query={"pretty": "1"})
    assert pretty.body.startswith(b"{\n  ")
    assert json.loads(pretty.body) == json.loads(plain.body)
    state.set_mount_state("stalled", "probe timed out")
    text = await _call(api, "GET", "/v1/status", query={"format": "text", "rack": "1"})
    assert text.content_type.startswith("text/plain")
    assert text.headers["X-Volagent-Status"] == "critical"
    body = text.body.decode()
    assert body.startswith("volagent ") and ": CRITICAL\n" in body
    assert "\x1b[" not in body
    assert "Rack hosts" in body
    coloured = await _call(api, "GET", "/v1/status", query={"format": "text", "color": "1"})
    assert b"\x1b[" in coloured.body
