"""The format versions of the records hosts share: a record without `format` is of the first
(all 0.3.0 wrote); one of a newer minor format is read, the keys unknown here ignored; one of
a newer major format is refused naming its file, and a reader of many leaves it out instead
of failing on the rest."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from volagent import safedir
from volagent.errors import RecordError
from volagent.ops.gc import survey
from volagent.rack import heartbeat, trash

NEWER = {"format": "1.7", "added_in_1_7": {"any": ["thing"]}}


def put(directory: Path, name: str, record: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(record))


def test_heartbeats_of_a_newer_minor_format_are_read_of_a_newer_major_one_left_out(
    mp: Path,
) -> None:
    hosts = mp / ".volagent" / "hosts"
    beat = {"host": "first", "time": 1.0, "status": "ok", "registry": 1}
    put(hosts, "first", beat)
    put(hosts, "minor", {**beat, "host": "minor", **NEWER})
    put(hosts, "major", {**beat, "host": "major", "format": "2.0"})
    read = heartbeat.read_heartbeats(str(mp), os.stat(mp).st_dev)
    assert sorted((b.host, b.status) for b in read) == [("first", "ok"), ("minor", "ok")]
    with pytest.raises(RecordError, match=r"^hosts/major\.json: format 2\.0 is newer"):
        heartbeat.HostBeat.decode({**beat, "format": "2.0"}, "hosts/major.json")


def test_usage_records_of_a_newer_minor_format_count_of_a_newer_major_one_do_not(
    mp: Path,
) -> None:
    web = mp / ".volagent" / "usage" / "r1-web" / "web"
    use = {"namespace": "r1-web", "directory": "web", "containers": ["c"], "binds": []}
    put(web, "first", {**use, "host": "first", "time": 1.0})
    put(web, "minor", {**use, "host": "minor", "time": 3.0, **NEWER})
    put(web, "major", {**use, "host": "major", "time": 5.0, "format": "2.0"})
    root = safedir.open_shared_root(str(mp), os.stat(mp).st_dev)
    try:
        usage, count = survey.collect_usage(root)
    finally:
        os.close(root)
    assert usage == {("r1-web", "web"): (3.0, "minor")} and count == 2


def test_trash_records_of_a_newer_minor_format_are_read_of_a_newer_major_one_not(
    mp: Path,
) -> None:
    moved = {"state": trash.PURGING, "time": 1.0, "path": "/elsewhere"}
    put(mp / ".volagent" / "trash", "r1-a@20260101T000000Z", {**moved, **NEWER})
    put(mp / ".volagent" / "trash", "r1-b@20260101T000000Z", {**moved, "format": "2.0"})
    root = safedir.open_shared_root(str(mp), os.stat(mp).st_dev)
    try:
        fd = trash.open_trash(root, create=False)
        assert fd is not None
        try:
            found = [(e.entry.namespace, e.state, e.moved_at) for e in trash.entries(fd)]
        finally:
            os.close(fd)
    finally:
        os.close(root)
    assert found == [("r1-a", trash.PURGING, 1.0), ("r1-b", "unknown", None)]
