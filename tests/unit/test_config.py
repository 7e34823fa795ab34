"""Configuration: defaults, the empty file, and errors that name their key."""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest
from tests.testbed.contract_example import CONTRACT_EXAMPLE

from volagent import config, values
from volagent.config import Config
from volagent.errors import ConfigError


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "volagent.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def load_error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, text))
    return info.value


def test_empty_file_is_valid_and_all_defaults(tmp_path: Path) -> None:
    assert config.load(write(tmp_path, "")) == Config()


def test_defaults_are_the_contracts() -> None:
    cfg = Config()
    assert (cfg.rack, cfg.host_id, cfg.mount_point, cfg.state_dir) == (
        "",
        "",
        "/volumes",
        "/var/lib/volagent",
    )
    m = cfg.mount
    assert (m.type, m.file_system_id, m.discover_tag, m.region, m.source) == (
        "auto",
        "",
        "",
        "",
        "",
    )
    assert m.local_path == "/var/lib/volagent/local"
    assert m.options == (
        "nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport"
    )
    assert (m.mount_program, m.probe_interval_s, m.probe_timeout_s) == ("mount", 5, 3)
    assert m.allow_local_fallback is False
    assert (cfg.aws.imds_endpoint, cfg.aws.endpoint_url) == ("http://169.254.169.254", "")
    d = cfg.docker
    assert (d.url, d.rack_label, d.app_label, d.service_label) == (
        "unix:///var/run/docker.sock",
        "convox.rack",
        "convox.app",
        "convox.service",
    )
    assert (cfg.directories.owner, cfg.directories.mode) == ("0:0", "0755")
    assert cfg.api.socket == "/run/volagent/volagent.sock"
    g = cfg.guard
    assert (g.enabled, g.plugin_socket, g.when_unhealthy, g.violations) == (
        False,
        "/run/docker/plugins/volagent.sock",
        "deny",
        "deny",
    )


def test_contract_example_loads(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, CONTRACT_EXAMPLE))
    assert cfg.rack == "myrack"
    assert dataclasses.replace(cfg, rack="") == Config()


def test_every_key_has_a_default() -> None:
    for cls in (Config, *config.SECTIONS.values()):
        for f in dataclasses.fields(cls):
            has_default = f.default is not dataclasses.MISSING
            assert has_default or f.default_factory is not dataclasses.MISSING, f.name


def _wrong_value(kind: Any) -> Any:
    """A TOML value of the wrong type for a field of `kind`."""
    wrong = {"str": 42, "bool": "yes", "int": "many", "float": "fast"}
    wrong.update({"Size | None": 50, "dict[str, Size]": "shop=1GiB", "tuple[str, ...]": "ci"})
    wrong.update(dict.fromkeys(["MountType", "WhenUnhealthy", "OnViolation", "OverQuota"], 4))
    return wrong[str(kind)]


def _all_keys() -> list[tuple[str, str, Any]]:
    out = []
    for f in dataclasses.fields(Config):
        if f.name in config.SECTIONS:
            for sf in dataclasses.fields(config.SECTIONS[f.name]):
                out.append((f.name, sf.name, sf.type))
        else:
            out.append(("", f.name, f.type))
    return out


@pytest.mark.parametrize(("section", "key", "kind"), _all_keys())
def test_every_wrong_type_names_its_key(section: str, key: str, kind: Any) -> None:
    value = _wrong_value(kind)
    data: dict[str, Any] = {section: {key: value}} if section else {key: value}
    dotted = f"{section}.{key}" if section else key
    with pytest.raises(ConfigError) as info:
        config.from_dict(data)
    assert info.value.key == dotted
    assert dotted in str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("colour = 'blue'", "colour"),
        ("[mount]\nbogus = 1", "mount.bogus"),
        ("[nosuchsection]\nx = 1", "nosuchsection"),
        ("mount = 'local'", "mount"),
        ("[guard]\nenabled = 'yes'", "guard.enabled"),
        ("[mount]\nprobe_interval_s = 'fast'", "mount.probe_interval_s"),
        ("[mount]\nprobe_interval_s = true", "mount.probe_interval_s"),
        ("[mount]\nstalled_remount_after = 1.5", "mount.stalled_remount_after"),
        ("rack = 'My Rack'", "rack"),
        ('rack = "r1\\n"', "rack"),  # `$` would accept a trailing newline
        ("mount_point = 'volumes'", "mount_point"),
        ("mount_point = '/'", "mount_point"),
        ("mount_point = '/.'", "mount_point"),
        ("mount_point = '/srv/../volumes'", "mount_point"),
        ("state_dir = 'rel'", "state_dir"),
        ("log_level = 'loud'", "log_level"),
        ("[mount]\ntype = 'ceph'", "mount.type"),
        ("[mount]\nfile_system_id = 'efs-1'", "mount.file_system_id"),
        ("[mount]\ndiscover_tag = 'novalue'", "mount.discover_tag"),
        ("[mount]\ntype = 'nfs'", "mount.source"),
        ("[mount]\nsource = 'nocolon'", "mount.source"),
        ("[mount]\nlocal_path = 'x'", "mount.local_path"),
        ("[mount]\noptions = 'a, b'", "mount.options"),
        ("[mount]\nmount_program = ''", "mount.mount_program"),
        ("[mount]\nprobe_interval_s = 0", "mount.probe_interval_s"),
        ("[mount]\nprobe_timeout_s = 99999", "mount.probe_timeout_s"),
        ("[mount]\nstalled_remount_after = 0", "mount.stalled_remount_after"),
        ("[aws]\nimds_endpoint = '169.254.169.254'", "aws.imds_endpoint"),
        ("[aws]\nendpoint_url = 'ftp://x'", "aws.endpoint_url"),
        ("[docker]\nurl = '/var/run/docker.sock'", "docker.url"),
        ("[docker]\napp_label = ''", "docker.app_label"),
        ("[directories]\nowner = 'www-data'", "directories.owner"),
        ("[directories]\nmode = '755x'", "directories.mode"),
        ("[directories]\nmode = '4755'", "directories.mode"),
        ("[directories]\ntimeout_s = 0", "directories.timeout_s"),
        ("[api]\nsocket = 'volagent.sock'", "api.socket"),
        ("[api]\nmetrics_address = 'nope'", "api.metrics_address"),
        # bind() refuses these only when the daemon starts: check-config must say so first
        ("[api]\nmetrics_address = '0.0.0.0:99464'", "api.metrics_address"),
        ("[guard]\nplugin_socket = 'p.sock'", "guard.plugin_socket"),
        ("[guard]\nwhen_unhealthy = 'maybe'", "guard.when_unhealthy"),
        ("[guard]\nviolations = 'ignore'", "guard.violations"),
        ("[health]\nheartbeat_interval_s = 0", "health.heartbeat_interval_s"),
        ("[health]\nstale_after_s = 1", "health.stale_after_s"),
        ("[health]\nheartbeat_interval_s = nan", "health.heartbeat_interval_s"),
        ("[health]\nstale_after_s = 100000", "health.stale_after_s"),
        ("[health]\nforget_after_s = 1e9", "health.forget_after_s"),
        ("[health]\nunhealthy_after_s = inf", "health.unhealthy_after_s"),
        ("[health]\nunhealthy_after_s = -1", "health.unhealthy_after_s"),
    ],
)
def test_bad_value_names_its_key(tmp_path: Path, text: str, key: str) -> None:
    err = load_error(tmp_path, text)
    assert err.key == key
    assert str(err).startswith(f"{key}: "), str(err)
    assert err.problem


def test_unknown_key_says_unknown(tmp_path: Path) -> None:
    err = load_error(tmp_path, "[docker]\nsocket = 'x'")
    assert err.key == "docker.socket"
    assert "unknown" in err.problem


def test_values_are_typed_and_ints_widen_to_floats(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, "[mount]\nprobe_interval_s = 2\nprobe_timeout_s = 0.5"))
    assert cfg.mount.probe_interval_s == 2.0
    assert isinstance(cfg.mount.probe_interval_s, float)
    assert cfg.mount.probe_timeout_s == 0.5


def test_owner_and_mode_parse() -> None:
    cfg = config.from_dict({"directories": {"owner": "1000:2000", "mode": "0750"}})
    assert cfg.directories.owner_ids == values.Owner(1000, 2000)
    assert cfg.directories.mode_bits == 0o750
    assert values.parse_owner("33") == values.Owner(33, 33)


def test_not_toml_is_an_error(tmp_path: Path) -> None:
    err = load_error(tmp_path, "rack = [unclosed")
    assert "not valid TOML" in str(err)


def test_missing_named_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(str(tmp_path / "absent.toml"))


def test_config_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOLAGENT_CONFIG", raising=False)
    assert config.config_path() == config.DEFAULT_CONFIG_PATH
    monkeypatch.setenv("VOLAGENT_CONFIG", "/from/env.toml")
    assert config.config_path() == "/from/env.toml"
    assert config.config_path("/explicit.toml") == "/explicit.toml"
    path = write(tmp_path, "rack = 'fromenv'")
    monkeypatch.setenv("VOLAGENT_CONFIG", path)
    assert config.load().rack == "fromenv"


def test_imds_endpoint_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:1338")
    assert config.from_dict({}).aws.imds_endpoint == "http://127.0.0.1:1338"


def test_to_toml_round_trips(tmp_path: Path) -> None:
    cfg = config.from_dict(
        {
            "rack": "r1",
            "mount": {
                "type": "local",
                "local_path": '/srv/"quoted"\\dir\nwith a newline\ttab\x7f',
                "probe_timeout_s": 1,
            },
            "guard": {"enabled": True},
            "directories": {"owner": "5:6"},
        }
    )
    text = config.to_toml(cfg)
    assert config.from_dict(tomllib.loads(text)) == cfg
    assert config.load(write(tmp_path, text)) == cfg


@pytest.mark.parametrize("apps", [["Ci"], ["ci", ""], ["ci", 1], ["a" * 64]])
def test_privileged_apps_are_app_names(apps: list[Any]) -> None:
    with pytest.raises(ConfigError) as info:
        config.from_dict({"guard": {"privileged_apps": apps}})
    assert info.value.key == "guard.privileged_apps"


def test_privileged_apps_apply_live() -> None:
    assert "guard.privileged_apps" in config.keys_applying(config.LIVE)
    cfg = config.from_dict({"guard": {"privileged_apps": ["ci", "builder"]}})
    assert cfg.guard.privileged_apps == ("ci", "builder")


# Keys whose value is free text, or bounded only against other keys (in `validate`): every
# other str, int or float key declares its own check beside its default.
UNCHECKED = {"host_id", "mount.region"}


def _typed_keys() -> list[tuple[str, Any, Any]]:
    """(dotted key, resolved type, declared check) of every key but the sections."""
    out = []
    for key, f, _ in config.fields_of(Config()):
        owner = config.SECTIONS[key.split(".")[0]] if "." in key else Config
        out.append((key, typing.get_type_hints(owner)[f.name], f.metadata.get("check")))
    return out


def _refused_under(key: str, value: Any) -> bool:
    section, _, name = key.rpartition(".")
    data: dict[str, Any] = {section: {name: value}} if section else {name: value}
    try:
        config.from_dict(data)
    except ConfigError as exc:
        return exc.key == key
    return False


def test_every_key_of_a_scalar_type_declares_its_check() -> None:
    # a renamed or new key keeps a check only by declaring one; dropping one fails here
    unchecked = {
        key for key, kind, check in _typed_keys() if kind in (str, int, float) and not check
    }
    assert unchecked == UNCHECKED


@pytest.mark.parametrize(
    ("key", "kind"), [(k, t) for k, t, _ in _typed_keys() if t in (int, float)]
)
def test_every_number_is_bounded_and_refused_under_its_key(key: str, kind: Any) -> None:
    assert _refused_under(key, kind(-(10**9)))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("key", [k for k, t, _ in _typed_keys() if t is float])
def test_every_float_refuses_nan_and_infinities_under_its_key(key: str, value: float) -> None:
    # TOML has `nan`: every comparison with it is false, so "at least 0.1" and "longer than
    # heartbeat_interval_s" both let it through. Applied live, heartbeat_interval_s = nan
    # became an asyncio timeout of NaN, and the daemon's socket stopped answering about
    # 20 s later (`volagent status` exit 3 until the edit was undone); stale_after_s = nan
    # made no host ever stale, so `gc --delete` never refused for a dead host.
    assert _refused_under(key, value)


@pytest.mark.parametrize("key", [k for k, t, check in _typed_keys() if t is str and check])
def test_every_checked_string_refuses_a_bad_value_under_its_key(key: str) -> None:
    # one of these is wrong for every checked string key: not absolute, not a choice, not
    # the pattern, empty, or white space
    assert any(_refused_under(key, bad) for bad in ("!", "", " "))


@pytest.mark.parametrize(
    "key", [k for k, t, _ in _typed_keys() if isinstance(t, type) and issubclass(t, StrEnum)]
)
def test_every_closed_vocabulary_refuses_a_word_outside_it_under_its_key(key: str) -> None:
    assert _refused_under(key, "!") and _refused_under(key, "")


@pytest.mark.parametrize("spelt", ["/mnt/efs/.", "//mnt//efs/", "/mnt/./efs", "/mnt/efs/"])
def test_the_mount_point_has_one_spelling_however_the_config_spells_it(spelt: str) -> None:
    """Paths under it are cleaned as Docker cleans a bind's source and cut against it: hosts
    spelling it differently must name the same paths in the rack's registry."""
    assert config.from_dict({"mount_point": spelt}).mount_point == "/mnt/efs"
