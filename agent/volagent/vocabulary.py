"""The closed vocabularies the status document and the metrics share, as StrEnums: a value
is the string the JSON and the metric labels carry."""

from __future__ import annotations

from enum import StrEnum


class MountState(StrEnum):
    """The shared filesystem's mount, as `mount.state` of the status document and the
    `state` label of `volagent_mount_state`."""

    MOUNTED = "mounted"
    MOUNTING = "mounting"
    STALLED = "stalled"
    UNMOUNTED = "unmounted"
    LOCAL = "local"  # local disk in its place: healthy, but nothing is shared
    DISABLED = "disabled"


HEALTHY_MOUNT_STATES = frozenset({MountState.MOUNTED, MountState.LOCAL})


class MountType(StrEnum):
    """`[mount] type`, and the type of what is mounted as `mount.type`: AUTO is EFS where
    mount.efs exists, else NFS4 (the EFS by plain NFS, without TLS)."""

    AUTO, EFS, NFS4, NFS, LOCAL = "auto", "efs", "nfs4", "nfs", "local"


class WhenUnhealthy(StrEnum):
    """`[guard] when_unhealthy`: a create or start while the mount is unhealthy."""

    DENY, ALLOW = "deny", "allow"


class OnViolation(StrEnum):
    """`[guard] violations`: a bind that breaks the namespace rules."""

    DENY, WARN = "deny", "warn"


class OverQuota(StrEnum):
    """`[quotas] over_quota`: a new create of an app over its limit."""

    WARN, DENY = "warn", "deny"


class VolumeState(StrEnum):
    """A container's directory on the shared filesystem, as `containers[].volumes[].state`;
    LATE: the container started before its directory was ready."""

    READY, PENDING, LATE, VIOLATION, FAILED = "ready", "pending", "late", "violation", "failed"


PROBLEM_VOLUME_STATES = frozenset({VolumeState.LATE, VolumeState.VIOLATION, VolumeState.FAILED})
# a directory a running container may be using: an earlier walk of it is settled
SETTLED_VOLUME_STATES = frozenset({VolumeState.READY, VolumeState.LATE})


class DockerState(StrEnum):
    """The agent's connection to Docker's events, as `docker.state`."""

    CONNECTING, CONNECTED = "connecting", "connected"


class Verdict(StrEnum):
    """The agent's health, as `status` of the status document and of /healthz."""

    OK, DEGRADED, CRITICAL = "ok", "degraded", "critical"
