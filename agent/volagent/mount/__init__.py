"""The mount side of volagent: what belongs at the mount point, mounting it, and watching it.

`MountManager` is what the daemon runs. `discovery` (with `imds`) finds the rack's EFS
filesystem, one function per step, for the daemon and `volagent doctor` alike; `shared` turns
that into the mount program's argv; `table` reads and watches the kernel's mount table;
`supervise` and `probe` keep watch; `kernel` and `underlay` hold the system calls (bind mount,
lazy unmount, the immutable flag of the directory under the mount point).
"""

from volagent.mount.manager import MountManager
from volagent.mount.table import find_mount

__all__ = ["MountManager", "find_mount"]
