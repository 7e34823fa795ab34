"""The error hierarchy: every failure volagent reports is one of these, with a message that
names the problem and, where there is one, the fix."""

from __future__ import annotations


class VolagentError(Exception):
    """Base of every error volagent raises on purpose."""


class ConfigError(VolagentError):
    """The configuration is invalid. `key` is the dotted key at fault (e.g. `mount.type`)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


class NamespaceViolation(VolagentError):
    """A bind breaks one of the directory rules; `rule` is the contract's rule number."""

    def __init__(self, rule: int, reason: str) -> None:
        super().__init__(f"rule {rule}: {reason}")
        self.rule = rule
        self.reason = reason


class TemporaryError(VolagentError):
    """Worth retrying: the world may change (a mount helper failing, Docker restarting)."""


class PermanentError(VolagentError):
    """Retrying will not help until an operator acts (a foreign filesystem at the mount point)."""


class FilesystemHung(TemporaryError):
    """A filesystem operation did not finish within its timeout: the mount is hung."""


class MountUnhealthy(TemporaryError):
    """Directory work was refused because the mount point is not the healthy shared filesystem."""


class DiscoveryError(TemporaryError):
    """The EFS filesystem, its mount target or the instance metadata could not be found.

    `fix` tells the operator what to change."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(f"{message}; fix: {fix}" if fix else message)
        self.fix = fix


class EfsUnavailable(DiscoveryError):
    """EFS cannot be had here (no EFS in the region, no such filesystem, no mount target in
    this zone). With `allow_local_fallback`, `local_path` stands in and the status says so."""


class MountError(TemporaryError):
    """The mount program failed; retried with backoff."""


class ForeignMount(PermanentError):
    """Another filesystem is mounted at the mount point: volagent never mounts on top of it."""


class RecordError(TemporaryError):
    """A record under `<mount point>/.volagent/` (heartbeat, usage) could not be written or
    read; the mount may be failing or someone planted something there."""


class NamespaceTrashed(VolagentError):
    """A bind reaches into a namespace that `volagent gc --delete` moved into the trash:
    nothing is created there until it is restored (`entry` names the trash entry)."""

    def __init__(self, entry: str, message: str) -> None:
        super().__init__(message)
        self.entry = entry
