"""The command line without a daemon: arguments, config handling, paths, import hygiene."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from volagent import __version__, cli, config
from volagent.errors import NamespaceViolation
from volagent.ops.gc import command as gc_command
from volagent.volumes.namespace import Bind, Identity, plan_bind


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "volagent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_fast_path_defaults_match_the_config_module() -> None:
    assert config.DEFAULT_CONFIG_PATH == cli.DEFAULT_CONFIG_PATH
    assert config.ApiConfig().socket == cli.DEFAULT_SOCKET


def test_status_socket_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOLAGENT_SOCKET", raising=False)
    monkeypatch.delenv("VOLAGENT_CONFIG", raising=False)
    cfg = tmp_path / "v.toml"
    cfg.write_text('rack = "r"\n[api]\nsocket = "/run/x/api.sock"\n')
    assert cli.status_socket(None, str(cfg)) == "/run/x/api.sock"
    monkeypatch.setenv("VOLAGENT_CONFIG", str(cfg))
    assert cli.status_socket(None, None) == "/run/x/api.sock"
    monkeypatch.setenv("VOLAGENT_SOCKET", "/env.sock")
    assert cli.status_socket(None, str(cfg)) == "/env.sock"
    assert cli.status_socket("/flag.sock", str(cfg)) == "/flag.sock"
    monkeypatch.delenv("VOLAGENT_SOCKET")
    cfg.write_text('rack = "r"\n[guard]\nplugin_socket = "/p.sock"\n')
    assert cli.status_socket(None, str(cfg)) == cli.DEFAULT_SOCKET
    cfg.write_text('rack = "r"\n')
    assert cli.status_socket(None, str(cfg)) == cli.DEFAULT_SOCKET


def test_status_socket_survives_a_broken_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "v.toml"
    cfg.write_text("[api]\nsocket = \n")
    assert cli.status_socket(None, str(cfg)) == cli.DEFAULT_SOCKET
    assert "is invalid" in capsys.readouterr().err
    assert cli.status_socket(None, str(tmp_path / "missing.toml")) == cli.DEFAULT_SOCKET
    assert "does not exist" in capsys.readouterr().err


def test_status_path_imports_no_heavy_module(tmp_path: Path) -> None:
    cfg = tmp_path / "v.toml"
    cfg.write_text('[api]\nsocket = "/nonexistent/volagent.sock"\n')
    probe = (
        "import sys\n"
        "from volagent import cli\n"
        "rc = cli.main(['status', '--config', sys.argv[1]])\n"
        "from volagent.api import client, render\n"  # the render path's modules count too
        "print(rc)\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(cfg)],
        # not measured for coverage: the measuring would bring in modules of its own
        env={k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rc, modules = out.stdout.splitlines()
    assert rc == "3"
    assert "/nonexistent/volagent.sock" in out.stderr
    loaded = set(modules.split())
    heavy = {
        "docker",
        "boto3",
        "botocore",
        "structlog",
        "prometheus_client",
        "asyncio",
        "volagent.config",
        "volagent.state",
        "dataclasses",
        "argparse",
        "json",
    }
    assert not heavy & loaded


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["status", "--json", "--rack"],
        ["--config", "/c.toml", "status", "-v", "--socket", "/s.sock"],
        ["status", "--socket=/s.sock", "--timeout", "0.5", "--config=/c.toml", "--verbose"],
        ["--config=/a.toml", "status", "--config", "/b.toml", "--json", "--json"],
        ["status", "--socket", ""],
    ],
)
def test_fast_status_arguments_match_argparse(argv: list[str]) -> None:
    fast = cli.parse_status_fast(argv)
    assert fast is not None
    slow = cli.build_parser().parse_args(argv)
    assert vars(fast) == vars(slow)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--version"],
        ["status", "-h"],
        ["status", "--js"],  # argparse's abbreviations are argparse's business
        ["status", "--socket"],
        ["status", "--socket", "--json"],
        ["status", "--timeout", "soon"],
        ["status", "--timeout", "nan"],  # a timeout it cannot use: argparse says why
        ["status", "--timeout=inf"],
        ["status", "--timeout", "0"],
        ["status", "extra"],
        ["--json", "status"],
        ["paths", "status"],
        ["status", "status"],
    ],
)
def test_unusual_status_arguments_go_to_argparse(argv: list[str]) -> None:
    assert cli.parse_status_fast(argv) is None


def test_colour_only_on_a_terminal_and_never_with_no_color(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert cli.use_color(Tty())
    assert not cli.use_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not cli.use_color(Tty())
    monkeypatch.setenv("NO_COLOR", "")
    monkeypatch.setenv("TERM", "dumb")
    assert not cli.use_color(Tty())


def test_version() -> None:
    out = _run("--version")
    assert (out.returncode, out.stdout.strip()) == (0, f"volagent {__version__}")


def test_check_config_prints_the_effective_config(tmp_path: Path) -> None:
    cfg = tmp_path / "v.toml"
    cfg.write_text('rack = "r1"\n[directories]\nowner = "1000:1000"\n')
    for args in (("check-config", "--config", str(cfg)), ("--config", str(cfg), "check-config")):
        out = _run(*args)
        assert out.returncode == 0, out.stderr
        parsed = tomllib.loads(out.stdout)
        assert parsed["rack"] == "r1"
        assert parsed["directories"]["owner"] == "1000:1000"
        assert config.from_dict(parsed) == config.load(str(cfg))


def test_check_config_names_the_bad_key(tmp_path: Path) -> None:
    cfg = tmp_path / "v.toml"
    cfg.write_text("[mount]\nprobe_interval_s = 'often'\n")
    out = _run("check-config", env={"VOLAGENT_CONFIG": str(cfg), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2
    assert "mount.probe_interval_s" in out.stderr
    assert str(cfg) in out.stderr
    assert out.stdout == ""


def test_check_config_refuses_a_metrics_port_beyond_65535(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `volagent run` with it died with a traceback (OverflowError: bind(): port must be
    # 0-65535), exit 1, after logging "stopped" with exit_code 0; check-config said it was fine
    cfg = tmp_path / "v.toml"
    cfg.write_text('[api]\nmetrics_address = "0.0.0.0:99464"\n')
    assert cli.main(["check-config", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "api.metrics_address" in err and "65535" in err


def test_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "v.toml"
    cfg.write_text('rack = "prod"\nmount_point = "/srv/vol"\n')
    argv = ["--config", str(cfg), "paths", "--app", "shop", "--service", "web"]
    assert cli.main([*argv, "/var/www/html", "/data/"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "/srv/vol/prod-shop/web/var/www/html",
        "/srv/vol/prod-shop/web/data",
    ]
    assert cli.main([*argv, "--rack", "other", "/d"]) == 0
    assert capsys.readouterr().out.strip() == "/srv/vol/other-shop/web/d"
    assert cli.main([*argv, "/ok", "/a/../../etc"]) == 2
    assert "'..'" in capsys.readouterr().err
    bad_app = ["--config", str(cfg), "paths", "--app", "Shop!", "--service", "web", "/d"]
    assert cli.main(bad_app) == 2
    assert "Shop!" in capsys.readouterr().err
    cfg.write_text("")
    assert cli.main(["--config", str(cfg), "paths", "--app", "a", "--service", "s", "/d"]) == 2
    assert "no rack" in capsys.readouterr().err


@pytest.mark.parametrize("container_path", ["/.volagent", "/data/.volagent-cache", "/" + "x" * 256])
def test_paths_refuses_what_the_guard_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], container_path: str
) -> None:
    """docs/CONTRACT.md (rule 5, volagent's note): "path components starting with `.volagent`
    are reserved ... and components longer than 255 bytes are refused". `volagent paths`
    printed such host paths with exit 0: an operator who wrote one into the app got a rule 5
    violation at the next deploy."""
    cfg = tmp_path / "v.toml"
    cfg.write_text('rack = "prod"\nmount_point = "/srv/vol"\n')
    argv = ["--config", str(cfg), "paths", "--app", "shop", "--service", "web", container_path]
    code = cli.main(argv)
    printed = capsys.readouterr().out.strip()
    if code == 0:
        # what the guard says of a bind of the printed path by that very service
        with pytest.raises(NamespaceViolation) as refused:
            plan_bind(
                "/srv/vol",
                Identity("prod", "shop", "web"),
                Bind(printed, "/d", False),
                (0, 0),
                0o755,
            )
        pytest.fail(f"paths printed {printed} (exit 0); the guard: {refused.value}")
    assert code == cli.EXIT_INVALID


def test_gc_arguments_parse() -> None:
    args = cli.build_parser().parse_args(["gc", "--older-than", "7", "--delete"])
    assert (args.older_than, args.delete) == (7.0, True)


def _gc(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`volagent gc ARGS` in a process of its own, with a config it could run on."""
    cfg = tmp_path / "v.toml"
    cfg.write_text(
        f'rack = "r1"\nmount_point = "{tmp_path}/mp"\nstate_dir = "{tmp_path}/state"\n'
        f'[api]\nsocket = "{tmp_path}/none.sock"\n'
    )
    (tmp_path / "mp").mkdir(exist_ok=True)
    return _run("--config", str(cfg), "gc", *args)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--older-than", "-5"], "--older-than -5: must be a positive number of days"),
        (["--older-than", "0"], "--older-than 0 goes with --purge only"),
        (["--older-than", "nan"], "--older-than nan: must be"),
        (["--older-than", "inf"], "--older-than inf: must be"),
        (["--purge", "--older-than", "1e308"], "--older-than 1e+308: must be"),
        (["--ignore-stale", "h2"], "--ignore-stale goes with --delete"),
    ],
)
def test_a_bad_gc_argument_is_a_usage_error(tmp_path: Path, args: list[str], problem: str) -> None:
    # docs/CONTRACT.md: a command line volagent cannot parse (a missing or bad value) prints
    # the usage and the error and exits 64, for every command. gc checked these itself and
    # exited 2; `--older-than inf` (or 1e308) was not checked at all: on a mounted
    # filesystem gc surveyed, then died in now_iso with OverflowError (exit 1).
    done = _gc(tmp_path, *args)
    assert done.returncode == 64 == cli.EXIT_USAGE, (done.returncode, done.stderr[-300:])
    assert done.stderr.startswith("usage: volagent gc"), done.stderr
    assert f"volagent gc: error: {problem}" in done.stderr, done.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["gc"],
        ["gc", "--older-than", "0.01", "--delete", "--ignore-stale", "h2"],
        ["gc", "--purge", "--older-than", "0"],
        ["gc", "--older-than", "36500"],
    ],
)
def test_gc_arguments_it_can_use_pass(argv: list[str]) -> None:
    assert gc_command.usage_problem(cli.build_parser().parse_args(argv)) is None


def test_gc_phases_are_one_at_a_time(capsys: pytest.CaptureFixture[str]) -> None:
    parse = cli.build_parser().parse_args
    args = parse(["gc", "--delete", "--ignore-stale", "h1", "h2", "--ignore-stale", "h3"])
    assert (args.delete, args.ignore_stale, args.restore, args.purge) == (
        True,
        ["h1", "h2", "h3"],
        None,
        False,
    )
    assert parse(["gc", "--restore", "r-a@20261129T193012Z"]).restore == "r-a@20261129T193012Z"
    args = parse(["gc", "--purge", "--older-than", "0"])
    assert (args.purge, args.older_than) == (True, 0.0)
    with pytest.raises(SystemExit):
        parse(["gc", "--delete", "--purge"])
    assert "not allowed with" in capsys.readouterr().err


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == cli.EXIT_USAGE
    assert "usage: volagent" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "--bogus"],
        ["status", "--timeout", "soon"],
        ["--config"],
        ["frobnicate"],
        ["paths", "--app", "a", "/d"],
        ["gc", "--delete", "--purge"],
    ],
)
def test_a_command_line_volagent_cannot_parse_exits_ex_usage_not_critical(
    argv: list[str],
) -> None:
    # 2 is `volagent status`'s "critical": a monitor running a mistyped status command must
    # not read it as the host's state
    out = _run(*argv)
    assert out.returncode == 64 == cli.EXIT_USAGE, out.stderr
    assert out.stderr.startswith("usage: volagent")
    assert "error:" in out.stderr


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "0", "1e10"])
def test_a_status_timeout_it_cannot_use_is_a_usage_error_not_degraded(
    tmp_path: Path, value: str
) -> None:
    # A monitor reads the exit code as the host's state (0 ok, 1 degraded, 2 critical, 3
    # unreachable). A negative, NaN or infinite timeout got past both parsers and died in
    # socket.settimeout with a traceback and exit 1: "degraded".
    out = _run("status", "--socket", str(tmp_path / "s.sock"), "--timeout", value)
    assert "Traceback" not in out.stderr, out.stderr[-600:]
    assert out.returncode == 64 == cli.EXIT_USAGE, out.stderr[-300:]
    assert out.stderr.startswith("usage: volagent") and "--timeout" in out.stderr


@pytest.mark.parametrize("command", ["run", "status", "check-config", "paths", "doctor", "gc"])
def test_every_command_explains_itself_with_examples(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    description, examples = cli.DESCRIPTIONS[command]
    assert " ".join(description.split()[:6]) in " ".join(text.split())
    assert "examples:" in text
    assert all(example in text for example in examples)
    assert all(example.startswith(("volagent ", "systemctl ")) for example in examples)
