"""What the rack's registry of binds holds, read as gc reads it (under the namespace's lock),
for the integration tests that wait for a host's use of a directory to be known to gc: since
0.5 a new use's first usage record waits for the first refresh, the registry's entry
standing for it meanwhile."""

from __future__ import annotations

import os
import time

from volagent.rack import registry


def registered(mount_point: str, namespace: str) -> set[tuple[str, str]]:
    """(host, path below the mount point) of each entry of `namespace`."""
    root = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY)
    try:
        reg = registry.open_dir_at(root)
        if reg is None:
            return set()
        try:
            entries = registry.read_locked(reg, mount_point, namespace, time.monotonic() + 5)
        finally:
            os.close(reg)
    finally:
        os.close(root)
    return {(e.host, e.path) for e in entries}
