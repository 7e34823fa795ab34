"""The namespace rules, property-tested: no plan ever leaves `<mp>/<rack>-<app>/`, `..` is
always a violation, and names follow rule 6."""

from __future__ import annotations

import posixpath
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from volagent import namespace
from volagent.config import Config, Owner, from_dict
from volagent.errors import NamespaceViolation
from volagent.namespace import Bind, Identity, Plan

MP = "/volumes"
CFG = from_dict({"rack": "r1", "mount_point": MP})
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
valid_names = st.from_regex(NAME, fullmatch=True)
# components an attacker would try, mixed with ordinary ones
components = st.one_of(
    valid_names,
    st.sampled_from(["..", ".", "", "r1-a", "r1-b", "r1-a..", "...", ".volagent", "etc", "~"]),
    st.text(alphabet="ab./-_\\ \t%", min_size=1, max_size=6),
)


def plans(binds: list[str], ident: Identity, labels: dict[str, str] | None = None) -> list[object]:
    parsed = [b for b in (namespace.parse_bind_spec(s) for s in binds) if b is not None]
    return list(namespace.plans_for(CFG, ident, parsed, labels or {}, None))


def is_under(path: str, root: str) -> bool:
    return path.startswith(root.rstrip("/") + "/")


@given(
    app=valid_names,
    service=valid_names,
    parts=st.lists(components, min_size=0, max_size=8),
    lead=st.sampled_from(["/volumes/", "/volumes//", "/volumes/./", "/", "/volumesX/"]),
)
def test_no_plan_ever_leaves_the_app_namespace(
    app: str, service: str, parts: list[str], lead: str
) -> None:
    ident = Identity("r1", app, service)
    host = lead + "/".join(parts)
    assume(":" not in host)
    for item in plans([f"{host}:/data"], ident):
        if isinstance(item, Plan):
            ns_root = f"{MP}/r1-{app}"
            assert is_under(item.host_path, ns_root), item
            assert posixpath.normpath(item.host_path) == item.host_path
            assert item.parts[0] == f"r1-{app}"
            assert len(item.parts) >= 2
            assert all(p not in ("", ".", "..") and "/" not in p for p in item.parts)
            assert posixpath.join(MP, *item.parts) == item.host_path
        else:
            assert isinstance(item, NamespaceViolation)
            assert item.rule in (5, 6)
            assert str(item)


@given(
    app=valid_names,
    before=st.lists(valid_names, max_size=3),
    after=st.lists(valid_names, max_size=3),
)
def test_dotdot_is_always_a_violation(app: str, before: list[str], after: list[str]) -> None:
    # even a `..` that would land back inside the namespace is refused
    host = "/".join([MP, f"r1-{app}", *before, "..", *after])
    found = plans([f"{host}:/d"], Identity("r1", app, "web"))
    assert len(found) == 1
    assert isinstance(found[0], NamespaceViolation)
    assert found[0].rule == 5
    assert ".." in str(found[0])


@given(app=valid_names, other=valid_names, rest=st.lists(valid_names, min_size=1, max_size=3))
def test_another_apps_namespace_is_a_violation(app: str, other: str, rest: list[str]) -> None:
    assume(app != other)
    host = "/".join([MP, f"r1-{other}", *rest])
    (found,) = plans([f"{host}:/d"], Identity("r1", app, "web"))
    assert isinstance(found, NamespaceViolation)
    assert found.rule == 5


@given(text=st.text(max_size=70))
def test_names_rule_6(text: str) -> None:
    ident = Identity("r1", text or "x", "web")
    expected_ok = NAME.fullmatch(text or "x") is not None
    try:
        namespace.check_identity(ident)
    except NamespaceViolation as exc:
        assert not expected_ok
        assert exc.rule == 6
    else:
        assert expected_ok
    assert namespace.valid_name(text) == (NAME.fullmatch(text) is not None)


@pytest.mark.parametrize(
    "bad", ["../../etc", "App", "a b", "-a", ".a", "a/b", "a" * 64, "é", "a\n", ""]
)
def test_bad_app_label_makes_every_bind_a_violation(bad: str) -> None:
    labels = {"convox.app": bad, "convox.service": "web"}
    ident = namespace.identify(CFG, labels, [])
    if not bad:
        assert not ident.labeled
        return
    found = plans([f"{MP}/r1-{bad}/web/data:/data", f"{MP}/r1-a/web/x:/x"], ident, labels)
    assert len(found) == 2
    assert all(isinstance(f, NamespaceViolation) and f.rule == 6 for f in found)


def test_identity_label_then_env_then_config() -> None:
    env = ["RACK=envrack", "APP=envapp", "SERVICE=envsvc", "APP=second"]
    assert namespace.identify(CFG, {}, env) == Identity("envrack", "envapp", "envsvc")
    labels = {"convox.rack": "lr", "convox.app": "la", "convox.service": "ls"}
    assert namespace.identify(CFG, labels, env) == Identity("lr", "la", "ls")
    assert namespace.identify(CFG, {}, []) == Identity("r1", "", "")
    custom = from_dict({"docker": {"app_label": "my.app"}})
    assert namespace.identify(custom, {"my.app": "x", "convox.app": "y"}, []).app == "x"


def test_no_rack_anywhere_is_a_violation() -> None:
    ident = namespace.identify(Config(), {"convox.app": "a"}, [])
    found = namespace.plans_for(Config(), ident, [Bind("/volumes/-a/s/d", "/d", False)], {}, None)
    assert isinstance(found[0], NamespaceViolation)
    assert found[0].rule == 6


def test_binds_of_reads_binds_and_bind_mounts_only() -> None:
    hc = {
        "Binds": ["/volumes/r1-a/s/d:/d:ro,z", "named:/n", "/host:/h", 7],
        "Mounts": [
            {"Type": "bind", "Source": "/volumes/r1-a/s/m", "Target": "/m", "ReadOnly": True},
            {"Type": "volume", "Source": "vol", "Target": "/v"},
            {"Type": "tmpfs", "Target": "/t"},
        ],
    }
    assert namespace.binds_of(hc) == [
        Bind("/volumes/r1-a/s/d", "/d", True),
        Bind("/host", "/h", False),
        Bind("/volumes/r1-a/s/m", "/m", True),
    ]
    assert namespace.binds_of(None) == []
    assert namespace.binds_of({"Binds": None, "Mounts": None}) == []


@pytest.mark.parametrize(
    ("host", "touches"),
    [
        ("/volumes", True),
        ("/volumes/r1-a/s", True),
        ("/volumes/../etc", True),  # an escape is ours to refuse, not someone else's bind
        ("/volumesX/r1-a", False),
        ("/vol", False),
        ("/etc", False),
    ],
)
def test_touches_mount_point(host: str, touches: bool) -> None:
    assert namespace.touches_mount_point(MP, host) is touches


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("/volumes:/d", "mount point root"),
        ("/volumes/r1-a:/d", "namespace root"),
        ("/volumes/r1-b/s/d:/d", "outside app"),
        ("/volumes/../etc/x:/d", "'..'"),
        ("/volumes/r1-a/.volagent/x:/d", "not allowed"),
    ],
)
def test_plan_violations_say_why(host: str, why: str) -> None:
    (found,) = plans([host], Identity("r1", "a", "s"))
    assert isinstance(found, NamespaceViolation)
    assert why in str(found)


def test_services_of_one_app_may_share() -> None:
    (found,) = plans(["/volumes/r1-a/other/shared:/s"], Identity("r1", "a", "web"))
    assert isinstance(found, Plan)
    assert found.parts == ("r1-a", "other", "shared")


def test_owner_label_then_numeric_user_then_config() -> None:
    cfg = from_dict({"directories": {"owner": "7:8", "mode": "0700"}})
    assert namespace.resolve_owner(cfg, {}, None) == (Owner(7, 8), 0o700)
    assert namespace.resolve_owner(cfg, {}, "www-data") == (Owner(7, 8), 0o700)
    assert namespace.resolve_owner(cfg, {}, "33") == (Owner(33, 33), 0o700)
    assert namespace.resolve_owner(cfg, {}, "33:44") == (Owner(33, 44), 0o700)
    labels = {"volagent.owner": "1234:1234", "volagent.mode": "0750"}
    assert namespace.resolve_owner(cfg, labels, "33") == (Owner(1234, 1234), 0o750)


@pytest.mark.parametrize("labels", [{"volagent.owner": "root"}, {"volagent.mode": "4755"}])
def test_bad_owner_or_mode_label_is_a_violation(labels: dict[str, str]) -> None:
    with pytest.raises(NamespaceViolation) as info:
        namespace.resolve_owner(CFG, labels, None)
    assert info.value.rule == 6


@given(app=valid_names, service=valid_names, tail=st.lists(valid_names, max_size=4))
def test_host_path_is_in_the_namespace(app: str, service: str, tail: list[str]) -> None:
    path = "/" + "/".join(tail)
    got = namespace.host_path(MP, "r1", app, service, path)
    assert got == posixpath.normpath(got)
    assert got == f"{MP}/r1-{app}/{service}" or is_under(got, f"{MP}/r1-{app}/{service}")


@pytest.mark.parametrize(
    ("app", "service", "path"),
    [("a", "s", "rel"), ("a", "s", "/x/../../y"), ("A", "s", "/x"), ("a", "", "/x")],
)
def test_host_path_refuses(app: str, service: str, path: str) -> None:
    with pytest.raises(NamespaceViolation):
        namespace.host_path(MP, "r1", app, service, path)


def test_host_path_example() -> None:
    assert namespace.host_path(MP, "r", "a", "s", "/var/www/html") == "/volumes/r-a/s/var/www/html"
