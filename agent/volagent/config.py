"""Configuration: TOML loaded once into frozen dataclasses and validated.

Every key has a default, so an empty file is valid. An unknown key or a bad value is a
`ConfigError` naming the dotted key. Each field's `doc` metadata is the reference text the
README's configuration table is checked against.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from volagent.errors import ConfigError
from volagent.values import NAME_RE, Owner, Size, parse_mode, parse_owner

DEFAULT_CONFIG_PATH = "/etc/volagent/volagent.toml"
DEFAULT_NFS_OPTIONS = "nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport"
MOUNT_TYPES = ("auto", "efs", "nfs4", "nfs", "local")
LOG_LEVELS = ("debug", "info", "warning", "error")
OVER_QUOTA_ACTIONS = ("warn", "deny")


# When an edited key takes effect in a running daemon (the file watch, `systemctl reload`):
LIVE = "live"  # at once
REMOUNT = "remount"  # the mount side mounts the shared filesystem again with it
RESTART = "restart"  # only once volagent is restarted
RESTART_TO_ENABLE = "restart to turn on"  # turning it off applies at once


def _doc(text: str, applies: str = LIVE, **kw: Any) -> Any:
    return field(metadata={"doc": text, "applies": applies}, **kw)


@dataclass(frozen=True)
class MountConfig:
    type: str = _doc("auto | efs | nfs4 | nfs | local", default="auto", applies=REMOUNT)
    file_system_id: str = _doc("fs-..., or discover by tag", default="", applies=REMOUNT)
    discover_tag: str = _doc(
        '"Key=Value" tag of the filesystem, e.g. "convox:rack=myrack"', default="", applies=REMOUNT
    )
    region: str = _doc("AWS region; default: from instance metadata", default="", applies=REMOUNT)
    source: str = _doc('for type nfs: "server:/export"', default="", applies=REMOUNT)
    local_path: str = _doc(
        "for type local: the directory bind-mounted on the mount point",
        default="/var/lib/volagent/local",
        applies=REMOUNT,
    )
    options: str = _doc(
        "mount options for efs, nfs4 and nfs", default=DEFAULT_NFS_OPTIONS, applies=REMOUNT
    )
    mount_program: str = _doc(
        "called as PROG -t TYPE -o OPTS SOURCE MOUNT_POINT", default="mount", applies=REMOUNT
    )
    probe_interval_s: float = _doc("seconds between health probes of the mount", default=5.0)
    probe_timeout_s: float = _doc(
        "seconds a probe may take before the mount is stalled", default=3.0
    )
    stalled_remount_after: int = _doc(
        "consecutive stalled probes before a forced remount", default=6
    )
    allow_local_fallback: bool = _doc(
        "where EFS can't be had, use local_path and report local", default=False, applies=REMOUNT
    )


@dataclass(frozen=True)
class AwsConfig:
    imds_endpoint: str = _doc(
        "instance metadata endpoint; AWS_EC2_METADATA_SERVICE_ENDPOINT overrides",
        default="http://169.254.169.254",
        applies=REMOUNT,
    )
    endpoint_url: str = _doc(
        "AWS API endpoint; boto3 also honours AWS_ENDPOINT_URL", default="", applies=REMOUNT
    )


@dataclass(frozen=True)
class DockerConfig:
    url: str = _doc(
        "Docker engine API address", default="unix:///var/run/docker.sock", applies=RESTART
    )
    rack_label: str = _doc("label naming the rack", default="convox.rack")
    app_label: str = _doc("label naming the app", default="convox.app")
    service_label: str = _doc("label naming the service", default="convox.service")


@dataclass(frozen=True)
class DirectoriesConfig:
    owner: str = _doc("UID:GID of created leaf directories", default="0:0")
    mode: str = _doc("octal mode of created leaf directories", default="0755")
    timeout_s: float = _doc("seconds one directory preparation may take", default=5.0)

    # parsed once (validated at load), not for every container
    @functools.cached_property
    def owner_ids(self) -> Owner:
        return parse_owner(self.owner)

    @functools.cached_property
    def mode_bits(self) -> int:
        return parse_mode(self.mode)


@dataclass(frozen=True)
class ApiConfig:
    socket: str = _doc(
        "the local status socket", default="/run/volagent/volagent.sock", applies=RESTART
    )
    metrics_address: str = _doc(
        'also serve /metrics on "host:port" (off when empty)', default="", applies=RESTART
    )
    socket_group: str = _doc(
        "group whose members may use the status socket (0660); empty: root only (0600)",
        default="volagent",
        applies=RESTART,
    )


@dataclass(frozen=True)
class GuardConfig:
    enabled: bool = _doc(
        "serve the Docker authorization plugin", default=False, applies=RESTART_TO_ENABLE
    )
    plugin_socket: str = _doc(
        "the plugin's socket", default="/run/docker/plugins/volagent.sock", applies=RESTART
    )
    when_unhealthy: str = _doc(
        "deny | allow container create/start while the mount is unhealthy", default="deny"
    )
    violations: str = _doc("deny | warn on namespace violations", default="deny")
    privileged_apps: tuple[str, ...] = _doc(
        "apps whose containers may use privilege, host namespaces, added capabilities, "
        'devices and unconfined security options, e.g. ["ci"]',
        default=(),
    )


# the NFSv4 lease of Linux's nfsd and of EFS: a dead client's locks are released after it
NFS_LEASE_S = 90.0


@dataclass(frozen=True)
class HealthConfig:
    heartbeat_interval_s: float = _doc("seconds between heartbeats of this host", default=30.0)
    stale_after_s: float = _doc("a host whose heartbeat is older is stale", default=90.0)
    forget_after_s: float = _doc(
        "a host silent this long no longer holds its binds in the rack's registry", default=900.0
    )
    unhealthy_after_s: float = _doc(
        "critical this long: report unhealthy to the Auto Scaling group (0: never)", default=0.0
    )


@dataclass(frozen=True)
class UsageConfig:
    ops_per_second: float = _doc(
        "filesystem operations per second the usage walk may spend", default=100.0
    )
    interval_s: float = _doc(
        "seconds from the start of one full usage pass to the next", default=3600.0
    )


@dataclass(frozen=True)
class QuotasConfig:
    # field() itself: sizes are objects, and a default of one must not be shared by call
    default: Size | None = field(
        default=None,
        metadata={"doc": 'limit of an app not in apps, e.g. "100GiB" ("": none)'},
    )
    over_quota: str = _doc("warn | deny new creates of an app over its limit", default="warn")
    apps: dict[str, Size] = field(
        default_factory=dict, metadata={"doc": 'limit per app, e.g. { shop = "50GiB" }'}
    )

    def limit_of(self, app: str) -> Size | None:
        """The limit of `app`: its own, else the default, else None."""
        return self.apps.get(app, self.default)


@dataclass(frozen=True)
class Config:
    rack: str = _doc("rack name for containers without a rack label or env", default="")
    host_id: str = _doc(
        "names this host in the rack view; default: instance id, else hostname", default=""
    )
    mount_point: str = _doc(
        "where the shared filesystem is mounted", default="/volumes", applies=RESTART
    )
    state_dir: str = _doc("local state of the agent", default="/var/lib/volagent", applies=RESTART)
    log_level: str = _doc("debug | info | warning | error", default="info")
    mount: MountConfig = field(default_factory=MountConfig)
    aws: AwsConfig = field(default_factory=AwsConfig)
    docker: DockerConfig = field(default_factory=DockerConfig)
    directories: DirectoriesConfig = field(default_factory=DirectoriesConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    usage: UsageConfig = field(default_factory=UsageConfig)
    quotas: QuotasConfig = field(default_factory=QuotasConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def keys_applying(applies: str, cfg: Config | None = None) -> list[str]:
    """The dotted keys that take effect the way `applies` says, in declaration order."""
    out = []
    cfg = cfg or Config()
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out += [
                f"{f.name}.{sf.name}"
                for sf in dataclasses.fields(value)
                if sf.metadata.get("applies", LIVE) == applies
            ]
        elif f.metadata.get("applies", LIVE) == applies:
            out.append(f.name)
    return out


def value_of(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def changed_keys(old: Config, new: Config, applies: str) -> list[str]:
    """The keys of that kind whose value differs between two configs."""
    return [k for k in keys_applying(applies) if value_of(old, k) != value_of(new, k)]


SECTIONS: dict[str, type[Any]] = {
    "mount": MountConfig,
    "aws": AwsConfig,
    "docker": DockerConfig,
    "directories": DirectoriesConfig,
    "api": ApiConfig,
    "guard": GuardConfig,
    "health": HealthConfig,
    "usage": UsageConfig,
    "quotas": QuotasConfig,
}


def _coerce(key: str, value: Any, kind: Any) -> Any:
    # TOML has distinct types; bool is a subclass of int in Python, so check it first.
    if kind in ("bool", bool):
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a {_kind_name(kind)}, got {value!r}")
    if kind in ("int", int):
        if not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if kind in ("float", float):
        if not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if kind == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f"expected a list of app names, got {value!r}")
        for name in value:
            if not NAME_RE.fullmatch(name):
                raise ConfigError(key, f"{name!r} is not an app name ({NAME_RE.pattern})")
        return tuple(value)
    if kind == "Size | None":
        return _size(key, value) if value != "" else None
    if kind == "dict[str, Size]":
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table of app = size, got {value!r}")
        out = {}
        for app, size in value.items():
            if not NAME_RE.fullmatch(app):
                raise ConfigError(f"{key}.{app}", f"{app!r} is not an app name")
            out[app] = _size(f"{key}.{app}", size)
        return out
    if kind in ("str", str):
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    raise ConfigError(key, f"unsupported type {kind!r}")  # pragma: no cover


def _size(key: str, value: Any) -> Size:
    if not isinstance(value, str):
        raise ConfigError(key, f'expected a size as a string like "50GiB", got {value!r}')
    try:
        return Size(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _kind_name(kind: Any) -> str:
    return {"int": "integer", "float": "number", "str": "string"}.get(str(kind), str(kind))


def _build(cls: type[Any], data: Mapping[str, Any], prefix: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(dotted, "unknown key")
        if key in SECTIONS and cls is Config:
            if not isinstance(value, dict):
                raise ConfigError(dotted, "expected a table ([" + key + "])")
            kwargs[key] = _build(SECTIONS[key], value, f"{key}.")
        elif key in SECTIONS and cls is not Config:  # pragma: no cover
            raise ConfigError(dotted, "unknown key")
        else:
            kwargs[key] = _coerce(dotted, value, names[key].type)
    return cls(**kwargs)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(key, f"{value!r} is not one of {' | '.join(choices)}")


def _check_abs(key: str, value: str) -> None:
    if not value.startswith("/"):
        raise ConfigError(key, f"{value!r} is not an absolute path")
    if "\x00" in value:
        raise ConfigError(key, "contains a NUL byte")


def validate(cfg: Config) -> Config:
    """Checks values beyond their types; returns cfg unchanged or raises ConfigError."""
    if cfg.rack and not NAME_RE.fullmatch(cfg.rack):
        raise ConfigError("rack", f"{cfg.rack!r} must match {NAME_RE.pattern}")
    _check_abs("mount_point", cfg.mount_point)
    if os.path.normpath(cfg.mount_point) == "/":
        raise ConfigError("mount_point", "must not be /")
    _check_abs("state_dir", cfg.state_dir)
    _check_choice("log_level", cfg.log_level, LOG_LEVELS)
    m = cfg.mount
    _check_choice("mount.type", m.type, MOUNT_TYPES)
    if m.file_system_id and not re.fullmatch(r"fs-[0-9a-f]{1,40}", m.file_system_id):
        raise ConfigError("mount.file_system_id", f"{m.file_system_id!r} is not like fs-0123abcd")
    if m.discover_tag and "=" not in m.discover_tag:
        raise ConfigError("mount.discover_tag", f"{m.discover_tag!r} is not Key=Value")
    if m.type == "nfs" and not m.source:
        raise ConfigError("mount.source", 'type nfs needs a source like "server:/export"')
    if m.source and ":" not in m.source:
        raise ConfigError("mount.source", f"{m.source!r} is not server:/export")
    _check_abs("mount.local_path", m.local_path)
    if any(c in m.options for c in " \t\n"):
        raise ConfigError("mount.options", "must not contain white space")
    if not m.mount_program:
        raise ConfigError("mount.mount_program", "must not be empty")
    for key, val in (
        ("mount.probe_interval_s", m.probe_interval_s),
        ("mount.probe_timeout_s", m.probe_timeout_s),
    ):
        if not 0.05 <= val <= 3600:
            raise ConfigError(key, f"{val} is outside 0.05..3600 seconds")
    if m.stalled_remount_after < 1:
        raise ConfigError("mount.stalled_remount_after", "must be at least 1")
    for key, url in (
        ("aws.imds_endpoint", cfg.aws.imds_endpoint),
        ("aws.endpoint_url", cfg.aws.endpoint_url),
    ):
        if url and not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError(key, f"{url!r} is not an http(s) URL")
    if not re.match(r"^(unix|tcp|http|https)://", cfg.docker.url):
        raise ConfigError("docker.url", f"{cfg.docker.url!r} is not unix://, tcp:// or http(s)://")
    for key in ("rack_label", "app_label", "service_label"):
        if not getattr(cfg.docker, key):
            raise ConfigError(f"docker.{key}", "must not be empty")
    try:
        parse_owner(cfg.directories.owner)
    except ValueError as exc:
        raise ConfigError("directories.owner", str(exc)) from None
    try:
        parse_mode(cfg.directories.mode)
    except ValueError as exc:
        raise ConfigError("directories.mode", str(exc)) from None
    if not 0.1 <= cfg.directories.timeout_s <= 600:
        raise ConfigError("directories.timeout_s", "is outside 0.1..600 seconds")
    _check_abs("api.socket", cfg.api.socket)
    if cfg.api.metrics_address and not re.fullmatch(r"[^\s:]*:\d{1,5}", cfg.api.metrics_address):
        raise ConfigError("api.metrics_address", f"{cfg.api.metrics_address!r} is not host:port")
    if cfg.api.socket_group and not re.fullmatch(
        r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", cfg.api.socket_group
    ):
        raise ConfigError(
            "api.socket_group", f"{cfg.api.socket_group!r} is not a group name (or empty)"
        )
    _check_abs("guard.plugin_socket", cfg.guard.plugin_socket)
    _check_choice("guard.when_unhealthy", cfg.guard.when_unhealthy, ("deny", "allow"))
    _check_choice("guard.violations", cfg.guard.violations, ("deny", "warn"))
    h = cfg.health
    if h.heartbeat_interval_s < 0.1:
        raise ConfigError("health.heartbeat_interval_s", "must be at least 0.1")
    if h.stale_after_s <= h.heartbeat_interval_s:
        raise ConfigError("health.stale_after_s", "must be longer than heartbeat_interval_s")
    if h.forget_after_s < h.stale_after_s + NFS_LEASE_S:
        raise ConfigError(
            "health.forget_after_s",
            f"must be at least stale_after_s + {NFS_LEASE_S:g} (an NFS lease): a host is "
            "forgotten only once it is stale and any lock it held has expired",
        )
    if h.unhealthy_after_s < 0:
        raise ConfigError("health.unhealthy_after_s", "must not be negative")
    u = cfg.usage
    if not 1 <= u.ops_per_second <= 100_000:
        raise ConfigError("usage.ops_per_second", f"{u.ops_per_second} is outside 1..100000")
    if not 1 <= u.interval_s <= 30 * 86400:
        raise ConfigError("usage.interval_s", f"{u.interval_s} is outside 1..2592000 seconds")
    _check_choice("quotas.over_quota", cfg.quotas.over_quota, OVER_QUOTA_ACTIONS)
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
