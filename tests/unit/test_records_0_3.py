"""Records written by 0.3.0, read by this release: a rack runs both during every AMI rollout.
The fixtures under tests/fixtures/records-0.3/ were written by 0.3.0's own code with
tests/fixtures/write_records.py (the mount point shown as `@MP@`), before the record formats
got their typed declarations."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from tests.unit.factories import make_state
from tests.unit.test_records_0_2 import apps_usage, lay_out, listed_and_restored

from volagent.codec import Record
from volagent.rack import heartbeat, trash
from volagent.rack.registry_task import Registry
from volagent.rack.usage import recorder
from volagent.state import VolumeRecord

FIXTURES = Path(__file__).parent.parent / "fixtures" / "records-0.3"
[TRASH_RECORD] = (FIXTURES / "trash").glob("*.json")
TRASH_ENTRY = TRASH_RECORD.name.removesuffix(".json")


def test_a_0_3_heartbeat_is_a_live_host_of_the_registry(mp: Path) -> None:
    lay_out(mp, FIXTURES)
    beats = heartbeat.read_heartbeats(str(mp), os.stat(mp).st_dev)
    [host] = heartbeat.rack_view(beats, stale_after_s=90, now=time.time())
    assert host["host"] == "host-old" and host["version"] == "0.3.0"
    assert host["registry"] is True and host["stale"] is False
    assert host["instance_id"] == "i-0123" and host["status"] == "ok"


async def test_a_0_3_usage_record_leaves_its_binds_to_the_registry(mp: Path) -> None:
    # a host of the registry registers its binds there: those in its usage record are for 0.2
    # hosts, and a claim does not judge them again
    lay_out(mp, FIXTURES)
    st = make_state(mp, host="host-new")
    vols = [VolumeRecord(host=f"{mp}/r1-web/web/lag/s1", container="/d", read_only=False)]

    reg = Registry(st)
    try:
        await reg.claim(vols, [object()], "c1", "")
    finally:
        reg.worker.close()
    assert vols[0].state != "violation", vols[0].error


def test_a_0_3_size_record_is_the_apps_usage(mp: Path) -> None:
    lay_out(mp, FIXTURES)
    web = apps_usage(mp)
    assert web["app"] == "web" and web["measured_by"] == "host-old"
    assert web["services"]["web"] == {"bytes": 12288, "inodes": 3}
    assert web["walking"] is False


def test_a_namespace_0_3_moved_to_the_trash_is_listed_and_restored(mp: Path) -> None:
    lay_out(mp, FIXTURES)
    listed_and_restored(mp, TRASH_ENTRY)


@pytest.mark.parametrize(
    ("files", "declared", "added"),
    [
        # 1.1 (0.3.3): the heartbeat says how long its host trusts its registry entries;
        # 1.2 (0.5): whether its host's gc reads the registry
        (
            "hosts/*.json",
            heartbeat.HostBeat,
            {
                "format": "1.2",
                "forget_after_s": 0.0,
                "alias_of": "",
                "gc_reads_registry": False,
            },
        ),
        ("usage/**/*.json", recorder.UsageRecord, {}),
        ("trash/*.json", trash.TrashRecord, {}),
    ],
)
def test_0_3_records_read_through_their_declarations_are_written_again_byte_for_byte(
    files: str, declared: type[Record], added: dict[str, object]
) -> None:
    # every key 0.3.0 wrote is declared, of the type it wrote, and written back as it was;
    # a newer minor format adds keys, with their defaults, and changes none
    found = sorted(FIXTURES.glob(files))
    assert found
    for path in found:
        text = path.read_text()
        record = declared.decode(json.loads(text), path.name)
        written = record.encode()
        assert {k: v for k, v in written.items() if k in added} == added
        kept = {k: v for k, v in written.items() if k not in added}
        assert json.dumps(kept, sort_keys=True) == text
