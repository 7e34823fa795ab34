"""Pure parts of the shared mount: options, argv, targets from discovery, error mapping."""

from __future__ import annotations

import errno

from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from tests.unit.factories import make_state

from volagent.aws import discovery
from volagent.aws.discovery import Found
from volagent.config import DEFAULT_NFS_OPTIONS, from_dict
from volagent.errors import DiscoveryError, EfsUnavailable
from volagent.mount import probe, shared


def _found(dns: tuple[str, ...] = ("10.0.2.5",)) -> Found:
    return Found(
        region="us-east-1",
        availability_zone="us-east-1a",
        availability_zone_id="use1-az6",
        instance_id="i-1",
        file_system_id="fs-1",
        dns_name="fs-1.efs.us-east-1.amazonaws.com",
        dns_addresses=dns,
        mount_target_id="fsmt-1",
        mount_target_ip="10.0.2.9",
    )


def test_join_options_later_keys_win_and_order_is_kept() -> None:
    assert shared.join_options("a=1,b,c=3", "tls", "a=2") == "a=2,b,c=3,tls"
    assert shared.join_options("", "tls,") == "tls"


def test_nfs4_target_uses_the_dns_name_else_the_mount_target_ip() -> None:
    cfg = from_dict({"mount": {"type": "nfs4"}})
    by_name = shared.target_from_found("nfs4", cfg, _found())
    assert by_name.source == "fs-1.efs.us-east-1.amazonaws.com:/"
    assert by_name.options == DEFAULT_NFS_OPTIONS
    assert "10.0.2.9:/" in by_name.aliases
    by_ip = shared.target_from_found("nfs4", cfg, _found(dns=()))
    assert by_ip.source == "10.0.2.9:/"
    argv = shared.mount_argv(cfg, by_ip, "/volumes")
    assert argv == ["mount", "-t", "nfs4", "-o", DEFAULT_NFS_OPTIONS, "10.0.2.9:/", "/volumes"]


def test_efs_target_has_tls_and_the_ip_only_when_dns_fails() -> None:
    cfg = from_dict({"mount": {"type": "efs", "region": "us-east-1"}})
    with_dns = shared.target_from_found("efs", cfg, _found())
    assert with_dns.source == "fs-1:/"
    assert with_dns.options == f"{DEFAULT_NFS_OPTIONS},tls,region=us-east-1"
    without = shared.target_from_found("efs", cfg, _found(dns=()))
    assert "mounttargetip=10.0.2.9" in without.options.split(",")
    assert shared.EFS_TLS_TUNNEL in without.aliases


def test_dns_names_per_partition() -> None:
    assert discovery.efs_dns_name("fs-1", "eu-west-1") == "fs-1.efs.eu-west-1.amazonaws.com"
    assert discovery.efs_dns_name("fs-1", "cn-north-1") == "fs-1.efs.cn-north-1.amazonaws.com.cn"


def _client_error(code: str, op: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "nope"}}, op)


def test_api_errors_name_cause_and_fix() -> None:
    denied = discovery.api_error(
        _client_error("AccessDeniedException", "DescribeMountTargets"),
        "DescribeMountTargets",
        "us-east-1",
    )
    assert type(denied) is DiscoveryError
    assert "access denied" in str(denied)
    assert "elasticfilesystem:DescribeMountTargets" in denied.fix
    missing = discovery.api_error(
        _client_error("FileSystemNotFound", "DescribeFileSystems"), "DescribeFileSystems", "r"
    )
    assert isinstance(missing, EfsUnavailable)
    no_efs = discovery.api_error(
        EndpointConnectionError(endpoint_url="https://x"), "DescribeFileSystems", "xx-1"
    )
    assert isinstance(no_efs, EfsUnavailable) and "allow_local_fallback" in no_efs.fix
    creds = discovery.api_error(NoCredentialsError(), "DescribeFileSystems", "r")
    assert "instance profile" in creds.fix


def test_tcp_check_names_the_security_group() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        try:
            discovery.tcp_check("127.0.0.1", port, timeout=2)
        except DiscoveryError as exc:
            assert f"TCP port {port}" in str(exc) and "security group" in exc.fix
        else:
            raise AssertionError("a closed port passed the check")


def test_dead_mount_errors() -> None:
    assert probe.is_dead(OSError(errno.ENOTCONN, "x"))
    assert probe.is_dead(OSError(errno.ESTALE, "x"))
    assert not probe.is_dead(OSError(errno.ENOSPC, "x"))
    assert not probe.is_dead(TimeoutError())


def test_status_names_the_configured_filesystem_until_one_is_found() -> None:
    from volagent.mount.report import Reporter
    from volagent.mount.target import Target

    state = make_state(
        rack="r",
        mount_state=None,
        docker_state=None,
        mount={"type": "nfs", "source": "srv:/export"},
    )
    cfg = state.config
    report = Reporter(state, lambda: None, None)
    report.show(cfg, None)  # mounting: nothing found yet
    assert (state.mount.type, state.mount.source) == ("nfs", "srv:/export")
    report.show(cfg, Target(type="nfs4", source="fs-1.efs:/", file_system_id="fs-1"))
    report.show(cfg, None)  # the next attempt keeps what was found
    assert (state.mount.type, state.mount.source) == ("nfs4", "fs-1.efs:/")
    state = make_state(
        rack="r",
        mount_state=None,
        docker_state=None,
        mount={"type": "efs", "file_system_id": "fs-2"},
    )
    Reporter(state, lambda: None, None).show(state.config, None)
    assert (state.mount.type, state.mount.file_system_id) == ("efs", "fs-2")
