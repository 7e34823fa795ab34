"""Which rack and app each namespace directory belongs to, recorded once on the shared
filesystem: `<mount point>/.volagent/namespaces/<namespace>.json`.

A namespace is `<rack>-<app>`, and rack and app names may both hold `-`: rack `r1` with app
`east-x` and rack `r1-east` with app `x` both name `r1-east-x`. A host knows only its own rack,
so when racks share one filesystem nothing in the name tells whose directory it is. The first
create or start the guard allows in a namespace records its (rack, app), published whole or
not at all (a hard link of a finished temporary file: the first host wins a race); every later
decision of any host compares its own pair with the record, and a different pair is refused
(rule 6: `<rack>-<app>` never maps two pairs to one directory). A namespace made before its
record existed belongs to the first pair a guard allowed in it since. These functions block:
call them through a TimedWorker.
"""

from __future__ import annotations

import time

from volagent import codec, safedir
from volagent.errors import RecordError
from volagent.rack import records

OWNERS_DIR = "namespaces"


class NamespaceOwner(codec.Record, frozen=True):
    """The record of one namespace's owner."""

    KIND = "namespace owner"
    namespace: str
    rack: str
    app: str
    host: str = ""  # the host whose guard recorded it
    time: float = 0.0  # when, epoch seconds


def owner_of(
    mount_point: str, dev: int | None, namespace: str, *, rack: str, app: str, host: str
) -> NamespaceOwner:
    """The namespace's recorded owner; recorded as (`rack`, `app`) when it has none yet."""
    file = records.file_name(namespace) + records.SUFFIX
    with safedir.closing(safedir.open_shared_root(mount_point, dev)) as root:
        # volagent's own directory, made once per rack: one lookup of the whole path
        owners = records.open_own_dir(root, (records.AGENT_DIR, OWNERS_DIR))
    with safedir.closing(owners):
        for _ in range(2):  # absent, then taken by another host meanwhile: read again
            raw = records.read_record(owners, file)
            if raw is not None:
                return NamespaceOwner.decode(raw, file)
            mine = NamespaceOwner(namespace, rack, app, host, time.time())
            if records.publish_json(owners, file, mine.encode()):
                return mine
    raise RecordError(f"{file}: taken, but not readable as a record of its owner")
