"""Configuration: TOML loaded once into frozen dataclasses and validated.

Every key has a default, so an empty file is valid. An unknown key or a bad value is a
`ConfigError` naming the dotted key. Each field declares its default, its `doc` (the reference
text the README's configuration table is checked against), when an edit applies, and its
value's check; the loader dispatches on the fields' resolved types.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import tomli_w

from volagent.errors import ConfigError
from volagent.values import NAME_RE, Owner, Size, parse_mode, parse_owner
from volagent.vocabulary import MountType, OnViolation, OverQuota, WhenUnhealthy

DEFAULT_CONFIG_PATH = "/etc/volagent/volagent.toml"
DEFAULT_NFS_OPTIONS = "nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport"
LOG_LEVELS = ("debug", "info", "warning", "error")


# When an edited key takes effect in a running daemon (the file watch, `systemctl reload`):
LIVE = "live"  # at once
REMOUNT = "remount"  # the mount side mounts the shared filesystem again with it
RESTART = "restart"  # only once volagent is restarted
RESTART_TO_ENABLE = "restart to turn on"  # turning it off applies at once

# A value's problem (the ConfigError's text after the key), or None when it is fine.
Check = Callable[[Any], str | None]


def _doc(text: str, default: Any, applies: str = LIVE, check: Check | None = None) -> Any:
    """A key: its reference text, its default, when an edit applies and its value's check."""
    return field(default=default, metadata={"doc": text, "applies": applies, "check": check})


def _between(lo: float, hi: float | None = None, unit: str = "") -> Check:
    # written so that NaN, which every comparison calls false, fails (validate refuses NaN
    # and infinities before any check)
    if hi is None:
        return lambda v: None if v >= lo else f"must be at least {lo}"
    return lambda v: None if lo <= v <= hi else f"{v} is outside {lo}..{hi}{unit}"


def _rule(ok: Callable[[str], bool], problem: str) -> Check:
    """A check of a string; `{v}` in `problem` is the value's repr."""
    return lambda v: None if ok(v) else problem.replace("{v}", repr(v))


def _like(pattern: str, what: str) -> Check:
    """Empty (unset), or all of it matching `pattern`."""
    return _rule(lambda v: not v or bool(re.fullmatch(pattern, v, re.DOTALL)), "{v} is not " + what)


def _words(vocabulary: type[StrEnum]) -> str:
    """A closed vocabulary as the reference and the errors spell it: `deny | warn`."""
    return " | ".join(vocabulary)


def _one_of(*choices: str) -> Check:
    return _rule(lambda v: v in choices, "{v} is not one of " + " | ".join(choices))


def _parses(parse: Callable[[str], object]) -> Check:
    def check(v: str) -> str | None:
        try:
            parse(v)
        except ValueError as exc:
            return str(exc)
        return None

    return check


def _absolute(v: str) -> str | None:
    if not v.startswith("/"):
        return f"{v!r} is not an absolute path"
    return "contains a NUL byte" if "\x00" in v else None


def _listen_address(v: str) -> str | None:
    """Empty (off), or host:port with a port bind() takes: 0..65535 (0: any free port, as
    bind() gives it, which 0.3.2 accepted too)."""
    if not v:
        return None
    found = re.fullmatch(r"([^\s:]*):([0-9]{1,5})", v)
    if found is None:
        return f"{v!r} is not host:port"
    port = int(found[2])
    return None if port <= 65535 else f"{v!r}: port {port} is outside 0..65535"


def _mount_point(v: str) -> str | None:
    if problem := _absolute(v):
        return problem
    if ".." in v.split("/"):
        return f"{v!r} has a .. in it: name the directory itself"
    return "must not be /" if os.path.normpath(v) == "/" else None


_NOT_EMPTY = _rule(bool, "must not be empty")
_URL = _like(r"https?://[^/\s]+.*", "an http(s) URL")
_RACK = _rule(lambda v: not v or bool(NAME_RE.fullmatch(v)), "{v} must match " + NAME_RE.pattern)
_SECONDS = _between(0.05, 3600, " seconds")


@dataclass(frozen=True)
class MountConfig:
    type: MountType = _doc(_words(MountType), MountType.AUTO, REMOUNT)
    file_system_id: str = _doc(
        "fs-..., or discover by tag", "", REMOUNT, _like(r"fs-[0-9a-f]{1,40}", "like fs-0123abcd")
    )
    discover_tag: str = _doc(
        '"Key=Value" tag of the filesystem, e.g. "convox:rack=myrack"',
        "",
        REMOUNT,
        _like(r"[^=]*=.*", "Key=Value"),
    )
    region: str = _doc("AWS region; default: from instance metadata", "", REMOUNT)
    source: str = _doc(
        'for type nfs: "server:/export"', "", REMOUNT, _like(r"[^:]*:.*", "server:/export")
    )
    local_path: str = _doc(
        "for type local: the directory bind-mounted on the mount point",
        "/var/lib/volagent/local",
        REMOUNT,
        _absolute,
    )
    options: str = _doc(
        "mount options for efs, nfs4 and nfs",
        DEFAULT_NFS_OPTIONS,
        REMOUNT,
        _rule(lambda v: not re.search(r"[ \t\n]", v), "must not contain white space"),
    )
    mount_program: str = _doc(
        "called as PROG -t TYPE -o OPTS SOURCE MOUNT_POINT", "mount", REMOUNT, _NOT_EMPTY
    )
    probe_interval_s: float = _doc(
        "seconds between health probes of the mount", 5.0, LIVE, _SECONDS
    )
    probe_timeout_s: float = _doc(
        "seconds a probe may take before the mount is stalled", 3.0, LIVE, _SECONDS
    )
    stalled_remount_after: int = _doc(
        "consecutive stalled probes before a forced remount", 6, LIVE, _between(1)
    )
    allow_local_fallback: bool = _doc(
        "where EFS can't be had, use local_path and report local", False, REMOUNT
    )


@dataclass(frozen=True)
class AwsConfig:
    imds_endpoint: str = _doc(
        "instance metadata endpoint; AWS_EC2_METADATA_SERVICE_ENDPOINT overrides",
        "http://169.254.169.254",
        REMOUNT,
        _URL,
    )
    endpoint_url: str = _doc(
        "AWS API endpoint; boto3 also honours AWS_ENDPOINT_URL", "", REMOUNT, _URL
    )


@dataclass(frozen=True)
class DockerConfig:
    url: str = _doc(
        "Docker engine API address",
        "unix:///var/run/docker.sock",
        RESTART,
        _rule(
            lambda v: bool(re.match(r"(unix|tcp|http|https)://", v)),
            "{v} is not unix://, tcp:// or http(s)://",
        ),
    )
    rack_label: str = _doc("label naming the rack", "convox.rack", LIVE, _NOT_EMPTY)
    app_label: str = _doc("label naming the app", "convox.app", LIVE, _NOT_EMPTY)
    service_label: str = _doc("label naming the service", "convox.service", LIVE, _NOT_EMPTY)


@dataclass(frozen=True)
class DirectoriesConfig:
    owner: str = _doc("UID:GID of created leaf directories", "0:0", LIVE, _parses(parse_owner))
    mode: str = _doc("octal mode of created leaf directories", "0755", LIVE, _parses(parse_mode))
    timeout_s: float = _doc(
        "seconds one directory preparation may take", 5.0, LIVE, _between(0.1, 600, " seconds")
    )

    # parsed once (validated at load), not for every container
    @functools.cached_property
    def owner_ids(self) -> Owner:
        return parse_owner(self.owner)

    @functools.cached_property
    def mode_bits(self) -> int:
        return parse_mode(self.mode)


@dataclass(frozen=True)
class ApiConfig:
    socket: str = _doc("the local status socket", "/run/volagent/volagent.sock", RESTART, _absolute)
    metrics_address: str = _doc(
        'also serve /metrics on "host:port" (off when empty)',
        "",
        RESTART,
        _listen_address,
    )
    socket_group: str = _doc(
        "group whose members may use the status socket (0660); empty: root only (0600)",
        "volagent",
        RESTART,
        _like(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", "a group name (or empty)"),
    )


@dataclass(frozen=True)
class GuardConfig:
    enabled: bool = _doc("serve the Docker authorization plugin", False, RESTART_TO_ENABLE)
    plugin_socket: str = _doc(
        "the plugin's socket", "/run/docker/plugins/volagent.sock", RESTART, _absolute
    )
    when_unhealthy: WhenUnhealthy = _doc(
        f"{_words(WhenUnhealthy)} container create/start while the mount is unhealthy",
        WhenUnhealthy.DENY,
        LIVE,
    )
    violations: OnViolation = _doc(
        f"{_words(OnViolation)} on namespace violations", OnViolation.DENY, LIVE
    )
    # app names: checked by their type, when loaded
    privileged_apps: tuple[str, ...] = _doc(
        "apps whose containers may use privilege, host namespaces, added capabilities, "
        'devices and unconfined security options, e.g. ["ci"]',
        (),
    )


# the NFSv4 lease of Linux's nfsd and of EFS: a dead client's locks are released after it
NFS_LEASE_S = 90.0
# the longest `[health] forget_after_s`: a host silent for 30 days is gone
MAX_FORGET_AFTER_S = 30 * 86400.0


@dataclass(frozen=True)
class HealthConfig:
    heartbeat_interval_s: float = _doc(
        "seconds between heartbeats of this host", 30.0, LIVE, _between(0.1)
    )
    # bounded by heartbeat_interval_s and each other as well: see validate
    stale_after_s: float = _doc(
        "a host whose heartbeat is older is stale",
        90.0,
        LIVE,
        _between(0.1, 86400, " seconds"),
    )
    forget_after_s: float = _doc(
        "a host silent this long no longer holds its binds in the rack's registry",
        900.0,
        LIVE,
        _between(NFS_LEASE_S, MAX_FORGET_AFTER_S, " seconds"),
    )
    unhealthy_after_s: float = _doc(
        "critical this long: report unhealthy to the Auto Scaling group (0: never)",
        0.0,
        LIVE,
        _between(0),
    )


@dataclass(frozen=True)
class UsageConfig:
    ops_per_second: float = _doc(
        "filesystem operations per second the usage walk may spend",
        100.0,
        LIVE,
        _between(1, 100_000),
    )
    interval_s: float = _doc(
        "seconds from the start of one full usage pass to the next",
        3600.0,
        LIVE,
        _between(1, 30 * 86400, " seconds"),
    )


@dataclass(frozen=True)
class QuotasConfig:
    # field() itself: sizes are objects, and a default of one must not be shared by call;
    # sizes are checked by their type, when loaded
    default: Size | None = field(
        default=None, metadata={"doc": 'limit of an app not in apps, e.g. "100GiB" ("": none)'}
    )
    over_quota: OverQuota = _doc(
        f"{_words(OverQuota)} new creates of an app over its limit", OverQuota.WARN, LIVE
    )
    apps: dict[str, Size] = field(
        default_factory=dict, metadata={"doc": 'limit per app, e.g. { shop = "50GiB" }'}
    )

    def limit_of(self, app: str) -> Size | None:
        """The limit of `app`: its own, else the default, else None."""
        return self.apps.get(app, self.default)


@dataclass(frozen=True)
class Config:
    rack: str = _doc("rack name for containers without a rack label or env", "", LIVE, _RACK)
    host_id: str = _doc("names this host in the rack view; default: instance id, else hostname", "")
    mount_point: str = _doc(
        "where the shared filesystem is mounted", "/volumes", RESTART, _mount_point
    )
    state_dir: str = _doc("local state of the agent", "/var/lib/volagent", RESTART, _absolute)
    log_level: str = _doc("debug | info | warning | error", "info", LIVE, _one_of(*LOG_LEVELS))
    mount: MountConfig = field(default_factory=MountConfig)
    aws: AwsConfig = field(default_factory=AwsConfig)
    docker: DockerConfig = field(default_factory=DockerConfig)
    directories: DirectoriesConfig = field(default_factory=DirectoriesConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    usage: UsageConfig = field(default_factory=UsageConfig)
    quotas: QuotasConfig = field(default_factory=QuotasConfig)

    def __post_init__(self) -> None:
        # one spelling of the mount point: paths under it are cleaned as Docker cleans a
        # bind's source, then cut and compared against it (`/mnt/efs/.` or `//mnt/efs` would
        # otherwise name other paths in the registry than hosts spelling it `/mnt/efs`)
        if _mount_point(self.mount_point) is None:
            clean = "/" + os.path.normpath(self.mount_point).lstrip("/")
            object.__setattr__(self, "mount_point", clean)


SECTIONS: dict[str, type[Any]] = {
    name: kind
    for name, kind in typing.get_type_hints(Config).items()
    if isinstance(kind, type) and dataclasses.is_dataclass(kind)
}


def keys_applying(applies: str) -> list[str]:
    """The dotted keys that take effect the way `applies` says, in declaration order."""
    return [k for k, f, _ in fields_of(Config()) if f.metadata.get("applies", LIVE) == applies]


def fields_of(cfg: Config) -> list[tuple[str, dataclasses.Field[Any], Any]]:
    """(dotted key, field, value) of every key that is not a section, in declaration order."""
    objs = [("", cfg)] + [(f"{name}.", getattr(cfg, name)) for name in SECTIONS]
    return [
        (prefix + f.name, f, getattr(obj, f.name))
        for prefix, obj in objs
        for f in dataclasses.fields(obj)
        if f.name not in SECTIONS
    ]


def value_of(cfg: Config, dotted: str) -> Any:
    return functools.reduce(getattr, dotted.split("."), cfg)


def changed_keys(old: Config, new: Config, applies: str) -> list[str]:
    """The keys of that kind whose value differs between two configs."""
    return [k for k in keys_applying(applies) if value_of(old, k) != value_of(new, k)]


def _coerce(key: str, value: Any, kind: Any) -> Any:
    # TOML has distinct types; bool is a subclass of int in Python, so no number may be one.
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table ([{key}])")
        return _build(kind, value, f"{key}.")
    if isinstance(kind, type) and issubclass(kind, StrEnum):
        if type(value) is not str or value not in set(kind):
            raise ConfigError(key, f"{value!r} is not one of {_words(kind)}")
        return kind(value)
    if kind in (bool, int, str):
        if type(value) is not kind:
            wanted = {bool: "true or false", int: "an integer", str: "a string"}[kind]
            raise ConfigError(key, f"expected {wanted}, got {value!r}")
        return value
    if kind is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if kind == tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f"expected a list of app names, got {value!r}")
        for name in value:
            if not NAME_RE.fullmatch(name):
                raise ConfigError(key, f"{name!r} is not an app name ({NAME_RE.pattern})")
        return tuple(value)
    if kind == Size | None:
        return _size(key, value) if value != "" else None
    if kind == dict[str, Size]:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table of app = size, got {value!r}")
        out = {}
        for app, size in value.items():
            if not NAME_RE.fullmatch(app):
                raise ConfigError(f"{key}.{app}", f"{app!r} is not an app name")
            out[app] = _size(f"{key}.{app}", size)
        return out
    raise ConfigError(key, f"unsupported type {kind!r}")  # pragma: no cover


def _size(key: str, value: Any) -> Size:
    if not isinstance(value, str):
        raise ConfigError(key, f'expected a size as a string like "50GiB", got {value!r}')
    try:
        return Size(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _build(cls: type[Any], data: Mapping[str, Any], prefix: str) -> Any:
    kinds = typing.get_type_hints(cls)  # the annotations resolved, not their text
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in kinds:
            raise ConfigError(f"{prefix}{key}", "unknown key")
        kwargs[key] = _coerce(f"{prefix}{key}", value, kinds[key])
    return cls(**kwargs)


def validate(cfg: Config) -> Config:
    """Checks values beyond their types: each key's declared check, then the rules between
    keys. Returns cfg unchanged or raises ConfigError."""
    for key, f, value in fields_of(cfg):
        # TOML has nan and inf: no setting means either, and every comparison with a NaN is
        # false, so a check or a rule between keys that refuses `v < lo` lets it through
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(key, f"must be a finite number, not {value}")
        check = f.metadata.get("check")
        if check and (problem := check(value)):
            raise ConfigError(key, problem)
    if cfg.mount.type == MountType.NFS and not cfg.mount.source:
        raise ConfigError("mount.source", 'type nfs needs a source like "server:/export"')
    h = cfg.health
    if h.stale_after_s <= h.heartbeat_interval_s:
        raise ConfigError("health.stale_after_s", "must be longer than heartbeat_interval_s")
    if h.forget_after_s < h.stale_after_s + NFS_LEASE_S:
        raise ConfigError(
            "health.forget_after_s",
            f"must be at least stale_after_s + {NFS_LEASE_S:g} (an NFS lease): a host is "
            "forgotten only once it is stale and any lock it held has expired",
        )
    return cfg


def build(data: Mapping[str, Any]) -> Config:
    """A Config from parsed TOML with every value's type checked (ConfigError naming the key)
    but not yet its value: `from_dict` validates too."""
    cfg: Config = _build(Config, data, "")
    return cfg


def from_dict(data: Mapping[str, Any]) -> Config:
    """Builds and validates a Config from parsed TOML, applying environment overrides."""
    cfg = build(data)
    imds_env = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
    if imds_env:
        cfg = dataclasses.replace(cfg, aws=dataclasses.replace(cfg.aws, imds_endpoint=imds_env))
    return validate(cfg)


def config_path(explicit: str | None = None) -> str:
    """The path to read: --config, else VOLAGENT_CONFIG, else the default."""
    return explicit or os.environ.get("VOLAGENT_CONFIG") or DEFAULT_CONFIG_PATH


def load(path: str | None = None) -> Config:
    """Reads and validates the config file. A missing default file means all defaults; a
    missing file that was asked for by name is an error."""
    chosen = config_path(path)
    explicit = path is not None or "VOLAGENT_CONFIG" in os.environ
    try:
        raw = Path(chosen).read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError("", f"config file {chosen} does not exist") from None
        return from_dict({})
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {chosen}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("", f"{chosen} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{chosen} is not valid TOML: {exc}") from None
    return from_dict(data)


def to_toml(cfg: Config) -> str:
    """The effective config as TOML text (what `check-config` prints)."""
    return tomli_w.dumps(_plain(cfg))


def _plain(value: Any) -> Any:
    """Config values as TOML can hold them: sections as tables, None as an empty string,
    sizes as the text they were written as."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Size):
        return str(value)
    return "" if value is None else value
