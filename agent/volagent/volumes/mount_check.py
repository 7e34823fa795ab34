"""After a container starts: did it get the directories volagent prepared, and nothing else
of the shared filesystem?

Docker follows symlinks in a bind source at every start, and starts containers by restart
policy (or after its own restart) without asking the start guard. So a directory swapped for
a symlink after it was judged would be mounted unseen. This check reads what the container's
processes actually see, `/proc/<pid>/mountinfo` (device and directory of the filesystem
behind each mount, from the kernel), and holds it against the prepared directories: every
prepared directory must be mounted as itself, and no other part of the shared filesystem
may be mounted at all (a local-driver bind volume, a VolumesFrom nobody could judge).

Reading mountinfo never touches the mounted filesystems, so a hung mount does not block it;
it still runs in the worker, like every other look at the host.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from volagent.mount.table import MountEntry, mount_at, read_table
from volagent.nesting import under
from volagent.volumes.locate import SharedFilesystem
from volagent.volumes.namespace import go_clean

# how a volume's error starts once this check found it wrong: it stays so (a later look at
# the container must not call it ready again) until the container is gone
MISMATCH = "the container's mount is not what volagent prepared"


@dataclass(frozen=True)
class Mismatch:
    """One way a container's mounts differ from what was prepared for it."""

    host: str  # the path under the mount point concerned
    container: str  # where in the container
    reason: str


def check_container(
    pid: int, mount_point: str, volumes: Sequence[tuple[str, str]]
) -> list[Mismatch]:
    """Blocking: the mismatches between `volumes` ((host path, container path) pairs that
    volagent prepared) and what process `pid` has mounted."""
    shared = SharedFilesystem(mount_point, read_table())
    if shared.mount is None:
        return []
    seen = read_table(f"/proc/{pid}/mountinfo")
    expected = {shared.inner(host): (host, ctr) for host, ctr in volumes}
    out: list[Mismatch] = []
    for inner, (host, ctr) in expected.items():
        at = mount_at(seen, go_clean(ctr)) if ctr.startswith("/") else None
        if at is not None and (at.dev != shared.mount.dev or at.root != inner):
            out.append(Mismatch(host, ctr, f"{ctr} shows {_describe(at, shared)}, not {host}"))
        elif at is None and not any(e.dev == shared.mount.dev and e.root == inner for e in seen):
            out.append(Mismatch(host, ctr, f"{host} is not mounted in the container"))
    for e in seen:
        if e.dev == shared.mount.dev and under(e.root, shared.dir) and e.root not in expected:
            host = shared.outer(e.root)
            out.append(
                Mismatch(
                    host,
                    e.mount_point,
                    f"{e.mount_point} shows {host} of the shared filesystem, which volagent "
                    "did not prepare for this container",
                )
            )
    return out


def _describe(entry: MountEntry, shared: SharedFilesystem) -> str:
    if shared.mount is not None and entry.dev == shared.mount.dev:
        return f"{shared.outer(entry.root)} of the shared filesystem"
    where = posixpath.join(entry.root, "")
    return f"{where} of another filesystem ({entry.fstype} {entry.source})"
