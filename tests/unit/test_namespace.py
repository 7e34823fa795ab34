"""The namespace rules, property-tested: no plan ever leaves `<mp>/<rack>-<app>/`, `..` is
always a violation, and names follow rule 6."""

from __future__ import annotations

import posixpath
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from volagent import nesting
from volagent.config import Config, from_dict
from volagent.errors import NamespaceViolation
from volagent.values import Owner
from volagent.volumes import namespace
from volagent.volumes.namespace import Bind, Identity, Plan

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
    env = ["RACK=r1", "APP=envapp", "SERVICE=envsvc", "APP=second"]
    assert namespace.identify(CFG, {}, env) == Identity("r1", "envapp", "envsvc")
    labels = {"convox.rack": "r1", "convox.app": "la", "convox.service": "ls"}
    assert namespace.identify(CFG, labels, []) == Identity("r1", "la", "ls")
    assert namespace.identify(CFG, {}, []) == Identity("r1", "", "")
    custom = from_dict({"docker": {"app_label": "my.app"}})
    assert namespace.identify(custom, {"my.app": "x", "convox.app": "y"}, []).app == "x"
    unracked = from_dict({})
    assert namespace.identify(unracked, {}, ["RACK=envrack"]).rack == "envrack"


def check(ident: Identity, host_rack: str = "r1") -> int | None:
    try:
        namespace.check_identity(ident, host_rack)
    except NamespaceViolation as exc:
        return exc.rule
    return None


def test_a_container_naming_another_rack_is_a_violation() -> None:
    # app `web` claiming rack `r1-billing` would read app `billing-web` of rack `r1`
    for labels, env in (({"convox.rack": "r1-billing"}, []), ({}, ["RACK=r1-billing"])):
        ident = namespace.identify(CFG, {**labels, "convox.app": "web"}, env)
        assert ident.conflict and "this host belongs to rack 'r1'" in ident.conflict
        assert check(ident) == 6


@pytest.mark.parametrize(
    ("labels", "env", "what"),
    [
        ({"convox.app": "web"}, ["APP=billing"], "apps"),
        ({"convox.app": "web", "convox.service": "a"}, ["SERVICE=b"], "services"),
    ],
)
def test_label_and_env_that_disagree_are_a_violation(
    labels: dict[str, str], env: list[str], what: str
) -> None:
    ident = namespace.identify(CFG, labels, env)
    assert f"name different {what}" in ident.conflict
    assert check(ident) == 6
    # agreeing is fine
    same = namespace.identify(CFG, {"convox.app": "web"}, ["APP=web"])
    assert same.conflict == "" and check(same) is None


def test_without_a_configured_rack_a_dashed_rack_is_refused() -> None:
    unracked = from_dict({})
    ident = namespace.identify(unracked, {"convox.app": "web"}, ["RACK=r-billing"])
    assert check(ident, host_rack="") == 6
    assert check(namespace.identify(unracked, {"convox.app": "web"}, ["RACK=r"]), "") is None


names = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,10}", fullmatch=True)


@given(
    host_rack=st.sampled_from(["", "r", "r-x"]),
    first=st.tuples(names, names),
    second=st.tuples(names, names),
)
def test_two_accepted_rack_app_pairs_never_share_a_namespace(
    host_rack: str, first: tuple[str, str], second: tuple[str, str]
) -> None:
    assume(first != second)
    cfg = from_dict({"rack": host_rack}) if host_rack else from_dict({})
    accepted = []
    for rack, app in (first, second):
        ident = namespace.identify(cfg, {"convox.rack": rack, "convox.app": app}, [])
        if check(ident, cfg.rack) is None:
            accepted.append(ident)
    if len(accepted) == 2:
        assert accepted[0].namespace != accepted[1].namespace


@pytest.mark.parametrize(
    ("written", "cleaned"),
    [
        ("//volumes/r1-b/web", "/volumes/r1-b/web"),
        ("///volumes//r1-b/./web/", "/volumes/r1-b/web"),
        ("/volumes/r1-a/../r1-b", "/volumes/r1-b"),
        ("//", "/"),
    ],
)
def test_paths_are_cleaned_the_way_docker_cleans_them(written: str, cleaned: str) -> None:
    assert namespace.go_clean(written) == cleaned
    assert namespace.touches_mount_point(MP, written) == cleaned.startswith(MP)


def test_a_bind_spelled_with_a_leading_double_slash_is_judged_where_it_lands() -> None:
    ident = namespace.identify(CFG, {"convox.app": "a", "convox.service": "s"}, [])
    (found,) = namespace.plans_for(CFG, ident, [Bind("//volumes/r1-b/s/d", "/d", False)], {}, None)
    assert isinstance(found, NamespaceViolation) and found.rule == 5


def test_a_path_no_host_can_hold_is_a_violation_not_an_error() -> None:
    ident = namespace.identify(CFG, {"convox.app": "a", "convox.service": "s"}, [])
    binds = [Bind("/volumes/r1-a/s/\ud800", "/d", False), Bind("/volumes/r1-a/s/ok", "/o", False)]
    bad, good = namespace.plans_for(CFG, ident, binds, {}, None)
    assert isinstance(bad, NamespaceViolation) and "UTF-8" in bad.reason
    assert isinstance(good, Plan)


def test_nested_binds() -> None:
    others = [("/volumes/r1-a/s/data", "container x")]
    assert nesting.nested_with("/volumes/r1-a/s/data", others) is None
    assert "lies inside" in (nesting.nested_with("/volumes/r1-a/s/data/db", others) or "")
    assert "contains" in (nesting.nested_with("/volumes/r1-a/s", others) or "")
    assert nesting.nested_with("/volumes/r1-a/s/database", others) is None


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
        ("/volumes/r1-a/.volagent/x:/d", "reserved"),
        ("/volumes/r1-a/s/" + "x" * 256 + ":/d", "longer than 255 bytes"),
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
    [
        ("a", "s", "rel"),
        ("a", "s", "/x/../../y"),
        ("A", "s", "/x"),
        ("a", "", "/x"),
        ("a", "s", "/.volagent"),
        ("a", "s", "/x/" + "y" * 256),
    ],
)
def test_host_path_refuses(app: str, service: str, path: str) -> None:
    with pytest.raises(NamespaceViolation):
        namespace.host_path(MP, "r1", app, service, path)


def test_host_path_example() -> None:
    assert namespace.host_path(MP, "r", "a", "s", "/var/www/html") == "/volumes/r-a/s/var/www/html"
