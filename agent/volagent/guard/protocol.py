"""The Docker authorization plugin protocol, as pure functions: no state, no I/O.

dockerd POSTs JSON to `/AuthZPlugin.AuthZReq` before it serves an API call and to
`/AuthZPlugin.AuthZRes` after; each carries `RequestMethod`, `RequestUri`, `RequestHeaders`
and, for JSON bodies under 1 MiB only, `RequestBody` (base64, as Go encodes []byte). The
answer is `{"Allow": bool, "Msg": "..."}` with status 200; any other status is an error
that makes dockerd fail the API call.

The create body is read the way dockerd reads it, because the guard must see exactly the
binds Docker will make: Go's encoding/json matches object keys to field names
case-insensitively (`hostconfig` is `HostConfig`, and U+017F/U+212A fold to s/k), so lookups
here fold the same way, and a body naming one field twice (`Binds` and `binds`) is refused
as ambiguous instead of guessing which one Docker keeps. The URI is routed the way Docker's
router routes it: absolute-form targets, percent-escapes and an optional `/v1.xx` prefix.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from volagent.guard.privilege import HostPrivileges
from volagent.volumes import namespace
from volagent.volumes.local_volume import LocalVolume, go_fold, local_volume
from volagent.volumes.preparer import ContainerSpec

# Docker hands a body to plugins only below this size and only for application/json.
MAX_FORWARDED_BODY = 1 << 20


class RouteKind(StrEnum):
    """What a Docker API call is to the guard: judged or refused, but UNKNOWN (a POST or
    PUT of no route volagent knows) and OTHER (allowed at once)."""

    CREATE, START, EXEC, ARCHIVE, CHECKPOINT = "create", "start", "exec", "archive", "checkpoint"
    VOLUME, SWARM, PLUGIN, UNKNOWN, OTHER = "volume", "swarm", "plugin", "unknown", "other"


_V = r"^(?:/v(?P<version>[0-9.]+))?"
# What the guard judges or refuses, by method, in the order checked: the first match wins.
# Every pattern is anchored at both ends like the routes of Docker's router (20.10 to 27),
# whose `{name:.*}` may hold slashes.
_JUDGED: dict[str, list[tuple[re.Pattern[str], RouteKind]]] = {
    "POST": [
        (re.compile(_V + r"/containers/create$"), RouteKind.CREATE),
        (re.compile(_V + r"/containers/(?P<ref>.+)/(?P<action>start|restart)$"), RouteKind.START),
        (re.compile(_V + r"/containers/(?P<ref>.+)/exec$"), RouteKind.EXEC),
        (re.compile(_V + r"/containers/(?P<ref>.+)/(?P<action>copy)$"), RouteKind.ARCHIVE),
        (re.compile(_V + r"/containers/(?P<ref>.+)/checkpoints$"), RouteKind.CHECKPOINT),
        (re.compile(_V + r"/volumes/create$"), RouteKind.VOLUME),
        # swarm services make containers (with their own mounts) that never pass the guard
        (
            re.compile(_V + r"/(?:swarm/(?:init|join)|services/create|services/.+/update)$"),
            RouteKind.SWARM,
        ),
        # a managed plugin runs as root with the host mounts, devices and capabilities it
        # declares (create: from a tarball, no privileges asked for at all)
        (re.compile(_V + r"/plugins/(?P<action>pull|create)$"), RouteKind.PLUGIN),
        (
            re.compile(_V + r"/plugins/(?P<ref>.+)/(?P<action>enable|set|upgrade)$"),
            RouteKind.PLUGIN,
        ),
    ],
    "PUT": [
        (re.compile(_V + r"/containers/(?P<ref>.+)/(?P<action>archive)$"), RouteKind.ARCHIVE),
        # swarm cluster volumes (API 1.42+)
        (re.compile(_V + r"/volumes/.+$"), RouteKind.SWARM),
    ],
    "GET": [
        (re.compile(_V + r"/containers/(?P<ref>.+)/(?P<action>archive)$"), RouteKind.ARCHIVE),
        (re.compile(_V + r"/containers/(?P<ref>.+)/checkpoints$"), RouteKind.CHECKPOINT),
    ],
    "DELETE": [
        (re.compile(_V + r"/containers/(?P<ref>.+)/checkpoints/.+$"), RouteKind.CHECKPOINT),
    ],
}
_JUDGED["HEAD"] = _JUDGED["GET"][:1]
# The POST routes of Docker 20.10 to 27 that cannot make a mount or grant privilege: allowed
# at once, whatever their body. Any other POST or PUT is a route volagent does not know (a
# newer dockerd's): allowed only when its body, if any, reached the guard.
_HARMLESS = re.compile(
    _V + r"/(?:auth.*|build|build/cancel|build/prune|commit|session|grpc"
    r"|containers/prune|containers/.+/(?:attach|kill|pause|rename|resize|stop|unpause|update|wait)"
    r"|exec/.+/(?:resize|start)"
    r"|images/(?:create|load|prune)|images/.+/(?:push|tag)"
    r"|networks/(?:create|prune)|networks/.+/(?:connect|disconnect)"
    r"|volumes/prune|swarm/(?:leave|unlock|update)|nodes/.+/update"
    r"|(?:secrets|configs)/create|(?:secrets|configs)/.+/update"
    r"|plugins/.+/(?:disable|push))$"
)
# the judged routes of other methods hold these words (or escapes hide them)
_JUDGED_WORDS = ("archive", "checkpoints", "%")
# More VolumesFrom entries than any real container has; each is a lookup, and a create with
# hundreds of thousands of them (under Docker's body limit) must not hold up the guard.
MAX_VOLUMES_FROM = 64

ALLOW_BODY = b'{"Allow":true}\n'
ACTIVATE_BODY = b'{"Implements":["authz"]}\n'


class PluginRequestError(ValueError):
    """The plugin request itself is malformed (not what dockerd sends)."""


class CreateBodyError(ValueError):
    """The container create body cannot be read the way Docker reads it."""


@dataclass
class AuthzRequest:
    """One AuthZReq/AuthZRes call from dockerd. The bodies stay base64 until asked for:
    most calls are decided without them."""

    method: str
    uri: str
    body_b64: str | None  # None: Docker did not forward a body
    headers: Mapping[str, str]
    user: str = ""
    status: int = 0  # AuthZRes only: the status Docker answered with
    response_b64: str | None = None  # AuthZRes only

    @functools.cached_property
    def body(self) -> bytes | None:
        """The Docker request's body; raises PluginRequestError when it is not base64."""
        return _b64(self.body_b64, "RequestBody")

    @functools.cached_property
    def response_body(self) -> bytes | None:
        return _b64(self.response_b64, "ResponseBody")

    @property
    def body_hidden(self) -> bool:
        """The Docker request carries a body that dockerd kept from the plugin."""
        return self.body_b64 is None and body_announced(self.headers)


@dataclass(frozen=True)
class Route:
    """What a Docker API call is, as far as the guard cares."""

    kind: RouteKind
    container: str = ""  # the id, id prefix or name in the path
    name: str = ""  # create: the ?name= of the request
    action: str = ""  # start | restart | copy | archive | pull | create | enable | set | upgrade
    version: str = ""  # the API version in the path ("" when none: dockerd's own)
    query: str = ""  # judged routes only

    @property
    def legacy(self) -> bool:
        """An API version below 1.24, where dockerd 25 and older apply a start's body."""
        return bool(self.version) and api_below(self.version, (1, 24))


@dataclass
class CreateRequest:
    """The parts of a create body the guard reads, with Go's field names."""

    spec: ContainerSpec
    volumes_from: list[str] = field(default_factory=list)
    volumes: list[LocalVolume] = field(default_factory=list)  # Mounts of type volume
    privileges: HostPrivileges = field(default_factory=HostPrivileges)

    @property
    def touches_anything(self) -> bool:
        """Whether the container binds, inherits or mounts anything at all."""
        return bool(
            self.spec.binds
            or self.volumes_from
            or self.volumes
            or namespace.volume_names_of(self.spec.host_config)
        )


# --- the plugin request -------------------------------------------------------------------
def _b64(value: str | None, what: str) -> bytes | None:
    if value is None:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise PluginRequestError(f"{what} is not valid base64") from None


def parse_authz_request(raw: bytes) -> AuthzRequest:
    """The JSON dockerd posts to AuthZReq/AuthZRes; raises PluginRequestError."""
    if not raw.strip():
        raise PluginRequestError("empty plugin request: expected the JSON of an authz request")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise PluginRequestError(f"plugin request is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PluginRequestError("plugin request must be a JSON object")
    method, uri = doc.get("RequestMethod"), doc.get("RequestUri")
    if not isinstance(method, str) or not method or not isinstance(uri, str) or not uri:
        raise PluginRequestError("plugin request needs RequestMethod and RequestUri strings")
    headers = doc.get("RequestHeaders")
    if headers is None:
        headers = {}
    if not isinstance(headers, dict):
        raise PluginRequestError("RequestHeaders must be an object")
    status = doc.get("ResponseStatusCode") or 0
    if not isinstance(status, int):
        raise PluginRequestError("ResponseStatusCode must be a number")
    bodies = [doc.get("RequestBody"), doc.get("ResponseBody")]
    for what, value in zip(("RequestBody", "ResponseBody"), bodies, strict=True):
        if value is not None and not isinstance(value, str):
            raise PluginRequestError(f"{what} must be a base64 string")
    return AuthzRequest(
        method=method,
        uri=uri,
        body_b64=bodies[0],
        headers={str(k): str(v) for k, v in headers.items()},
        user=str(doc.get("User") or ""),
        status=status,
        response_b64=bodies[1],
    )


def header(headers: Mapping[str, str], name: str) -> str:
    """A header of the Docker request, by case-insensitive name ("" when absent)."""
    lowered = name.lower()
    return next((value for key, value in headers.items() if key.lower() == lowered), "")


# --- routing ------------------------------------------------------------------------------
def _path_and_query(uri: str) -> tuple[str, str]:
    if uri.startswith("/"):
        # origin-form: Go takes the path up to '?', even when it starts with '//'
        path, _, query = uri.partition("?")
        return path, query
    parts = urlsplit(uri)  # absolute-form: http://host/v1.41/containers/create
    return parts.path or "/", parts.query


def body_announced(headers: Mapping[str, str]) -> bool:
    """Whether the headers dockerd passes on announce a request body. Go's HTTP server
    removes both Transfer-Encoding and Content-Length from a chunked request's headers, so a
    request without a Content-Length may carry a chunked body (one dockerd forwards only when
    it is chunked, JSON and under 1 MiB, and only since the CVE-2024-41110 fix)."""
    if header(headers, "Transfer-Encoding"):
        return True
    length = header(headers, "Content-Length").strip()
    return length != "0"


def api_below(version: str, minimum: tuple[int, int]) -> bool:
    """Docker's version comparison (api/types/versions): dot-separated integers, a part that
    is not a number counting as 0."""
    parts = [int(p) if p.isdigit() else 0 for p in version.split(".")]
    want = list(minimum)
    width = max(len(parts), len(want))
    parts += [0] * (width - len(parts))
    want += [0] * (width - len(want))
    return parts < want


_OTHER = Route(RouteKind.OTHER)


def route(method: str, uri: str) -> Route:
    """Classifies a Docker API call. The path is unescaped and cleaned before matching, so
    an encoded path cannot slip past; a GET that names none of the judged routes' words is
    decided on sight (nearly every Docker call)."""
    method = method.upper()
    if (
        method not in ("POST", "PUT")
        and uri.startswith("/")
        and (method not in _JUDGED or not any(w in uri.partition("?")[0] for w in _JUDGED_WORDS))
    ):
        return _OTHER
    raw_path, query = _path_and_query(uri)
    path = namespace.go_clean(unquote(raw_path))
    for pattern, kind in _JUDGED.get(method, ()):
        m = pattern.match(path)
        if m is None:
            continue
        found = m.groupdict()
        return Route(
            kind,
            container=found.get("ref") or "",
            # Docker takes the first `name` (Go's Form.Get), blank or not
            name=query_value(query, "name") if kind == RouteKind.CREATE else "",
            action=found.get("action") or "",
            version=found.get("version") or "",
            query=query,
        )
    if method == "PUT" or (method == "POST" and not _HARMLESS.match(path)):
        return Route(RouteKind.UNKNOWN)
    return _OTHER


def query_value(query: str, key: str) -> str:
    """The first value of `key` in a query string, as Go's Form.Get reads it."""
    return (parse_qs(query, keep_blank_values=True).get(key) or [""])[0]


# --- Go-style reading of the create body ----------------------------------------------------
class _GoObject(dict[str, Any]):
    """A JSON object that remembers every key under its Go-folded form, in order."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)  # a repeated exact key: the last wins, as in Go
        self.folded: dict[str, list[Any]] = {}
        for key, value in pairs:
            self.folded.setdefault(go_fold(key), []).append(value)


# what a field of each JSON type must be, as the error says it
_KINDS: dict[type, str] = {str: "a string", bool: "true or false", list: "a list"}


def _field(obj: Any, name: str, where: str, kind: type = object) -> Any:
    """obj's value for the Go field `name`; None when absent; refuses repeats and, saying
    what it must be, a value that is not a `kind` (checked here, not in a wrapper: every
    create has some twenty fields read, and each call costs)."""
    if not isinstance(obj, _GoObject):
        return None
    values = obj.folded.get(go_fold(name))
    if not values:
        return None
    if len(values) > 1:
        raise CreateBodyError(
            f"{where}{name} is given {len(values)} times (keys differing only in case); "
            "send it once"
        )
    value = values[0]
    if value is not None and not isinstance(value, kind):  # null reads as absent
        raise CreateBodyError(f"{where}{name} must be {_KINDS[kind]}")
    return value


def _str_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise CreateBodyError(f"{what} must be an object of strings")
    return dict(value)


def _str_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CreateBodyError(f"{what} must be a list of strings")
    return list(value)


def _mounts(value: Any, prefix: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise CreateBodyError(f"{prefix}Mounts must be a list")
    out = []
    for i, item in enumerate(value):
        where = f"{prefix}Mounts[{i}]."
        if not isinstance(item, _GoObject):
            raise CreateBodyError(f"{prefix}Mounts[{i}] must be an object")
        mount: dict[str, Any] = {
            n: _str_field(item, n, where) for n in ("Type", "Source", "Target")
        }
        mount["ReadOnly"] = bool(_field(item, "ReadOnly", where))
        options = _field(item, "VolumeOptions", where)
        driver = _field(options, "DriverConfig", f"{where}VolumeOptions.")
        mount["Driver"] = _field(driver, "Name", f"{where}VolumeOptions.DriverConfig.") or ""
        mount["DriverOpts"] = _str_map(
            _field(driver, "Options", f"{where}VolumeOptions.DriverConfig."),
            f"{where}VolumeOptions.DriverConfig.Options",
        )
        out.append(mount)
    return out


def parse_volume_body(body: bytes) -> LocalVolume | None:
    """`POST /volumes/create`: the local volume it makes; raises CreateBodyError."""
    doc = _go_json(body, "volume create")
    name, driver = _str_field(doc, "Name", ""), _str_field(doc, "Driver", "")
    return local_volume(name, driver, _str_map(_field(doc, "DriverOpts", ""), "DriverOpts"))


def _go_json(body: bytes, what: str) -> _GoObject:
    try:
        doc = json.loads(body, object_pairs_hook=_GoObject)
    except (ValueError, RecursionError) as exc:
        raise CreateBodyError(f"the {what} request body is not JSON: {exc}") from None
    if not isinstance(doc, _GoObject):
        raise CreateBodyError(f"the {what} request body must be a JSON object")
    return doc


def parse_create_body(body: bytes, name: str = "") -> CreateRequest:
    """The create body as Docker decodes it: Labels, Env, User, HostConfig.Binds, the bind
    Mounts and VolumesFrom, with Go's field matching; raises CreateBodyError."""
    doc = _go_json(body, "create")
    labels = _str_map(_field(doc, "Labels", ""), "Labels")
    env = _str_list(_field(doc, "Env", ""), "Env")
    user = _str_field(doc, "User", "")
    hc = _field(doc, "HostConfig", "")
    if hc is not None and not isinstance(hc, _GoObject):
        raise CreateBodyError("HostConfig must be an object")
    where = "HostConfig."
    if hc is None:
        # Without a HostConfig object, dockerd (the deprecated embedded HostConfig of its
        # create wrapper) takes Binds, Mounts and VolumesFrom from the top level.
        hc, where = doc, ""
    binds = _str_list(_field(hc, "Binds", where), f"{where}Binds")
    mounts = _mounts(_field(hc, "Mounts", where), where)
    volumes_from = _str_list(_field(hc, "VolumesFrom", where), f"{where}VolumesFrom")
    if len(volumes_from) > MAX_VOLUMES_FROM:
        raise CreateBodyError(
            f"{where}VolumesFrom has {len(volumes_from)} entries; volagent judges at most "
            f"{MAX_VOLUMES_FROM}"
        )
    volumes = [
        vol
        for m in mounts
        if m["Type"] == "volume"
        and (vol := local_volume(m["Source"], m["Driver"], m["DriverOpts"])) is not None
    ]
    privileges = _host_privileges(hc, where)
    spec = ContainerSpec(
        id="",
        name=name,
        labels=labels,
        env=env,
        user=user,
        # the parts of the HostConfig volagent reads, under Docker's own keys
        host_config={"Binds": binds, "Mounts": mounts, **privileges.to_host_config()},
    )
    return CreateRequest(
        spec=spec, volumes_from=volumes_from, volumes=volumes, privileges=privileges
    )


def _str_field(obj: Any, name: str, where: str) -> str:
    return _field(obj, name, where, str) or ""


def _paths(obj: Any, name: str, where: str) -> tuple[str, ...] | None:
    value = _field(obj, name, where)
    return None if value is None else tuple(_str_list(value, f"{where}{name}"))


def _host_privileges(hc: Any, where: str) -> HostPrivileges:
    """The HostConfig settings that can grant privilege, read as Docker decodes them."""
    privileged = bool(_field(hc, "Privileged", where, bool))
    cap_add = _field(hc, "CapAdd", where)
    if isinstance(cap_add, str):  # a StrSlice: one string or a list of them
        cap_add = [cap_add]
    sysctls = _str_map(_field(hc, "Sysctls", where), f"{where}Sysctls")
    return HostPrivileges(
        privileged=privileged,
        modes=tuple(
            (key, _str_field(hc, key, where))
            for key in ("PidMode", "IpcMode", "UsernsMode", "CgroupnsMode")
        ),
        network_mode=_str_field(hc, "NetworkMode", where),
        uts_mode=_str_field(hc, "UTSMode", where),
        cap_add=tuple(_str_list(cap_add, f"{where}CapAdd")),
        devices=len(_field(hc, "Devices", where, list) or ()),
        device_requests=len(_field(hc, "DeviceRequests", where, list) or ()),
        device_cgroup_rules=len(_field(hc, "DeviceCgroupRules", where, list) or ()),
        security_opt=tuple(_str_list(_field(hc, "SecurityOpt", where), f"{where}SecurityOpt")),
        sysctls=tuple(sysctls),
        masked_paths=_paths(hc, "MaskedPaths", where),
        readonly_paths=_paths(hc, "ReadonlyPaths", where),
    )


def parse_exec_privileged(body: bytes) -> bool:
    """`POST /containers/{id}/exec`: whether the exec asks for `Privileged`."""
    return bool(_field(_go_json(body, "exec create"), "Privileged", "", bool))


def parse_checkpoint_dir(body: bytes) -> str:
    """`POST /containers/{id}/checkpoints`: the host directory the checkpoint goes to."""
    return _str_field(_go_json(body, "checkpoint create"), "CheckpointDir", "")


def created_id(response_body: bytes | None) -> str:
    """The container id from Docker's create answer, "" when there is none."""
    if not response_body:
        return ""
    try:
        doc = json.loads(response_body)
    except ValueError:
        return ""
    cid = doc.get("Id") if isinstance(doc, dict) else None
    return cid if isinstance(cid, str) else ""


# --- answers --------------------------------------------------------------------------------
def decision_body(allow: bool, msg: str = "") -> bytes:
    doc: dict[str, Any] = {"Allow": allow}
    if msg:
        doc["Msg"] = msg
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def error_body(message: str) -> bytes:
    return json.dumps({"Allow": False, "Err": message}, separators=(",", ":")).encode() + b"\n"
