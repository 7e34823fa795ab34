"""The start walk of a path this host's registry entries hold, on the kernel's NFS client, when
another host changed the path on the server after the create walk. Copied into the guest by
tests/vm/test_start_look.py and run there with the installed volagent's Python.

`CHANGE NS`: the directories `<NS>/web/data` made through host 2's mount (`/mnt/host2`, a
second NFS client of the export) as a service's data already on the filesystem; the create
walk of that path through host 1's mount (`/volumes`, the machine's agent's) and a file
written in it by host 1; then CHANGE through host 2:
- `symlink`: `data` renamed to `old` and a symlink to another app's directory put in its place
  (what root, or a container binding `<NS>/web`, which the registry refuses while host 1's
  entry holds the path, could do on another host);
- `rmleaf`: host 1's file and the directory `data` removed;
then the start's walk through host 1 as the preparer makes it within its time bound (`held`,
only looking) and what a bind of the path by path (as Docker's) made right after shows; then
the walk as a start after the bound makes it (opening each component). One JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from volagent.errors import NamespaceTrashed, NamespaceViolation
from volagent.values import Owner
from volagent.volumes import trashcheck
from volagent.volumes.directories import Identity

H1 = "/volumes"
H2 = "/mnt/host2"
OWNER = Owner(1234, 1234)
OTHER = "vmrack-b/web/secret"  # another app's directory


def bound(path: str, at: str) -> list[str]:
    """What a bind of `path` (by path, as Docker's) shows."""
    os.makedirs(at, exist_ok=True)
    subprocess.run(["mount", "--bind", path, at], check=True)
    try:
        return sorted(os.listdir(at))
    finally:
        subprocess.run(["umount", at], check=True)


def start(parts: tuple[str, ...], dev: int, known: Identity, held: bool) -> dict[str, object]:
    try:
        again = trashcheck.prepare_path(H1, parts, OWNER, 0o750, dev, known=known, held=held)
    except (NamespaceViolation, NamespaceTrashed) as exc:
        return {"start": f"refused: {exc}"}
    except OSError as exc:
        return {"start": f"error: {exc!r}"}
    return {
        "start": "allowed",
        "same_as_create": again.identity == known,
        "leaf_created": again.leaf_created,
    }


def main() -> None:
    change, ns = sys.argv[1:3]
    os.makedirs(f"{H1}/{OTHER}", exist_ok=True)
    with open(f"{H1}/{OTHER}/app-b-secret", "w") as f:
        f.write("b")
    parts = (ns, "web", "data")
    dev = os.stat(H1).st_dev
    os.makedirs(f"{H2}/{ns}/web/data")
    time.sleep(2)  # made a while before, on another host
    made = trashcheck.prepare_path(H1, parts, OWNER, 0o750, dev)
    with open(f"{H1}/{ns}/web/data/app-a-file", "w") as f:
        f.write("a")
    if change == "symlink":
        os.rename(f"{H2}/{ns}/web/data", f"{H2}/{ns}/web/old")
        os.symlink(f"{H1}/{OTHER}", f"{H2}/{ns}/web/data")
    elif change == "rmleaf":
        os.remove(f"{H2}/{ns}/web/data/app-a-file")
        os.rmdir(f"{H2}/{ns}/web/data")
    else:
        raise SystemExit(f"unknown change {change}")
    time.sleep(0.5)
    out: dict[str, object] = {"change": change, "ns": ns}
    held = start(parts, dev, made.identity, held=True)
    out["held"] = held
    if held["start"] == "allowed":
        out["bind_after_held"] = bound(f"{H1}/{ns}/web/data", f"/mnt/bind-{ns}")
    out["opened"] = start(parts, dev, made.identity, held=False)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
