"""Issue 2 acceptance: an unknown key and a wrong type each make `volagent check-config` and
`volagent run` exit 2 with a message naming the key; a valid file prints the effective
config."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from tests.testbed import volagent_cli

BAD = [
    pytest.param("[mount]\nbogus = 1\n", "mount.bogus", id="unknown-key"),
    pytest.param("colour = 'blue'\n", "colour", id="unknown-top-level-key"),
    pytest.param('[mount]\nprobe_interval_s = "fast"\n', "mount.probe_interval_s", id="wrong-type"),
    pytest.param("[guard]\nenabled = 1\n", "guard.enabled", id="wrong-type-bool"),
]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "volagent.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(("text", "key"), BAD)
def test_check_config_exits_2_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    done = volagent_cli(["check-config", "--config", write(tmp_path, text)])
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert key in done.stderr + done.stdout


@pytest.mark.parametrize(("text", "key"), BAD)
def test_run_exits_2_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    # private paths, so that were it to get past the config it would touch nothing real,
    # and the missing socket shows it stopped before serving
    sock = tmp_path / "api.sock"
    private = (
        f'mount_point = "{tmp_path}/mp"\nstate_dir = "{tmp_path}/state"\n'
        f'{text}\n[api]\nsocket = "{sock}"\n'
    )
    path = write(tmp_path, private)
    done = volagent_cli(["--config", path, "run"], timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert key in done.stderr + done.stdout
    assert not sock.exists()


def test_config_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[docker]\nurl = 42\n")
    done = volagent_cli(["check-config"], env={"VOLAGENT_CONFIG": path})
    assert done.returncode == 2
    assert "docker.url" in done.stderr + done.stdout


def test_valid_config_prints_the_effective_config(tmp_path: Path) -> None:
    done = volagent_cli(["check-config", "--config", write(tmp_path, "rack = 'prod'\n")])
    assert done.returncode == 0, done.stderr
    effective = tomllib.loads(done.stdout)
    assert effective["rack"] == "prod"
    assert effective["mount_point"] == "/volumes"
    assert effective["mount"]["type"] == "auto"


def test_empty_config_is_valid(tmp_path: Path) -> None:
    done = volagent_cli(["check-config", "--config", write(tmp_path, "")])
    assert done.returncode == 0, done.stderr


def test_missing_config_named_explicitly_is_an_error(tmp_path: Path) -> None:
    done = volagent_cli(["check-config", "--config", os.path.join(tmp_path, "absent.toml")])
    assert done.returncode == 2
    assert "absent.toml" in done.stderr + done.stdout
