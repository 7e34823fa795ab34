"""Discovery of the rack's EFS filesystem: which filesystem, which mount target, which address.

The chain, each step a function of its own so `volagent doctor` can run them one by one:
  identity        region, AZ (name and ID) and instance id from IMDSv2 (`imds.Imds`);
  find_file_system  by `file_system_id`, or by `discover_tag` over all filesystems (paginated),
                  exactly one match;
  find_mount_target the available mount target in this instance's AZ ID;
  efs_dns_name / resolve_host  the filesystem's DNS name, else the mount target's IP;
  tcp_check       port 2049 open before mounting.
Every failure is a DiscoveryError carrying the cause and the fix (EfsUnavailable where EFS
cannot be had at all here). boto3 is imported only when the AWS APIs are called. Everything
here blocks: run it in a thread.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from volagent.aws.imds import Identity, Imds
from volagent.config import Config
from volagent.errors import DiscoveryError, EfsUnavailable

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_efs import EFSClient

NFS_PORT = 2049
TCP_TIMEOUT_S = 3.0
# the IAM action behind each API call, named in "access denied" errors
ACTIONS = {
    "DescribeFileSystems": "elasticfilesystem:DescribeFileSystems",
    "DescribeMountTargets": "elasticfilesystem:DescribeMountTargets",
    "DescribeAvailabilityZones": "ec2:DescribeAvailabilityZones",
}
_DENIED = ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation")
_BAD_CREDENTIALS = ("UnrecognizedClientException", "InvalidClientTokenId", "AuthFailure")
Resolver = Callable[[str], list[str]]


@dataclass(frozen=True)
class Found:
    """What discovery found: enough to mount, and to explain how it was chosen."""

    region: str
    availability_zone: str
    availability_zone_id: str
    instance_id: str
    file_system_id: str
    dns_name: str
    dns_addresses: tuple[str, ...]  # empty where the DNS name does not resolve
    mount_target_id: str
    mount_target_ip: str

    @property
    def address(self) -> str:
        """Where the mount will connect: the DNS name's address, else the mount target."""
        return self.dns_addresses[0] if self.dns_addresses else self.mount_target_ip

    @property
    def host(self) -> str:
        """The host to give the mount program."""
        return self.dns_name if self.dns_addresses else self.mount_target_ip


# --- the AWS APIs -----------------------------------------------------------------------
def clients(cfg: Config, region: str) -> tuple[EFSClient, EC2Client]:
    """EFS and EC2 clients for `region`, with short timeouts and the configured endpoints."""
    import boto3  # noqa: PLC0415 - lazily: 200 ms that only the daemon's discovery pays
    from botocore.config import Config as BotoConfig  # noqa: PLC0415

    session = boto3.session.Session(region_name=region)
    if cfg.aws.imds_endpoint and os.environ.get("AWS_EC2_METADATA_DISABLED", "") != "true":
        # the instance profile's credentials come from the same metadata service
        session._session.set_config_variable(  # botocore's documented config hook
            "ec2_metadata_service_endpoint", cfg.aws.imds_endpoint
        )
    boto_cfg = BotoConfig(
        connect_timeout=2, read_timeout=5, retries={"max_attempts": 3, "mode": "standard"}
    )
    endpoint = cfg.aws.endpoint_url or None
    efs = session.client("efs", endpoint_url=endpoint, config=boto_cfg)
    ec2 = session.client("ec2", endpoint_url=endpoint, config=boto_cfg)
    return efs, ec2


def api_error(exc: Exception, operation: str, region: str) -> DiscoveryError:
    """A botocore failure of `operation` as a DiscoveryError with its cause and fix."""
    from botocore import exceptions as bx  # noqa: PLC0415

    action = ACTIONS.get(operation, operation)
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code, message = str(err.get("Code", "")), str(err.get("Message", ""))
        if code in _DENIED or "AccessDenied" in code:
            return DiscoveryError(
                f"access denied: {operation} in {region} ({message or code})",
                f"allow {action} to this instance's IAM role",
            )
        if code in _BAD_CREDENTIALS:
            return DiscoveryError(
                f"AWS rejected the credentials for {operation} ({code})",
                "attach an instance profile, or fix the credentials volagent runs with",
            )
        if code == "FileSystemNotFound":
            return EfsUnavailable(
                f"filesystem not found in {region}: {message or code}",
                "check [mount] file_system_id and region",
            )
        return DiscoveryError(f"{operation} in {region} failed: {code}: {message}")
    if isinstance(exc, bx.NoCredentialsError):
        return DiscoveryError(
            "no AWS credentials for the EFS API",
            f"attach an instance profile allowing {ACTIONS['DescribeFileSystems']} and "
            f"{ACTIONS['DescribeMountTargets']}",
        )
    if isinstance(exc, bx.EndpointConnectionError | bx.UnknownEndpointError):
        return EfsUnavailable(
            f"cannot reach the EFS API in region {region} (no EFS there, or no route): {exc}",
            "use a region with EFS, allow HTTPS to the EFS endpoint (or add a VPC endpoint), "
            "or set allow_local_fallback = true",
        )
    return DiscoveryError(f"{operation} in {region} failed: {exc}")


def _pages(client: Any, operation: str, key: str, region: str, **kwargs: Any) -> Iterator[Any]:
    from botocore import xform_name  # noqa: PLC0415
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    try:
        for page in client.get_paginator(xform_name(operation)).paginate(**kwargs):
            yield from page.get(key, [])
    except (BotoCoreError, ClientError) as exc:
        raise api_error(exc, operation, region) from None


def find_file_system(
    efs: EFSClient, region: str, file_system_id: str = "", tag: str = ""
) -> dict[str, Any]:
    """The one filesystem named by id, or carrying the tag `Key=Value`."""
    if file_system_id:
        found = list(
            _pages(efs, "DescribeFileSystems", "FileSystems", region, FileSystemId=file_system_id)
        )
        if not found:
            raise EfsUnavailable(
                f"filesystem {file_system_id} not found in {region}",
                "check [mount] file_system_id and region",
            )
        fs: dict[str, Any] = dict(found[0])
    elif tag:
        key, _, value = tag.partition("=")
        matches = [
            dict(f)
            for f in _pages(efs, "DescribeFileSystems", "FileSystems", region)
            if any(t.get("Key") == key and t.get("Value") == value for t in f.get("Tags", []))
        ]
        if not matches:
            raise EfsUnavailable(
                f"no EFS filesystem tagged {tag} in {region}",
                f"tag the rack's filesystem {tag}, or set [mount] file_system_id",
            )
        if len(matches) > 1:
            ids = ", ".join(sorted(m["FileSystemId"] for m in matches))
            raise DiscoveryError(
                f"{len(matches)} filesystems tagged {tag} in {region} ({ids})",
                "set [mount] file_system_id to the right one, or make the tag unique",
            )
        fs = matches[0]
    else:
        raise EfsUnavailable(
            "no EFS filesystem configured",
            "set [mount] file_system_id or discover_tag (or type = local, or "
            "allow_local_fallback = true)",
        )
    if fs.get("LifeCycleState", "available") != "available":
        raise DiscoveryError(
            f"filesystem {fs['FileSystemId']} is {fs['LifeCycleState']}, not available",
            "wait for it to become available, or check it in the EFS console",
        )
    return fs


def availability_zone_id(ec2: EC2Client, region: str, zone_name: str) -> str:
    """Maps an AZ name (per-account) to its ID (the same in every account)."""
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    try:
        zones = ec2.describe_availability_zones(ZoneNames=[zone_name])["AvailabilityZones"]
    except (BotoCoreError, ClientError) as exc:
        raise api_error(exc, "DescribeAvailabilityZones", region) from None
    for z in zones:
        if z.get("ZoneName") == zone_name and z.get("ZoneId"):
            return str(z["ZoneId"])
    raise DiscoveryError(f"availability zone {zone_name} is unknown in {region}")


def find_mount_target(
    efs: EFSClient, region: str, file_system_id: str, zone_id: str, zone_name: str = ""
) -> dict[str, Any]:
    """The available mount target of the filesystem in this instance's AZ ID."""
    targets = list(
        _pages(efs, "DescribeMountTargets", "MountTargets", region, FileSystemId=file_system_id)
    )

    def in_zone(t: Any) -> bool:
        if t.get("AvailabilityZoneId"):
            return bool(t["AvailabilityZoneId"] == zone_id)
        return bool(zone_name) and t.get("AvailabilityZoneName") == zone_name

    here = [dict(t) for t in targets if in_zone(t)]
    available = [t for t in here if t.get("LifeCycleState") == "available"]
    if available:
        return available[0]
    if here:
        state = here[0].get("LifeCycleState")
        raise DiscoveryError(
            f"the mount target of {file_system_id} in {zone_id} is {state}, not available",
            "wait for it to become available",
        )
    zones = sorted({str(t.get("AvailabilityZoneId")) for t in targets})
    raise EfsUnavailable(
        f"no mount target of {file_system_id} in this instance's availability zone "
        f"{zone_id} ({zone_name or '?'}); it has mount targets in: {', '.join(zones) or 'none'}",
        f"create a mount target for {file_system_id} in a subnet of {zone_id}",
    )


# --- the network ------------------------------------------------------------------------
def efs_dns_name(file_system_id: str, region: str) -> str:
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{file_system_id}.efs.{region}.{suffix}"


def resolve_host(name: str) -> list[str]:
    """The IPv4 addresses of `name` from the system resolver; [] where it does not resolve."""
    try:
        infos = socket.getaddrinfo(name, NFS_PORT, socket.AF_INET, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def tcp_check(address: str, port: int = NFS_PORT, timeout: float = TCP_TIMEOUT_S) -> None:
    """Connects to address:port and closes; raises DiscoveryError naming the likely cause."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return
    except TimeoutError:
        reason = f"no answer within {timeout:g}s"
    except OSError as exc:
        reason = exc.strerror or str(exc)
    raise DiscoveryError(
        f"TCP port {port} of {address} is not reachable ({reason})",
        f"allow inbound TCP {port} from this instance in the mount target's security group "
        "(and check network ACLs)",
    )


# --- the whole chain ----------------------------------------------------------------------
def discover(
    cfg: Config, resolve: Resolver = resolve_host, identity: Identity | None = None
) -> Found:
    """Runs discovery for `cfg` end to end, TCP check included."""
    if identity is None:
        identity = Imds(cfg.aws.imds_endpoint).identity()
    region = cfg.mount.region or identity.region
    efs, ec2 = clients(cfg, region)
    fs = find_file_system(efs, region, cfg.mount.file_system_id, cfg.mount.discover_tag)
    fs_id = str(fs["FileSystemId"])
    zone_id = identity.availability_zone_id or availability_zone_id(
        ec2, region, identity.availability_zone
    )
    target = find_mount_target(efs, region, fs_id, zone_id, identity.availability_zone)
    dns_name = efs_dns_name(fs_id, region)
    found = Found(
        region=region,
        availability_zone=identity.availability_zone,
        availability_zone_id=zone_id,
        instance_id=identity.instance_id,
        file_system_id=fs_id,
        dns_name=dns_name,
        dns_addresses=tuple(resolve(dns_name)),
        mount_target_id=str(target.get("MountTargetId", "")),
        mount_target_ip=str(target.get("IpAddress", "")),
    )
    tcp_check(found.address)
    return found
