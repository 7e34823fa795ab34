"""Shared filesystems (types efs, nfs4, nfs, auto): the Target to mount, and the mount program.

The mount program is always called with one argv, `PROG -t TYPE -o OPTS SOURCE MOUNT_POINT`,
as a subprocess with a timeout. Its output goes to a file, not a pipe: helpers such as
mount.efs leave daemons behind (stunnel, the watchdog) that would hold a pipe open for ever.
"""

from __future__ import annotations

import asyncio
import os
import shutil

from volagent.aws import discovery
from volagent.aws.discovery import Found, Resolver
from volagent.config import Config
from volagent.errors import DiscoveryError, MountError
from volagent.mount import child
from volagent.mount.target import Target
from volagent.vocabulary import MountType

EFS_HELPER = "mount.efs"
HELPER_DIRS = ("/sbin", "/usr/sbin", "/usr/local/sbin")
MOUNT_TIMEOUT_S = 120.0
DISCOVERY_TIMEOUT_S = 90.0
EFS_TLS_TUNNEL = "127.0.0.1:/"  # what the table shows for an efs-utils mount with tls


def efs_helper_present() -> bool:
    """Whether amazon-efs-utils' mount helper is installed."""
    if shutil.which(EFS_HELPER):
        return True
    return any(os.access(os.path.join(d, EFS_HELPER), os.X_OK) for d in HELPER_DIRS)


def effective_type(cfg: Config) -> MountType:
    """The mount type to use: `auto` is efs where mount.efs exists, else nfs4."""
    if cfg.mount.type == MountType.AUTO:
        return MountType.EFS if efs_helper_present() else MountType.NFS4
    return cfg.mount.type


def join_options(*parts: str) -> str:
    """Comma-joins option lists; a later `key=value` replaces an earlier one of the key."""
    merged: dict[str, str] = {}
    for part in parts:
        for opt in filter(None, part.split(",")):
            merged[opt.partition("=")[0]] = opt
    return ",".join(merged.values())


def target_from_found(kind: MountType, cfg: Config, found: Found) -> Target:
    """The Target for a discovered EFS filesystem, mounted as `kind` (efs or nfs4)."""
    aliases = {f"{found.dns_name}:/", f"{found.mount_target_ip}:/", f"{found.file_system_id}:/"}
    details = (
        ("region", found.region),
        ("availability_zone_id", found.availability_zone_id),
        ("mount_target", found.mount_target_id),
        ("address", found.address),
        ("dns_resolves", "yes" if found.dns_addresses else "no"),
    )
    source, options = f"{found.host}:/", cfg.mount.options
    if kind == MountType.EFS:
        extra = ["tls"]
        if not found.dns_addresses:
            extra.append(f"mounttargetip={found.mount_target_ip}")
        if cfg.mount.region:
            extra.append(f"region={found.region}")
        source, options = f"{found.file_system_id}:/", join_options(options, *extra)
        aliases.add(EFS_TLS_TUNNEL)
    return Target(
        type=kind,
        source=source,
        options=options,
        file_system_id=found.file_system_id,
        aliases=frozenset(aliases),
        details=details,
    )


async def discover_target(cfg: Config, resolve: Resolver = discovery.resolve_host) -> Target:
    """Finds what to mount for a shared type; raises DiscoveryError with cause and fix."""
    kind = effective_type(cfg)
    if kind == MountType.NFS:
        host = cfg.mount.source.rpartition(":")[0].strip("[]")
        async with asyncio.timeout(discovery.TCP_TIMEOUT_S + 5):
            await asyncio.to_thread(discovery.tcp_check, host)
        return Target(type=MountType.NFS, source=cfg.mount.source, options=cfg.mount.options)
    try:
        async with asyncio.timeout(DISCOVERY_TIMEOUT_S):
            found = await asyncio.to_thread(discovery.discover, cfg, resolve)
    except TimeoutError:
        raise DiscoveryError(
            f"discovery did not finish within {DISCOVERY_TIMEOUT_S:g}s",
            "check the network path to instance metadata and the EFS API",
        ) from None
    return target_from_found(kind, cfg, found)


def mount_argv(cfg: Config, target: Target, mount_point: str) -> list[str]:
    return [
        cfg.mount.mount_program,
        "-t",
        target.type,
        "-o",
        target.options,
        target.source,
        mount_point,
    ]


async def run_mount_program(
    cfg: Config, target: Target, mount_point: str, timeout: float = MOUNT_TIMEOUT_S
) -> None:
    """Runs the mount program; raises MountError with its output when it fails."""
    argv = mount_argv(cfg, target, mount_point)
    try:
        done = await child.run(argv, timeout)
    except OSError as exc:
        raise MountError(
            f"cannot run the mount program {argv[0]!r}: {exc.strerror}; fix: install "
            "nfs-common (or amazon-efs-utils for type efs), or set [mount] mount_program"
        ) from None
    except child.ChildHung as exc:
        raise MountError(str(exc)) from None
    if done.returncode != 0:
        raise MountError(f"{' '.join(argv)} failed (exit {done.returncode}): {_hint(done.output)}")


def _hint(output: str) -> str:
    text = " ".join(output.split())[-600:] or "no output"
    low = text.lower()
    if "helper program" in low or "wrong fs type" in low or "unknown filesystem type" in low:
        text += "; fix: install the NFS client (nfs-common / nfs-utils, or amazon-efs-utils)"
    return text
