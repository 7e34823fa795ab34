"""What to mount: a `Target` says which filesystem belongs at the mount point and how to
recognise it in the mount table when it is already there."""

from __future__ import annotations

from dataclasses import dataclass, field

from volagent.config import Config
from volagent.mount.table import MountEntry
from volagent.vocabulary import MountState, MountType


@dataclass(frozen=True)
class Target:
    """One filesystem to mount. `type` is the mount type (local | efs | nfs4 | nfs) and
    `source` what the mount program gets (for local: the directory bind-mounted)."""

    type: MountType
    source: str
    options: str = ""
    file_system_id: str = ""
    # sources the mount table may show for this same filesystem (DNS name, mount target IP)
    aliases: frozenset[str] = field(default_factory=frozenset)
    # set when local_path stands in for an EFS that could not be had
    fallback: bool = False
    # how it was found, for the log and `volagent doctor` (region, az_id, mount target ...)
    details: tuple[tuple[str, str], ...] = ()

    @property
    def is_local(self) -> bool:
        return self.type == MountType.LOCAL

    @property
    def healthy_state(self) -> MountState:
        """The mount state reported while this target is mounted and answering."""
        return MountState.LOCAL if self.is_local else MountState.MOUNTED

    def matches_source(self, entry: MountEntry) -> bool:
        """Whether the mount table entry's source names this filesystem."""
        seen = normalise_source(entry.source)
        return seen == normalise_source(self.source) or seen in {
            normalise_source(a) for a in self.aliases
        }


def normalise_source(source: str) -> str:
    """`host:/` and `host:` and `host:/path/` compare equal to their plain forms."""
    host, sep, path = source.partition(":")
    if not sep:
        return source.rstrip("/") or "/"
    return f"{host.lower()}:{path.rstrip('/') or '/'}"


def local_target(cfg: Config, fallback: bool = False) -> Target:
    return Target(type=MountType.LOCAL, source=cfg.mount.local_path, fallback=fallback)
