"""What volagent mounted, remembered under `state_dir` so a restarted agent adopts its own mount.

The mount table does not always name a shared filesystem the way it was asked for (an
efs-utils tls mount shows `127.0.0.1:/`), and discovery may be impossible at restart
(instance metadata down). The record ties the mount table entry (mount id, device, source,
this boot) to the Target and the mount configuration it was made for: an entry that matches
it in every field is the mount volagent made, nothing else.

Blocking, on local disk: run through a worker.
"""

from __future__ import annotations

import json
import os
from typing import Any

from volagent.config import Config
from volagent.mount.table import MountEntry
from volagent.mount.target import Target
from volagent.vocabulary import MountType

RECORD_NAME = "mount.json"
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str:
    try:
        with open(BOOT_ID, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def fingerprint(cfg: Config) -> str:
    """The parts of the config that decide what gets mounted where."""
    return repr((os.path.normpath(cfg.mount_point), cfg.mount))


def _path(cfg: Config) -> str:
    return os.path.join(cfg.state_dir, RECORD_NAME)


def save(cfg: Config, mount_point: str, entry: MountEntry, target: Target) -> None:
    data = {
        "boot_id": boot_id(),
        "config": fingerprint(cfg),
        "mount_point": mount_point,
        "mount_id": entry.mount_id,
        "dev": entry.dev,
        "fstype": entry.fstype,
        "source_seen": entry.source,
        "target": {
            "type": target.type,
            "source": target.source,
            "options": target.options,
            "file_system_id": target.file_system_id,
            "aliases": sorted(target.aliases),
        },
    }
    path = _path(cfg)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def recorded_target(cfg: Config, mount_point: str, entry: MountEntry) -> Target | None:
    """The Target volagent mounted, if `entry` is that very mount under this config."""
    try:
        with open(_path(cfg), encoding="utf-8") as f:
            data: dict[str, Any] = json.load(f)
        same = (
            data["boot_id"] == boot_id() != ""
            and data["config"] == fingerprint(cfg)
            and data["mount_point"] == mount_point
            and data["mount_id"] == entry.mount_id
            and data["dev"] == entry.dev
            and data["fstype"] == entry.fstype
            and data["source_seen"] == entry.source
        )
        if not same:
            return None
        t = data["target"]
        return Target(
            type=MountType(t["type"]),
            source=str(t["source"]),
            options=str(t["options"]),
            file_system_id=str(t["file_system_id"]),
            aliases=frozenset(str(a) for a in t["aliases"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
