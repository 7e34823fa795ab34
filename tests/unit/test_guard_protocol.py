"""The authorization plugin protocol: plugin requests, routing as Docker's router routes, and
the create body read with Go's key matching, so no spelling of a bind slips past."""

from __future__ import annotations

import base64
import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from volagent.guard.protocol import (
    CreateBodyError,
    PluginRequestError,
    created_id,
    decision_body,
    error_body,
    header,
    parse_authz_request,
    parse_create_body,
    route,
)
from volagent.volumes import namespace
from volagent.volumes.local_volume import go_fold


def plugin_request(method: str, uri: str, body: bytes | None = None, **extra: object) -> bytes:
    doc: dict[str, object] = {"RequestMethod": method, "RequestUri": uri}
    if body is not None:
        doc["RequestBody"] = base64.b64encode(body).decode()
    doc.update(extra)
    return json.dumps(doc).encode()


# --- plugin requests ------------------------------------------------------------------------
def test_parses_what_dockerd_sends() -> None:
    raw = plugin_request(
        "POST",
        "/v1.41/containers/create?name=web",
        b'{"Image":"x"}',
        User="",
        RequestHeaders={"Content-Type": "application/json", "Content-Length": "13"},
    )
    req = parse_authz_request(raw)
    assert (req.method, req.uri, req.body) == (
        "POST",
        "/v1.41/containers/create?name=web",
        b'{"Image":"x"}',
    )
    assert header(req.headers, "content-type") == "application/json"
    assert header(req.headers, "X-Missing") == ""


def test_response_fields_are_read() -> None:
    raw = plugin_request(
        "POST",
        "/containers/create",
        b"{}",
        ResponseStatusCode=201,
        ResponseBody=base64.b64encode(b'{"Id":"abc","Warnings":[]}').decode(),
    )
    req = parse_authz_request(raw)
    assert req.status == 201
    assert created_id(req.response_body) == "abc"


def test_absent_body_is_none() -> None:
    assert parse_authz_request(plugin_request("GET", "/info")).body is None


def test_bodies_are_decoded_only_when_asked_for() -> None:
    req = parse_authz_request(b'{"RequestMethod":"POST","RequestUri":"/x","RequestBody":"%%"}')
    with pytest.raises(PluginRequestError, match="base64"):
        _ = req.body


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"", "empty"),
        (b"   ", "empty"),
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"RequestMethod": "GET"}', "RequestUri"),
        (b'{"RequestMethod": 1, "RequestUri": "/x"}', "RequestMethod"),
        (b'{"RequestMethod": "GET", "RequestUri": "/x", "RequestBody": 5}', "base64"),
        (b'{"RequestMethod": "GET", "RequestUri": "/x", "RequestHeaders": []}', "object"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON"),
    ],
)
def test_malformed_plugin_requests_name_the_problem(raw: bytes, fragment: str) -> None:
    with pytest.raises(PluginRequestError, match=fragment):
        parse_authz_request(raw)


def test_created_id_tolerates_anything() -> None:
    assert created_id(None) == ""
    assert created_id(b"garbage") == ""
    assert created_id(b'{"message":"no such image"}') == ""
    assert created_id(b'["Id"]') == ""


def test_answers() -> None:
    assert json.loads(decision_body(True)) == {"Allow": True}
    assert json.loads(decision_body(False, "why")) == {"Allow": False, "Msg": "why"}
    assert json.loads(error_body("bad")) == {"Allow": False, "Err": "bad"}


# --- routing --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "uri", "kind", "detail"),
    [
        ("POST", "/containers/create", "create", ""),
        ("POST", "/v1.41/containers/create?name=web-1", "create", "web-1"),
        ("POST", "/v1.24/containers/create?name=a&name=b", "create", "a"),  # Docker takes the first
        ("POST", "/v1.41/containers/%63reate", "create", ""),
        ("POST", "http://docker/v1.41/containers/create?name=x", "create", "x"),
        ("POST", "/v1.41/containers/./create", "create", ""),
        ("POST", "/v1.41/containers/abc/start", "start", "abc"),
        ("POST", "/containers/web-1/restart?t=5", "start", "web-1"),
        ("POST", "/v1.41/containers/ab%63/start", "start", "abc"),
        ("post", "/containers/create", "create", ""),
        ("GET", "/v1.41/containers/create", "other", ""),
        ("GET", "/v1.41/containers/json", "other", ""),
        ("POST", "/v1.41/containers/abc/stop", "other", ""),
        ("POST", "/v1.41/containers/create/extra", "unknown", ""),
        ("POST", "/v1.41/images/create", "other", ""),
        ("DELETE", "/v1.41/containers/abc", "other", ""),
    ],
)
def test_routes_like_dockers_router(method: str, uri: str, kind: str, detail: str) -> None:
    r = route(method, uri)
    assert r.kind == kind
    if kind == "create":
        assert r.name == detail
    elif kind == "start":
        assert r.container == detail


# --- the create body ------------------------------------------------------------------------
def binds(body: dict[str, object] | str) -> list[str]:
    raw = body if isinstance(body, str) else json.dumps(body)
    spec = parse_create_body(raw.encode()).spec
    return [b.host for b in namespace.binds_of(spec.host_config)]


def test_reads_binds_mounts_labels_env_user() -> None:
    body = {
        "Image": "x",
        "User": "33:33",
        "Env": ["APP=a"],
        "Labels": {"convox.app": "a"},
        "HostConfig": {
            "Binds": ["/volumes/r-a/web/data:/data:ro", "named:/n"],
            "Mounts": [
                {"Type": "bind", "Source": "/volumes/r-a/web/m", "Target": "/m", "ReadOnly": True},
                {"Type": "volume", "Source": "vol", "Target": "/v"},
            ],
            "VolumesFrom": ["other:ro"],
        },
    }
    create = parse_create_body(json.dumps(body).encode(), "web-1")
    spec = create.spec
    assert (spec.name, spec.user, list(spec.env), dict(spec.labels)) == (
        "web-1",
        "33:33",
        ["APP=a"],
        {"convox.app": "a"},
    )
    found = namespace.binds_of(spec.host_config)
    assert [(b.host, b.container, b.read_only) for b in found] == [
        ("/volumes/r-a/web/data", "/data", True),
        ("/volumes/r-a/web/m", "/m", True),
    ]
    assert create.volumes_from == ["other:ro"]


def test_keys_match_case_insensitively_as_in_go() -> None:
    assert binds({"hostconfig": {"binds": ["/v/x:/d"]}}) == ["/v/x"]
    assert binds(
        {"HOSTCONFIG": {"mounts": [{"type": "bind", "source": "/v/y", "target": "/d"}]}}
    ) == ["/v/y"]
    # Go folds the long s and the Kelvin sign to s and k
    assert binds('{"HostConfig": {"Bind\\u017f": ["/v/z:/d"]}}') == ["/v/z"]
    spec = parse_create_body(b'{"Label\\u017f": {"a": "b"}}').spec
    assert dict(spec.labels) == {"a": "b"}
    assert go_fold("\u212aey") == "key"


def test_top_level_host_config_fields_count_without_a_host_config() -> None:
    # dockerd's create wrapper embeds a deprecated HostConfig at the top level
    assert binds({"Image": "x", "Binds": ["/v/top:/d"]}) == ["/v/top"]
    assert binds({"Mounts": [{"Type": "bind", "Source": "/v/m", "Target": "/d"}]}) == ["/v/m"]
    assert binds({"HostConfig": None, "Binds": ["/v/top:/d"]}) == ["/v/top"]
    # with a HostConfig object, dockerd ignores the top-level ones
    assert binds({"Binds": ["/v/top:/d"], "HostConfig": {"Binds": ["/v/in:/d"]}}) == ["/v/in"]


@pytest.mark.parametrize(
    "raw",
    [
        '{"HostConfig": {"Binds": ["/a:/d"]}, "hostConfig": {"Mounts": []}}',
        '{"HostConfig": {"Binds": ["/a:/d"], "binds": []}}',
        '{"Labels": {"convox.app": "a"}, "labels": {"convox.app": "b"}}',
        '{"Binds": ["/a:/d"], "BINDS": []}',
        '{"HostConfig": {"Mounts": [{"Source": "/a", "source": "/b", "Type": "bind"}]}}',
    ],
)
def test_a_field_given_twice_is_refused(raw: str) -> None:
    with pytest.raises(CreateBodyError, match="given 2 times"):
        parse_create_body(raw.encode())


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("nope", "not JSON"),
        ("[]", "JSON object"),
        ('{"Labels": ["a"]}', "Labels"),
        ('{"Labels": {"a": 1}}', "Labels"),
        ('{"Env": "A=1"}', "Env"),
        ('{"User": 5}', "User"),
        ('{"HostConfig": []}', "HostConfig"),
        ('{"HostConfig": {"Binds": "/a:/b"}}', "Binds"),
        ('{"HostConfig": {"Mounts": {}}}', "Mounts"),
        ('{"HostConfig": {"Mounts": ["x"]}}', "Mounts\\[0\\]"),
        ('{"HostConfig": {"Mounts": [{"Source": 1}]}}', "Source"),
    ],
)
def test_bodies_docker_would_refuse_are_refused(raw: str, fragment: str) -> None:
    with pytest.raises(CreateBodyError, match=fragment):
        parse_create_body(raw.encode())


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "HostConfig",
                    "hostconfig",
                    "Binds",
                    "Mounts",
                    "Type",
                    "Source",
                    "Labels",
                    "Env",
                    "User",
                    "VolumesFrom",
                    "x",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@given(_json)
def test_any_json_is_read_or_refused_never_crashes(doc: object) -> None:
    # an exception other than CreateBodyError would be a guard bug, and bugs fail open
    with contextlib.suppress(CreateBodyError):
        parse_create_body(json.dumps(doc).encode())
