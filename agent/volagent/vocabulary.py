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
