"""Issue 5 acceptance: `volagent doctor` against the test bed. Everything in order passes;
each failure shows its fix: a missing mount helper, unreachable instance metadata (a closed
loopback port), a closed 2049 on the mount target, an IAM action a moto policy denies, and
the start guard named in daemon.json but disabled in volagent.

The AWS checks run in-process so the filesystem's DNS name is looked up in the stand-in
table, never in the real DNS; the command line is run for a type nfs host (an address, no
lookups) to prove the output and the exit code.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.testbed import volagent_cli
from tests.testbed.aws import REGION, EfsWorld, Imds, NfsPorts, standin_resolver
from volagent.aws.discovery import efs_dns_name
from volagent.config import Config, from_dict
from volagent.ops.doctor import host_checks
from volagent.ops.doctor import run as doctor
from volagent.ops.doctor.result import FAIL, PASS, SKIP, WARN, CheckResult

pytestmark = [pytest.mark.docker]


@pytest.fixture
def helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Mount helpers are looked for here only; mount.nfs4 is installed."""
    d = tmp_path / "helpers"
    d.mkdir()
    (d / "mount.nfs4").write_text("#!/bin/sh\nexit 0\n")
    (d / "mount.nfs4").chmod(0o755)
    monkeypatch.setenv("PATH", f"{d}:/usr/bin:/bin")
    monkeypatch.setattr(host_checks, "_SBIN", ())
    return d


@pytest.fixture
def daemon_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "daemon.json"
    monkeypatch.setenv(host_checks.DAEMON_JSON_ENV, str(path))
    return path


def config(world: EfsWorld, imds_url: str, docker_url: str, fs_id: str, **guard: Any) -> Config:
    return from_dict(
        {
            "mount": {"type": "nfs4", "file_system_id": fs_id},
            "aws": {"imds_endpoint": imds_url, "endpoint_url": world.url},
            "docker": {"url": docker_url},
            "guard": guard,
        }
    )


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


@pytest.mark.usefixtures("helpers")
def test_everything_in_order_passes(
    efs_world: EfsWorld, imds: Imds, nfs_ports: NfsPorts, docker_url: str, daemon_json: Path
) -> None:
    fs_id = efs_world.file_system()
    efs_world.mount_target(fs_id, nfs_ports.open_ip)
    daemon_json.write_text(json.dumps({"authorization-plugins": ["volagent"]}))
    cfg = config(efs_world, imds.url, docker_url, fs_id, enabled=True)
    resolve = standin_resolver({efs_dns_name(fs_id, REGION): nfs_ports.open_ip})
    results = by_name(doctor.run_checks(cfg, resolve))
    assert {n: r.status for n, r in results.items()} == {
        "nfs client": PASS,
        "efs-utils": SKIP,  # type nfs4 does not use it
        "instance metadata": PASS,
        "aws permissions": PASS,
        "efs filesystem": PASS,
        "mount target": PASS,
        "dns": PASS,
        "tcp 2049": PASS,
        # Debian 12's Docker 20.10 still takes API versions below 1.24 (binds at start)
        "docker": WARN,
        "guard config": PASS,
        "privileged apps": PASS,
    }, "\n".join(f"{r.name}: {r.detail}" for r in results.values())
    assert nfs_ports.open_ip in results["tcp 2049"].detail
    assert "accepts API versions down to 1." in results["docker"].detail
    assert "1.24" in results["docker"].fix


def test_each_failure_shows_its_fix(
    efs_world: EfsWorld,
    nfs_ports: NfsPorts,
    docker_url: str,
    helpers: Path,
    daemon_json: Path,
) -> None:
    (helpers / "mount.nfs4").unlink()  # the NFS client is missing
    daemon_json.write_text(json.dumps({"authorization-plugins": ["volagent"]}))
    closed_imds = Imds()
    closed_imds.reserve()  # a loopback port nobody listens on
    fs_id = efs_world.file_system()
    cfg = config(efs_world, closed_imds.url, docker_url, fs_id, enabled=False)
    results = by_name(doctor.run_checks(cfg, standin_resolver({})))
    nfs = results["nfs client"]
    assert nfs.status == FAIL and ("nfs-common" in nfs.fix or "nfs-utils" in nfs.fix)
    meta = results["instance metadata"]
    assert meta.status == FAIL and "unreachable" in meta.detail and "IMDSv2" in meta.fix
    assert results["aws permissions"].status == SKIP  # no region without metadata
    guard = results["guard config"]
    assert guard.status == FAIL and "[guard] enabled = true" in guard.fix
    assert results["docker"].status == WARN  # answers; takes API versions below 1.24


@pytest.mark.usefixtures("helpers", "daemon_json")
def test_closed_2049_names_the_security_group_rule(
    efs_world: EfsWorld, imds: Imds, nfs_ports: NfsPorts, docker_url: str
) -> None:
    fs_id = efs_world.file_system()
    mt = efs_world.mount_target(fs_id, nfs_ports.closed_ip)
    cfg = config(efs_world, imds.url, docker_url, fs_id)
    results = by_name(doctor.run_checks(cfg, standin_resolver({})))
    assert results["mount target"].status == PASS
    assert results["dns"].status == "warn"  # falls back to the mount target's address
    tcp = results["tcp 2049"]
    assert tcp.status == FAIL
    assert nfs_ports.closed_ip in tcp.detail
    assert "inbound TCP 2049" in tcp.fix and mt in tcp.fix


@pytest.fixture
def iam_enforced(efs_world: EfsWorld) -> Iterator[EfsWorld]:
    """moto checks IAM policies from here on (INITIAL_NO_AUTH_ACTION_COUNT through its
    reset-auth endpoint); set back to never checking afterwards."""

    def reset_auth(value: bytes) -> None:
        req = urllib.request.Request(
            f"{efs_world.url}/moto-api/reset-auth",
            method="POST",
            data=value,
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    reset_auth(b"4")  # the four IAM calls that make the user below go unchecked
    try:
        yield efs_world
    finally:
        reset_auth(b"inf")


@pytest.mark.usefixtures("helpers", "daemon_json")
def test_a_denied_iam_action_is_named(
    iam_enforced: EfsWorld, imds: Imds, docker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    iam = boto3.client("iam", region_name=REGION, endpoint_url=iam_enforced.url)
    iam.create_user(UserName="instance-role")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": [
                    "elasticfilesystem:DescribeFileSystems",
                    "elasticfilesystem:DescribeMountTargets",
                ],
                "Resource": "*",
            }
        ],
    }
    arn = iam.create_policy(PolicyName="volagent", PolicyDocument=json.dumps(policy))
    iam.attach_user_policy(UserName="instance-role", PolicyArn=arn["Policy"]["Arn"])
    key = iam.create_access_key(UserName="instance-role")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    cfg = config(iam_enforced, imds.url, docker_url, "fs-0123abcd")
    perms = by_name(doctor.run_checks(cfg, standin_resolver({})))["aws permissions"]
    assert perms.status == FAIL
    assert "ec2:DescribeAvailabilityZones" in perms.detail
    assert "allow ec2:DescribeAvailabilityZones" in perms.fix
    assert "IAM role" in perms.fix


def test_the_command_prints_fixes_and_exits_1(
    nfs_ports: NfsPorts, docker_url: str, tmp_path: Path
) -> None:
    daemon_json = tmp_path / "daemon.json"
    daemon_json.write_text(json.dumps({"authorization-plugins": ["volagent"]}))
    cfg_path = tmp_path / "volagent.toml"
    cfg_path.write_text(
        "[mount]\n"
        'type = "nfs"\n'
        f'source = "{nfs_ports.closed_ip}:/export"\n'
        "[docker]\n"
        f'url = "{docker_url}"\n'
    )
    out = volagent_cli(
        ["--config", str(cfg_path), "doctor"],
        env={host_checks.DAEMON_JSON_ENV: str(daemon_json)},
    )
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("FAIL  tcp 2049") for line in lines), out.stdout
    assert any(line.startswith("FAIL  guard config") for line in lines), out.stdout
    assert any(line.startswith("WARN  docker") for line in lines), out.stdout
    assert sum(1 for line in lines if line.strip().startswith("fix:")) >= 2
    nfs_line = next(line for line in lines if "nfs client" in line)
    has_client = shutil.which("mount.nfs4", path="/sbin:/usr/sbin:/usr/local/sbin:/usr/bin")
    assert nfs_line.startswith("PASS" if has_client else "FAIL"), nfs_line
    assert "checks failed" in lines[-1]
