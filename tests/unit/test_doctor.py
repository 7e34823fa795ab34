"""doctor's host checks on real files and programs: mount helpers found on PATH or not, the
distro's install command in the fix, daemon.json against [guard] enabled both ways, Docker
not answering, and the report's verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from volagent.config import Config, from_dict
from volagent.ops.doctor import host_checks
from volagent.ops.doctor.result import FAIL, PASS, SKIP, WARN, CheckResult, report


def cfg(**data: Any) -> Config:
    return from_dict(data)


@pytest.fixture
def helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory as the only place mount helpers are looked for."""
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", str(d))
    monkeypatch.setattr(host_checks, "_SBIN", ())
    return d


def install(d: Path, name: str) -> None:
    p = d / name
    p.write_text("#!/bin/sh\nexit 0\n")
    p.chmod(0o755)


def test_distro_family_from_os_release(tmp_path: Path) -> None:
    cases = {
        "ID=ubuntu\nID_LIKE=debian\n": "debian",
        'ID="amzn"\nID_LIKE="centos rhel fedora"\n': "amzn",
        "ID=rocky\nID_LIKE='rhel centos fedora'\n": "rhel",
        'ID=opensuse-leap\nID_LIKE="suse opensuse"\n': "suse",
        "ID=alpine\n": "",
    }
    for text, family in cases.items():
        (tmp_path / "os-release").write_text(text)
        assert host_checks.distro_family(str(tmp_path / "os-release")) == family, text
    assert host_checks.distro_family(str(tmp_path / "missing")) == ""


def test_missing_nfs_client_names_the_package(helpers: Path) -> None:
    r = host_checks.check_nfs_client(cfg(), "debian")
    assert r.status == FAIL
    assert "mount.nfs4" in r.detail
    assert r.fix == "apt-get install -y nfs-common"
    assert host_checks.check_nfs_client(cfg(), "amzn").fix == "yum install -y nfs-utils"
    unknown = host_checks.check_nfs_client(cfg(), "").fix
    assert "nfs-common" in unknown and "nfs-utils" in unknown
    install(helpers, "mount.nfs4")
    assert host_checks.check_nfs_client(cfg(), "debian").status == PASS
    assert host_checks.check_nfs_client(cfg(mount={"type": "local"}), "debian").status == SKIP


def test_efs_utils_fails_for_efs_and_warns_for_auto(helpers: Path) -> None:
    efs = host_checks.check_efs_utils(cfg(mount={"type": "efs"}), "amzn")
    assert efs.status == FAIL
    assert efs.fix == "yum install -y amazon-efs-utils"
    auto = host_checks.check_efs_utils(cfg(), "debian")
    assert auto.status == WARN
    assert "github.com/aws/efs-utils" in auto.fix
    assert host_checks.check_efs_utils(cfg(mount={"type": "nfs4"}), "debian").status == SKIP
    install(helpers, "mount.efs")
    assert host_checks.check_efs_utils(cfg(mount={"type": "efs"}), "amzn").status == PASS


def guard_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, daemon_json: Any, enabled: bool):  # type: ignore[no-untyped-def]
    path = tmp_path / "daemon.json"
    path.unlink(missing_ok=True)
    if daemon_json is not None:
        path.write_text(daemon_json if isinstance(daemon_json, str) else json.dumps(daemon_json))
    monkeypatch.setenv(host_checks.DAEMON_JSON_ENV, str(path))
    return host_checks.check_guard(cfg(guard={"enabled": enabled}))


def test_guard_in_daemon_json_but_disabled_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = guard_check(tmp_path, monkeypatch, {"authorization-plugins": ["volagent"]}, False)
    assert r.status == FAIL
    assert "[guard] enabled = true" in r.fix
    assert "remove 'volagent'" in r.fix


def test_guard_enabled_but_not_in_daemon_json_fails_with_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for content in (None, {"log-driver": "json-file"}):
        r = guard_check(tmp_path, monkeypatch, content, True)
        assert r.status == FAIL
        assert '"authorization-plugins": ["volagent"]' in r.fix


def test_guard_consistent_passes_and_broken_json_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on = guard_check(tmp_path, monkeypatch, {"authorization-plugins": ["volagent"]}, True)
    assert on.status == PASS
    assert guard_check(tmp_path, monkeypatch, None, False).status == PASS
    broken = guard_check(tmp_path, monkeypatch, "{not json", False)
    assert broken.status == FAIL and "JSON" in broken.fix


@pytest.mark.usefixtures("docker_py_failed_connects")
def test_docker_not_answering_fails_with_the_fix(tmp_path: Path) -> None:
    r = host_checks.check_docker(cfg(docker={"url": f"unix://{tmp_path}/none.sock"}))
    assert r.status == FAIL
    assert "systemctl" in r.fix and "[docker] url" in r.fix


def test_report_lists_fixes_and_the_verdict() -> None:
    text = report(
        [
            CheckResult.ok("nfs client", "/sbin/mount.nfs4"),
            CheckResult.failed("imds", "no answer", "allow the metadata service"),
            CheckResult.skip("dns", "needs imds"),
            CheckResult.warning("efs-utils", "missing", "install it"),
        ]
    )
    lines = text.splitlines()
    assert lines[0].startswith("PASS  nfs client")
    assert lines[1].startswith("FAIL  imds")
    assert lines[2].strip() == "fix: allow the metadata service"
    assert lines[-1] == "1 of 4 checks failed, 1 warned, 1 skipped"
    assert report([CheckResult.ok("a", "b")]).splitlines()[-1] == "no check failed (1 passed)"


def test_report_escapes_what_the_host_said() -> None:
    results = [CheckResult.failed("docker", "said \x1b[2J\rPASS", "see \x1b]0;x\x07")]
    text = report(results, color=False)
    assert "\x1b" not in text and "\r" not in text and "\x07" not in text
    assert "said \\x1b[2J\\rPASS" in text
    assert "fix: see \\x1b]0;x\\x07" in text


def test_doctor_json_is_the_report_for_a_program(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from volagent import cli

    config = tmp_path / "volagent.toml"
    config.write_text(
        '[mount]\ntype = "local"\n[aws]\nimds_endpoint = "http://127.0.0.1:9"\n'
        f'[docker]\nurl = "unix://{tmp_path}/none.sock"\n'
    )
    assert cli.main(["--config", str(config), "doctor"]) == 1
    text = capsys.readouterr().out
    assert cli.main(["--config", str(config), "doctor", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["failed"] >= 1
    # the same checks as the text report, each with its status, detail and fix
    marks = [line[:4] for line in text.splitlines() if line[:4] in {"PASS", "FAIL", "WARN", "SKIP"}]
    assert [c["status"].upper() for c in doc["checks"]] == marks
    assert all(f"  {c['name']}  " in text for c in doc["checks"])
    docker = next(c for c in doc["checks"] if c["name"] == "docker")
    assert docker["status"] == "fail" and "[docker] url" in docker["fix"]


def test_doctor_lists_the_apps_allowed_privilege() -> None:
    listed = host_checks.check_privileged_apps(
        cfg(guard={"enabled": True, "privileged_apps": ["ci", "builder"]})
    )
    assert listed.status == PASS and "ci, builder" in listed.detail
    none = host_checks.check_privileged_apps(cfg(guard={"enabled": True}))
    assert none.status == PASS and none.detail.startswith("none")
    assert host_checks.check_privileged_apps(cfg(guard={"enabled": False})).status == SKIP
