"""The namespace rules, as pure functions: who a container is (rack, app, service), which of
its binds lie under the mount point, where each may go, and with which owner and mode.

No I/O here: the fs layer walks the paths this module returns, without following symlinks.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from volagent.config import Config
from volagent.errors import NamespaceViolation
from volagent.nesting import under
from volagent.values import NAME_RE, Owner, parse_mode, parse_owner

OWNER_LABEL = "volagent.owner"
MODE_LABEL = "volagent.mode"


@dataclass(frozen=True)
class Identity:
    """Where a container belongs. Empty strings mean unknown; `conflict` says why the
    container's own labels and env cannot be trusted to name it (they disagree, or name a
    rack that is not this host's)."""

    rack: str
    app: str
    service: str
    conflict: str = ""

    @property
    def labeled(self) -> bool:
        """A container is volagent's when it has an app."""
        return bool(self.app)

    @property
    def namespace(self) -> str:
        """`<rack>-<app>`, the directory under the mount point owned by the app."""
        return f"{self.rack}-{self.app}"


@dataclass(frozen=True)
class Bind:
    """One bind of a container: the host side as written, the container side, and `:ro`."""

    host: str
    container: str
    read_only: bool


@dataclass(frozen=True)
class Plan:
    """What to create for one bind: path components below the mount point, the last being
    the leaf, which gets `owner` and `mode`; parents get root:root 0755."""

    bind: Bind
    host_path: str
    parts: tuple[str, ...]
    owner: Owner
    mode: int


def valid_name(name: str) -> bool:
    return bool(NAME_RE.fullmatch(name))


def is_text(value: str) -> bool:
    """False for a string JSON can carry but no path can hold (a lone UTF-16 surrogate)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _env_map(env: Iterable[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in env or ():
        key, sep, value = item.partition("=")
        if sep and key not in out:
            out[key] = value
    return out


def identify(cfg: Config, labels: Mapping[str, str] | None, env: Iterable[str] | None) -> Identity:
    """Rack, app and service of a container: label first, then env, then config (rack only).

    The container's creator writes its labels and env, so neither is trusted to pick a rack
    other than this host's, and a label and an env that name different apps or services
    leave the container without a trustworthy name (`conflict`)."""
    labels = labels or {}
    envs = _env_map(env)
    d = cfg.docker
    problems = []
    named: dict[str, str] = {}
    for what, label_key, env_key in (
        ("rack", d.rack_label, "RACK"),
        ("app", d.app_label, "APP"),
        ("service", d.service_label, "SERVICE"),
    ):
        by_label, by_env = labels.get(label_key) or "", envs.get(env_key) or ""
        if by_label and by_env and by_label != by_env:
            problems.append(
                f"label {label_key}={by_label!r} and env {env_key}={by_env!r} name different "
                f"{what}s"
            )
        named[what] = by_label or by_env
    rack = named["rack"] or cfg.rack
    if cfg.rack and rack != cfg.rack:
        problems.append(f"it names rack {rack!r}, but this host belongs to rack {cfg.rack!r}")
    return Identity(
        rack=rack, app=named["app"], service=named["service"], conflict="; ".join(problems)
    )


def check_identity(ident: Identity, host_rack: str = "") -> None:
    """Rule 6: the container's names agree and are valid, its rack is this host's, and
    `<rack>-<app>` cannot be read as another (rack, app) pair.

    Without a rack in the config, a rack named by the container may not hold `-`: rack
    `r-billing` with app `web` and rack `r` with app `billing-web` would share a directory."""
    if ident.conflict:
        raise NamespaceViolation(6, ident.conflict)
    if not ident.rack:
        raise NamespaceViolation(6, "no rack: set `rack` in the config (or the rack label, RACK)")
    for what, name in (("rack", ident.rack), ("app", ident.app), ("service", ident.service)):
        if name and not valid_name(name):
            raise NamespaceViolation(6, f"{what} name {name!r} must match {NAME_RE.pattern}")
    if not host_rack and "-" in ident.rack:
        raise NamespaceViolation(
            6,
            f"rack name {ident.rack!r} holds '-', which makes {ident.namespace!r} ambiguous; "
            "set `rack` in the config of this host",
        )


def parse_bind_spec(spec: str) -> Bind | None:
    """`host:ctr[:opts]` to a Bind; None for a named volume (host side not absolute)."""
    host, sep, rest = spec.partition(":")
    if not sep or not host.startswith("/"):
        return None
    container, _, opts = rest.partition(":")
    read_only = "ro" in opts.split(",") if opts else False
    return Bind(host=host, container=container, read_only=read_only)


def binds_of(host_config: Mapping[str, Any] | None) -> list[Bind]:
    """Every bind of a container: `HostConfig.Binds` and `HostConfig.Mounts` of type bind."""
    hc = host_config or {}
    out: list[Bind] = []
    for spec in hc.get("Binds") or ():
        if isinstance(spec, str):
            bind = parse_bind_spec(spec)
            if bind is not None:
                out.append(bind)
    for m in hc.get("Mounts") or ():
        if not isinstance(m, Mapping) or m.get("Type") != "bind":
            continue
        source, target = m.get("Source"), m.get("Target")
        if isinstance(source, str) and source.startswith("/"):
            out.append(
                Bind(host=source, container=str(target or ""), read_only=bool(m.get("ReadOnly")))
            )
    return out


def volume_names_of(host_config: Mapping[str, Any] | None) -> list[str]:
    """The named volumes a container mounts by its own config, in order, each once:
    `HostConfig.Binds` entries whose source is not an absolute path (`NAME:/x`) and
    `HostConfig.Mounts` of type volume with a Source. Docker uses an existing volume of that
    name as it was made (a DriverConfig given here is ignored then), and makes a missing one."""
    hc = host_config or {}
    names: list[str] = []
    for spec in hc.get("Binds") or ():
        if isinstance(spec, str):
            source, sep, _ = spec.partition(":")
            if sep and source and not source.startswith("/"):
                names.append(source)
    for m in hc.get("Mounts") or ():
        if isinstance(m, Mapping) and m.get("Type") == "volume":
            name = m.get("Source")
            if isinstance(name, str) and name:
                names.append(name)
    return list(dict.fromkeys(names))


def go_clean(path: str) -> str:
    """The path as Docker cleans a bind source (Go's `filepath.Clean`): like
    `posixpath.normpath`, except that a leading `//` collapses to `/` as well. A bind written
    `//volumes/other-app` lands in `/volumes/other-app`, so it is judged there."""
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


def touches_mount_point(mount_point: str, host: str) -> bool:
    """A bind concerns volagent when its host side, as written or cleaned, is under the mount
    point. As written counts too: `/volumes/../etc` is an escape, not somebody else's bind."""
    mp = go_clean(mount_point)
    as_written = "/" + host.lstrip("/")
    return under(go_clean(host), mp) or as_written.startswith(mp.rstrip("/") + "/")


def resolve_owner(
    cfg: Config, labels: Mapping[str, str] | None, user: str | None
) -> tuple[Owner, int]:
    """Owner and mode of leaf directories: labels, else the numeric container user, else config.

    A label that does not parse is a violation (rule 6), not a silent fallback."""
    labels = labels or {}
    owner = cfg.directories.owner_ids
    mode = cfg.directories.mode_bits
    if user:
        # a user name's ids live in the image, so for a name the config default applies
        with contextlib.suppress(ValueError):
            owner = parse_owner(user)
    if OWNER_LABEL in labels:
        try:
            owner = parse_owner(labels[OWNER_LABEL])
        except ValueError as exc:
            raise NamespaceViolation(6, f"label {OWNER_LABEL}: {exc}") from None
    if MODE_LABEL in labels:
        try:
            mode = parse_mode(labels[MODE_LABEL])
        except ValueError as exc:
            raise NamespaceViolation(6, f"label {MODE_LABEL}: {exc}") from None
    return owner, mode


def plan_bind(mount_point: str, ident: Identity, bind: Bind, owner: Owner, mode: int) -> Plan:
    """Rules 5 and 6 for one bind under the mount point; the directories to create."""
    cleaned, parts = judge_host_path(mount_point, ident, bind.host)
    return Plan(bind=bind, host_path=cleaned, parts=parts, owner=owner, mode=mode)


def judge_host_path(mount_point: str, ident: Identity, raw: str) -> tuple[str, tuple[str, ...]]:
    """Rule 5 for a bind's host side `raw` (as written) of a container of `ident`: the path as
    Docker cleans it and its components below the mount point, or NamespaceViolation. The
    guard judges every bind by it, and `volagent paths` what it prints."""
    mp = go_clean(mount_point)
    if "\x00" in raw:
        raise NamespaceViolation(5, "host path contains a NUL byte")
    if not is_text(raw):
        raise NamespaceViolation(5, f"{raw!r} is not valid UTF-8")
    if ".." in raw.split("/"):
        raise NamespaceViolation(5, f"{raw} escapes through '..'")
    cleaned = go_clean(raw)
    if not under(cleaned, mp):
        raise NamespaceViolation(5, f"{raw} is outside the mount point {mp}")
    rel = cleaned[len(mp) :].strip("/")
    parts = tuple(p for p in rel.split("/") if p)
    if not parts:
        raise NamespaceViolation(
            5,
            f"{raw} is the mount point root; bind a directory of the "
            f"app's namespace {mp}/{ident.namespace}/<service>/...",
        )
    if parts[0] != ident.namespace:
        raise NamespaceViolation(
            5, f"{raw} is outside app {ident.app}'s namespace {mp}/{ident.namespace}/"
        )
    if len(parts) < 2:
        raise NamespaceViolation(
            5, f"{raw} is the namespace root itself; bind {mp}/{ident.namespace}/<service>/..."
        )
    for p in parts:
        if p.startswith(".volagent"):
            raise NamespaceViolation(
                5, f"{raw}: component {p[:40]!r} is reserved (names starting with .volagent)"
            )
        if len(p.encode()) > 255:
            raise NamespaceViolation(5, f"{raw}: component {p[:40]!r}... is longer than 255 bytes")
    return cleaned, parts


def host_path(mount_point: str, rack: str, app: str, service: str, container_path: str) -> str:
    """`<mp>/<rack>-<app>/<service><path>`, what `volagent paths` prints; raises
    NamespaceViolation for bad names, a path that is not absolute or climbs with `..`, and a
    host path the guard would refuse to that service (judge_host_path: a reserved component,
    one over 255 bytes)."""
    ident = Identity(rack, app, service)
    check_identity(ident, host_rack=rack)
    if not app or not service:
        raise NamespaceViolation(6, "app and service are required")
    if not container_path.startswith("/"):
        raise NamespaceViolation(5, f"{container_path!r} is not an absolute container path")
    if ".." in container_path.split("/"):
        raise NamespaceViolation(5, f"{container_path} escapes through '..'")
    tail = posixpath.normpath(container_path).lstrip("/")
    base = posixpath.join(posixpath.normpath(mount_point), ident.namespace, service)
    cleaned, _ = judge_host_path(mount_point, ident, posixpath.join(base, tail) if tail else base)
    return cleaned


def plans_for(
    cfg: Config, ident: Identity, binds: Sequence[Bind], labels: Mapping[str, str], user: str | None
) -> list[Plan | NamespaceViolation]:
    """A Plan or the violation for each bind (all judged to be on the shared filesystem), in
    order. A bind that cannot be judged at all is a violation, never an error."""
    if not binds:
        return []
    try:
        check_identity(ident, cfg.rack)
        owner, mode = resolve_owner(cfg, labels, user)
    except NamespaceViolation as exc:
        return [exc for _ in binds]
    out: list[Plan | NamespaceViolation] = []
    for b in binds:
        try:
            out.append(plan_bind(cfg.mount_point, ident, b, owner, mode))
        except NamespaceViolation as exc:
            out.append(exc)
        except Exception as exc:  # attacker input must not turn into an allowed request
            out.append(NamespaceViolation(5, f"{b.host[:200]!r} cannot be judged: {exc}"))
    return out
