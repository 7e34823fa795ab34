"""`volagent doctor`, the checks of the way to the filesystem: instance metadata, the AWS
permissions discovery needs, the filesystem and its mount target in this zone, the DNS name,
and TCP 2049. They run the mount side's own discovery steps (aws/discovery.py) one by one,
so doctor sees exactly what the daemon would, and a step that needs an earlier one's answer
is skipped when that failed. Type nfs checks its server's name and port; type local needs
none of this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from volagent.aws import discovery
from volagent.aws.discovery import Resolver
from volagent.aws.imds import Identity, Imds
from volagent.config import Config
from volagent.errors import DiscoveryError
from volagent.ops.doctor.result import CheckResult
from volagent.vocabulary import MountType

IMDS_TIMEOUT_S = 2.0
ANY_FIX = "check [aws] endpoint_url, the network path to the AWS APIs and the credentials"


@dataclass
class Facts:
    """What the checks learnt so far, for the ones after them."""

    identity: Identity | None = None
    region: str = ""
    efs: Any = None
    ec2: Any = None
    zone_id: str = ""
    file_system_id: str = ""
    mount_target: dict[str, Any] | None = None
    address: str = ""


def run_checks(cfg: Config, resolve: Resolver = discovery.resolve_host) -> list[CheckResult]:
    kind = cfg.mount.type
    if kind == MountType.LOCAL:
        return [CheckResult.skip("aws", "mount type local uses no network filesystem")]
    if kind == MountType.NFS:
        return _nfs_server(cfg, resolve)
    facts = Facts()
    results = [check_imds(cfg, facts), check_permissions(cfg, facts)]
    results += [check_file_system(cfg, facts), check_mount_target(facts)]
    results += [check_dns(facts, resolve), check_tcp(facts)]
    return results


def _nfs_server(cfg: Config, resolve: Resolver) -> list[CheckResult]:
    host = cfg.mount.source.rpartition(":")[0].strip("[]")
    addresses = [host] if _is_ip(host) else resolve(host)
    if not addresses:
        return [
            CheckResult.failed(
                "dns", f"{host} (from [mount] source) does not resolve", "fix the name or DNS"
            ),
            CheckResult.skip("tcp 2049", "needs the server's address"),
        ]
    facts = Facts(address=addresses[0])
    dns = CheckResult.ok("dns", f"{host} is {addresses[0]}")
    return [dns, check_tcp(facts)]


def _is_ip(host: str) -> bool:
    import ipaddress  # noqa: PLC0415 - only for type nfs

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_imds(cfg: Config, facts: Facts) -> CheckResult:
    name = "instance metadata"
    try:
        facts.identity = Imds(cfg.aws.imds_endpoint, timeout=IMDS_TIMEOUT_S, attempts=2).identity()
    except DiscoveryError as exc:
        return CheckResult.failed(name, str(exc).split("; fix:")[0], exc.fix)
    ident = facts.identity
    facts.region = cfg.mount.region or ident.region
    zone = f"{ident.availability_zone} ({ident.availability_zone_id or 'zone id not offered'})"
    return CheckResult.ok(name, f"{ident.instance_id} in {zone} at {cfg.aws.imds_endpoint}")


def check_permissions(cfg: Config, facts: Facts) -> CheckResult:
    """Calls each API discovery uses; names every IAM action that is denied."""
    name = "aws permissions"
    facts.region = facts.region or cfg.mount.region
    if not facts.region:
        return CheckResult.skip(name, "needs the region: instance metadata or [mount] region")
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    facts.efs, facts.ec2 = discovery.clients(cfg, facts.region)
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("DescribeFileSystems", lambda: facts.efs.describe_file_systems(MaxItems=1)),
        (
            "DescribeMountTargets",
            # a filesystem id that cannot exist: allowed answers "not found", denied "denied"
            lambda: facts.efs.describe_mount_targets(
                FileSystemId=cfg.mount.file_system_id or "fs-00000000"
            ),
        ),
        ("DescribeAvailabilityZones", facts.ec2.describe_availability_zones),
    ]
    denied: list[str] = []
    problems: list[DiscoveryError] = []
    for operation, call in calls:
        try:
            call()
        except (BotoCoreError, ClientError) as exc:
            err = discovery.api_error(exc, operation, facts.region)
            if "access denied" in str(err):
                denied.append(discovery.ACTIONS[operation])
            elif not _not_found(exc):
                problems.append(err)
    if denied:
        others = f" (and {len(problems)} calls failed otherwise)" if problems else ""
        actions = ", ".join(denied)
        return CheckResult.failed(
            name,
            f"denied: {actions}{others}",
            f'allow {actions} (Resource "*") in the policy of this instance\'s IAM role',
        )
    if problems:
        first = problems[0]
        detail = str(first).split("; fix:")[0][:300]
        return CheckResult.failed(name, detail, first.fix or ANY_FIX)
    allowed = ", ".join(discovery.ACTIONS.values())
    return CheckResult.ok(name, f"allowed: {allowed} in {facts.region}")


def _not_found(exc: Exception) -> bool:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("FileSystemNotFound", "MountTargetNotFound")


def check_file_system(cfg: Config, facts: Facts) -> CheckResult:
    name = "efs filesystem"
    if facts.efs is None:
        return CheckResult.skip(name, "needs the AWS APIs (see above)")
    try:
        fs = discovery.find_file_system(
            facts.efs, facts.region, cfg.mount.file_system_id, cfg.mount.discover_tag
        )
    except DiscoveryError as exc:
        return CheckResult.failed(name, str(exc).split("; fix:")[0], exc.fix)
    facts.file_system_id = str(fs["FileSystemId"])
    how = f"tagged {cfg.mount.discover_tag}" if cfg.mount.discover_tag else "by id"
    return CheckResult.ok(name, f"{facts.file_system_id} ({how}) is available in {facts.region}")


def check_mount_target(facts: Facts) -> CheckResult:
    name = "mount target"
    if not facts.file_system_id or facts.identity is None:
        return CheckResult.skip(name, "needs the filesystem and this instance's zone")
    ident = facts.identity
    try:
        facts.zone_id = ident.availability_zone_id or discovery.availability_zone_id(
            facts.ec2, facts.region, ident.availability_zone
        )
        target = discovery.find_mount_target(
            facts.efs, facts.region, facts.file_system_id, facts.zone_id, ident.availability_zone
        )
    except DiscoveryError as exc:
        return CheckResult.failed(name, str(exc).split("; fix:")[0], exc.fix)
    facts.mount_target = target
    facts.address = str(target.get("IpAddress", ""))
    return CheckResult.ok(
        name, f"{target.get('MountTargetId')} at {facts.address} in {facts.zone_id}"
    )


def check_dns(facts: Facts, resolve: Resolver) -> CheckResult:
    name = "dns"
    if not facts.file_system_id or not facts.region:
        return CheckResult.skip(name, "needs the filesystem")
    dns_name = discovery.efs_dns_name(facts.file_system_id, facts.region)
    addresses = resolve(dns_name)
    if addresses:
        facts.address = addresses[0]
        return CheckResult.ok(name, f"{dns_name} is {', '.join(addresses)}")
    fallback = (
        f"; volagent mounts through the mount target {facts.address}" if facts.address else ""
    )
    return CheckResult.warning(
        name,
        f"{dns_name} does not resolve{fallback}",
        "enable DNS resolution and DNS hostnames on the VPC (enableDnsSupport, "
        "enableDnsHostnames) and use the Amazon-provided resolver",
    )


def check_tcp(facts: Facts) -> CheckResult:
    name = "tcp 2049"
    if not facts.address:
        return CheckResult.skip(name, "needs the mount target's address")
    try:
        discovery.tcp_check(facts.address)
    except DiscoveryError as exc:
        fix = exc.fix
        if facts.mount_target:
            fix = (
                f"allow inbound TCP 2049 from this instance (or its security group) in the "
                f"security group of mount target {facts.mount_target.get('MountTargetId')} "
                f"({facts.address}); check network ACLs too"
            )
        return CheckResult.failed(name, str(exc).split("; fix:")[0], fix)
    return CheckResult.ok(name, f"{facts.address}:2049 accepts connections")
