"""Records written by the previous release, read by this one: a rack runs both during every
AMI rollout. The fixtures under tests/fixtures/records-0.2/ were written by volagent 0.2's own
code (its heartbeat, usage-record and size-record writers, and its `gc --delete` for the
trash entry) on a scratch mount point, shown here as `@MP@`; laid out again they get this
test's mount point and, where the record is a sign of life, a fresh time. The 0.2 release's
heartbeats say version 0.1.0: that release never bumped its version."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tests.unit.factories import make_state

from volagent import safedir
from volagent.ops.gc import trashing
from volagent.rack import heartbeat, trash
from volagent.rack.usage import measure
from volagent.rack.usage.task import UsageWalker

FIXTURES = Path(__file__).parent.parent / "fixtures" / "records-0.2"
LIVE = ("hosts", "usage")  # records whose time says the host is alive
TRASH_ENTRY = "r1-old@20261204T174350Z"


def lay_out(mp: Path, fixtures: Path = FIXTURES) -> None:
    now = time.time()
    for src in sorted(fixtures.rglob("*.json")):
        rel = src.relative_to(fixtures)
        rec: dict[str, Any] = json.loads(src.read_text().replace("@MP@", str(mp)))
        if rel.parts[0] in LIVE:
            rec["time"] = now
        dst = mp / ".volagent" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(json.dumps(rec))


def test_a_0_2_heartbeat_is_a_live_host_that_takes_no_part_in_the_registry(mp: Path) -> None:
    lay_out(mp)
    beats = heartbeat.read_heartbeats(str(mp), os.stat(mp).st_dev)
    [host] = heartbeat.rack_view(beats, stale_after_s=90, now=time.time())
    assert host["host"] == "host-old" and host["version"] == "0.1.0"
    assert host["registry"] is False and host["stale"] is False
    assert host["instance_id"] == "i-0123" and host["status"] == "ok"


def apps_usage(mp: Path) -> dict[str, Any]:
    """The one app's usage as a new host shows it, from the size records found."""
    st = make_state(mp, host="host-new")

    async def no_hosts() -> list[dict[str, Any]]:
        return []

    walker = UsageWalker(st, no_hosts)
    try:
        root = safedir.open_shared_root(str(mp), os.stat(mp).st_dev)
        try:
            walker._figures = measure.read_sizes(root)
        finally:
            os.close(root)
        [web] = walker.view()
    finally:
        walker.worker.close()
    return dict(web)


def test_a_0_2_size_record_is_the_apps_usage(mp: Path) -> None:
    lay_out(mp)
    web = apps_usage(mp)
    assert web["app"] == "web" and web["measured_by"] == "host-old"
    assert web["services"]["web"] == {"bytes": 4096, "inodes": 3}
    assert web["walking"] is False


def listed_and_restored(mp: Path, entry_name: str = TRASH_ENTRY) -> None:
    """The trash entry laid out is listed as trashed and restored to its namespace."""
    (mp / ".volagent" / "trash" / entry_name / "web").mkdir(parents=True)
    root = safedir.open_shared_root(str(mp), os.stat(mp).st_dev)
    try:
        trash_fd = trash.open_trash(root, create=False)
        assert trash_fd is not None
        try:
            [entry] = list(trash.entries(trash_fd))
            assert entry.state == trash.TRASHED and entry.has_directory
            assert entry.moved_at is not None and entry.moved_at < time.time()
            assert trash.holding(trash_fd, "r1-old") is not None
        finally:
            os.close(trash_fd)
        trashing.restore(root, entry_name, str(mp))
    finally:
        os.close(root)
    assert (mp / "r1-old" / "web").is_dir()


def test_a_namespace_0_2_moved_to_the_trash_is_listed_and_restored(mp: Path) -> None:
    lay_out(mp)
    listed_and_restored(mp)
