"""Usage records: one per directory in use and host, written at once for a new use, not
rewritten before REFRESH_S, never while the mount is unhealthy."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.unit.factories import make_state

from volagent.errors import RecordError
from volagent.rack.registry import Entry
from volagent.rack.registry_task import Registry
from volagent.rack.usage import recorder
from volagent.state import AgentState, ContainerRecord, VolumeRecord
from volagent.worker import TimedWorker


@pytest.fixture
def worker() -> Iterator[TimedWorker]:
    w = TimedWorker("test-usage")
    yield w
    w.close()


def add_container(st: AgentState, cid: str, *volumes: tuple[str, str]) -> None:
    vols = [VolumeRecord(host=h, container="/d", read_only=False, state=s) for h, s in volumes]
    st.upsert_container(
        ContainerRecord(id=cid, name=f"c-{cid}", rack="r1", app="a", service="web", volumes=vols)
    )


def test_key_of_takes_namespace_and_directory(mp: Path) -> None:
    assert recorder.key_of(str(mp), f"{mp}/r1-a/web/var/data") == ("r1-a", "web")
    assert recorder.key_of(str(mp), f"{mp}/r1-a/shared") == ("r1-a", "shared")
    assert recorder.key_of(str(mp), f"{mp}/r1-a") == ("r1-a", "")
    assert recorder.key_of(str(mp), f"{mp}/r1-a/.shared/db") == ("r1-a", ".shared")
    assert recorder.key_of(str(mp), f"/{mp}/r1-a/x/../web/d") == ("r1-a", "web")  # Docker's clean
    assert recorder.key_of(str(mp), f"{mp}/") == recorder.MOUNT_ROOT
    assert recorder.key_of(str(mp), f"{mp}/.volagent/hosts") is None
    assert recorder.key_of(str(mp), f"{mp}/.volagent") is None
    assert recorder.key_of(str(mp), "/elsewhere/r1-a/web") is None
    assert recorder.key_of(str(mp), f"{mp}-other/r1-a/web") is None


async def test_new_use_is_recorded_once_per_directory(mp: Path, worker: TimedWorker) -> None:
    st = make_state(mp)
    add_container(st, "1", (f"{mp}/r1-a/web/data", "ready"), (f"{mp}/r1-a/web/logs", "late"))
    add_container(st, "2", (f"{mp}/r1-a/worker/x", "pending"), (f"{mp}/r1-b/web/x", "violation"))
    rec = recorder.UsageRecorder(st, worker)
    assert await rec.record_due() == 3
    base = mp / ".volagent" / "usage"
    web = json.loads((base / "r1-a" / "web" / "host-a.json").read_text())
    assert web["host"] == "host-a"
    assert web["namespace"] == "r1-a"
    assert web["directory"] == "web"
    assert web["containers"] == ["c-1"]
    assert (base / "r1-a" / "worker" / "host-a.json").exists()
    # a bind in violation (violations = "warn" lets it through) still holds data in use
    assert (base / "r1-b" / "web" / "host-a.json").exists()
    # nothing due again before REFRESH_S
    assert await rec.record_due() == 0
    add_container(st, "3", (f"{mp}/r1-c/web/x", "ready"))
    assert await rec.record_due() == 1
    assert (
        st.metrics.registry.get_sample_value("volagent_usage_records_total", {"result": "written"})
        == 4
    )


async def test_every_bind_on_the_shared_filesystem_is_use_whoever_made_it(
    mp: Path, worker: TimedWorker
) -> None:
    """Dot directories, unlabeled containers (app ""), whole namespaces and the mount point
    itself are recorded; volagent's own directory never is."""
    st = make_state(mp)
    add_container(st, "1", (f"{mp}/r1-a/.shared/db", "ready"))
    st.upsert_container(
        ContainerRecord(
            id="2",
            name="",
            rack="",
            app="",
            service="",
            volumes=[
                VolumeRecord(host=f"{mp}/r1-u/cache", container="/c", read_only=False),
                VolumeRecord(host=f"{mp}/r1-w", container="/w", read_only=True),
                VolumeRecord(host=f"{mp}", container="/all", read_only=True),
                VolumeRecord(host=f"{mp}/.volagent/usage", container="/u", read_only=True),
            ],
        )
    )
    assert recorder.in_use(st) == {
        ("r1-a", ".shared"): ["c-1"],
        ("r1-u", "cache"): ["2"],
        ("r1-w", ""): ["2"],
        recorder.MOUNT_ROOT: ["2"],
    }
    assert await recorder.UsageRecorder(st, worker).record_due() == 4
    base = mp / ".volagent" / "usage"
    for rec in ("r1-a/.shared/host-a.json", "r1-u/cache/host-a.json", "r1-w/host-a.json"):
        assert (base / rec).is_file(), rec
    assert json.loads((base / "host-a.json").read_text())["containers"] == ["2"]


async def test_use_is_refreshed_after_refresh_interval(mp: Path, worker: TimedWorker) -> None:
    st = make_state(mp)
    add_container(st, "1", (f"{mp}/r1-a/web/data", "ready"))
    rec = recorder.UsageRecorder(st, worker)
    await rec.record_due()
    assert rec.due(time.monotonic()) == {}
    assert list(rec.due(time.monotonic() + recorder.REFRESH_S + 1)) == [("r1-a", "web")]


async def test_nothing_is_written_while_the_mount_is_unhealthy(
    mp: Path, worker: TimedWorker
) -> None:
    st = make_state(mp)
    add_container(st, "1", (f"{mp}/r1-a/web/data", "ready"))
    st.set_mount_state("unmounted")
    st.mount_dev = None
    assert await recorder.UsageRecorder(st, worker).record_due() == 0
    assert not (mp / ".volagent").exists()


async def test_a_failed_write_is_counted_and_retried_later(
    mp: Path, tmp_path: Path, worker: TimedWorker
) -> None:
    st = make_state(mp)
    add_container(st, "1", (f"{mp}/r1-a/web/data", "ready"))
    (mp / ".volagent").mkdir()
    (mp / ".volagent" / "usage").symlink_to(tmp_path)  # planted: never followed
    rec = recorder.UsageRecorder(st, worker)
    assert await rec.record_due() == 0
    assert (
        st.metrics.registry.get_sample_value("volagent_usage_records_total", {"result": "failed"})
        == 1
    )
    assert not (tmp_path / "r1-a").exists()
    (mp / ".volagent" / "usage").unlink()
    assert await rec.record_due() == 0  # backing off
    rec._retry_at = 0.0
    assert await rec.record_due() == 1


async def test_records_of_an_earlier_run_are_ended_once_the_containers_are_listed(
    mp: Path, worker: TimedWorker
) -> None:
    """A container removed while volagent was not running: the record its last run wrote
    says the directory is in use for ever, unless the next run ends it."""
    earlier = make_state(mp)
    add_container(earlier, "1", (f"{mp}/r1-a/web/data", "ready"), (f"{mp}/r1-b/web/x", "ready"))
    add_container(earlier, "2", (mp.as_posix(), "violation"))  # one binding the mount point
    assert await recorder.UsageRecorder(earlier, worker).record_due() == 3
    base = mp / ".volagent" / "usage"

    def listed(path: Path) -> list[str]:
        return list(json.loads(path.read_text())["containers"])

    # the next run: container 1 is still there, 2 went while volagent was down
    st = make_state(mp, listed=False)
    add_container(st, "1", (f"{mp}/r1-a/web/data", "ready"), (f"{mp}/r1-b/web/x", "ready"))
    rec = recorder.UsageRecorder(st, worker)
    await rec.record_due()
    assert listed(base / "host-a.json") == ["c-2"]  # not before Docker has been listed
    st.containers_listed.set()
    await rec.record_due()
    assert listed(base / "host-a.json") == []
    assert listed(base / "r1-a" / "web" / "host-a.json") == ["c-1"]
    assert listed(base / "r1-b" / "web" / "host-a.json") == ["c-1"]


@pytest.mark.parametrize("level", range(4))
def test_a_symlink_anywhere_on_an_existing_records_path_is_never_followed(
    mp: Path, tmp_path: Path, level: int
) -> None:
    # the records' directories are opened in one lookup of the whole path where they exist:
    # a symlink at any level of it, with the whole path behind it, is still refused
    parts = (".volagent", "usage", "r1-a", "web")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.joinpath(*parts[level + 1 :]).mkdir(parents=True)
    if level:
        mp.joinpath(*parts[:level]).mkdir(parents=True)
    mp.joinpath(*parts[: level + 1]).symlink_to(elsewhere)
    record = recorder.usage_record("host-a", ("r1-a", "web"), ["c"], time.time())
    with pytest.raises(RecordError, match=r"not a directory|cannot open"):
        recorder.write_usage(str(mp), os.stat(mp).st_dev, "host-a", [(("r1-a", "web"), record)])
    assert [p.name for p in elsewhere.rglob("*.json")] == []


@pytest.mark.mount
def test_a_mount_on_an_existing_records_path_is_refused(mp: Path) -> None:
    web = mp / ".volagent" / "usage" / "r1-a" / "web"
    web.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(web)], check=True)
    try:
        record = recorder.usage_record("host-a", ("r1-a", "web"), ["c"], time.time())
        with pytest.raises(RecordError, match="another filesystem"):
            recorder.write_usage(str(mp), os.stat(mp).st_dev, "host-a", [(("r1-a", "web"), record)])
        assert os.listdir(web) == []
    finally:
        subprocess.run(["umount", "-l", str(web)], check=False)


def test_a_directorys_first_record_makes_its_directory_below_an_existing_one(mp: Path) -> None:
    (mp / ".volagent" / "usage" / "r1-a").mkdir(parents=True)
    record = recorder.usage_record("host-a", ("r1-a", "web"), ["c"], time.time())
    assert recorder.write_usage(str(mp), os.stat(mp).st_dev, "host-a", [(("r1-a", "web"), record)])
    web = mp / ".volagent" / "usage" / "r1-a" / "web"
    assert json.loads((web / "host-a.json").read_text())["containers"] == ["c"]
    assert [p.name for p in web.iterdir()] == ["host-a.json"]  # no temporary file left


async def test_a_container_removed_while_its_record_is_written_gets_its_last_record(
    mp: Path, worker: TimedWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record listing a container was being written when the container went: the next
    pass writes the last record (no containers), rather than leaving the container listed
    for good, which holds its directories in use for gc and for other hosts."""
    st = make_state(mp)
    add_container(st, "1", (f"{mp}/r1-a/web/data", "ready"))
    write_usage = recorder.write_usage

    def removed_meanwhile(*args: Any, **kwargs: Any) -> Any:
        done = write_usage(*args, **kwargs)
        st.forget_container("1")  # Docker's destroy event, handled while the write ran
        return done

    monkeypatch.setattr(recorder, "write_usage", removed_meanwhile)
    rec = recorder.UsageRecorder(st, worker)
    assert await rec.record_due() == 1
    record = mp / ".volagent" / "usage" / "r1-a" / "web" / "host-a.json"
    assert json.loads(record.read_text())["containers"] == ["c-1"]
    monkeypatch.setattr(recorder, "write_usage", write_usage)
    assert await rec.record_due() == 1
    assert json.loads(record.read_text())["containers"] == []


def every_gc_reads_the_registry(st: AgentState) -> None:
    """What the heartbeat task judges from a rack view of 0.5 hosts alone."""
    st.gc_reads_registry_in = st.mount_epoch


async def test_a_first_use_the_registry_holds_is_recorded_at_the_first_refresh(
    mp: Path, worker: TimedWorker
) -> None:
    """Every host's gc counts the registry's entry meanwhile: the record would be a write
    round trip more in the container's first start. A use some volume of which is not
    ready (not claimed or walked), or one of the mount point itself (the registry holds no
    such bind), is recorded at once as before."""
    st = make_state(mp)
    every_gc_reads_the_registry(st)
    add_container(st, "1", (f"{mp}/r1-a/web/data", "ready"))
    add_container(st, "2", (f"{mp}/r1-a/worker/x", "ready"), (f"{mp}/r1-a/worker/y", "failed"))
    add_container(st, "3", (f"{mp}", "ready"))
    rec = recorder.UsageRecorder(st, worker)
    assert await rec.record_due() == 2
    base = mp / ".volagent" / "usage"
    assert not (base / "r1-a" / "web").exists()
    assert (base / "r1-a" / "worker" / "host-a.json").is_file()
    assert (base / "host-a.json").is_file()
    assert list(rec.due(time.monotonic() + recorder.REFRESH_S + 1)) == [
        ("r1-a", "web"),
        ("r1-a", "worker"),
        ("", ""),
    ]


async def test_a_deferred_use_that_ends_gets_its_last_record(mp: Path, worker: TimedWorker) -> None:
    st = make_state(mp)
    every_gc_reads_the_registry(st)
    add_container(st, "1", (f"{mp}/r1-a/web/data", "ready"))
    rec = recorder.UsageRecorder(st, worker)
    assert await rec.record_due() == 0
    st.forget_container("1")
    assert await rec.record_due() == 1
    last = json.loads((mp / ".volagent/usage/r1-a/web/host-a.json").read_text())
    assert last["containers"] == []
    assert await rec.record_due() == 0


async def test_deferred_first_records_are_due_once_a_host_may_run_an_older_gc(
    mp: Path, worker: TimedWorker
) -> None:
    """A host of 0.4 or before joined (a rollback): its gc judges by records and mtimes."""
    st = make_state(mp)
    every_gc_reads_the_registry(st)
    add_container(st, "1", (f"{mp}/r1-a/web/data", "ready"))
    rec = recorder.UsageRecorder(st, worker)
    assert await rec.record_due() == 0
    st.gc_reads_registry_in = None
    assert await rec.record_due() == 1
    assert (mp / ".volagent/usage/r1-a/web/host-a.json").is_file()


async def test_a_use_whose_end_the_keeper_recorded_gets_no_second_last_record(
    mp: Path, worker: TimedWorker
) -> None:
    """The registry's keeper records a use's end before it removes this host's entry of it
    (the entry kept it for gc until then): the recorder then writes none of its own."""
    st = make_state(mp)
    every_gc_reads_the_registry(st)
    add_container(st, "1", (f"{mp}/r1-a/web/data", "ready"))
    rec = recorder.UsageRecorder(st, worker)
    keeper = Registry(st)
    try:
        assert await keeper.sync() == 1  # the container's entry
        assert await rec.record_due() == 0  # its first record deferred
        st.forget_container("1")
        assert await keeper.sync() == 1  # the end recorded, then the entry removed
    finally:
        keeper.worker.close()
    record = mp / ".volagent" / "usage" / "r1-a" / "web" / "host-a.json"
    assert json.loads(record.read_text())["containers"] == []
    assert await rec.record_due() == 0
    assert rec.due(time.monotonic() + recorder.REFRESH_S + 1) == {}


def test_the_end_of_a_use_is_recorded_unless_a_record_came_since_or_it_is_in_the_trash(
    mp: Path,
) -> None:
    """Not in the trash: the entry of a create refused for it ends no use (and a record
    there would hold its purge)."""
    dev = os.stat(mp).st_dev
    now = time.time()
    (mp / ".volagent" / "trash" / "r1-a+jobs@20261206T000000Z").mkdir(parents=True)
    ended = [
        Entry("host-a", "c1", "", "r1-a/web/data", now - 60),
        Entry("host-a", "c2", "", "r1-a/api/x", now - 60),  # recorded since
        Entry("host-a", "request:ab", "", "r1-a/jobs/x", now - 1),  # refused: in the trash
    ]
    written = recorder.record_ends(
        str(mp), dev, "host-a", ended, {("r1-a", "web"): ["c-9"]},
        {("r1-a", "api"): now - 30}, now,
    )  # fmt: skip
    assert written == [("r1-a", "web")]
    base = mp / ".volagent" / "usage" / "r1-a"
    assert json.loads((base / "web" / "host-a.json").read_text())["containers"] == ["c-9"]
    assert not (base / "api").exists() and not (base / "jobs").exists()


def test_a_gone_hosts_uses_are_kept_at_their_time_never_earlier_than_its_records(
    mp: Path,
) -> None:
    dev = os.stat(mp).st_dev
    now = time.time()
    newer = recorder.usage_record("host-b", ("r1-a", "api"), ["c"], now - 10)
    recorder.write_usage(str(mp), dev, "host-b", [(("r1-a", "api"), newer)])
    recorder.keep_uses(
        str(mp), dev,
        [
            Entry("host-b", "c1", "", "r1-a/web/data", now - 600),
            Entry("host-b", "c1", "", "r1-a/web/other", now - 300),
            Entry("host-b", "c2", "", "r1-a/api/x", now - 600),
        ],
    )  # fmt: skip
    base = mp / ".volagent" / "usage" / "r1-a"
    web = json.loads((base / "web" / "host-b.json").read_text())
    assert web["time"] == pytest.approx(now - 300) and web["host"] == "host-b"
    assert json.loads((base / "api" / "host-b.json").read_text())["time"] == pytest.approx(now - 10)


async def test_the_end_of_part_of_a_use_leaves_the_last_record_to_the_recorder(
    mp: Path, worker: TimedWorker
) -> None:
    """Two containers use web (two paths, two entries), their first records deferred. One
    ends: the keeper records web still used by the other. The other ends, and the recorder's
    pass comes first: the keeper recorded no end of web's whole use, so the recorder writes
    the last record (the keeper's next pass then finds web recorded since its entry)."""
    st = make_state(mp)
    every_gc_reads_the_registry(st)
    add_container(st, "1", (f"{mp}/r1-a/web/x", "ready"))
    add_container(st, "2", (f"{mp}/r1-a/web/y", "ready"))
    rec = recorder.UsageRecorder(st, worker)
    keeper = Registry(st)
    try:
        assert await keeper.sync() == 1
        assert await rec.record_due() == 0  # deferred
        st.forget_container("1")
        assert await keeper.sync() == 1  # c-2 still uses web
        st.forget_container("2")
        assert await rec.record_due() == 1  # the recorder's pass first
    finally:
        keeper.worker.close()
    record = mp / ".volagent" / "usage" / "r1-a" / "web" / "host-a.json"
    assert json.loads(record.read_text())["containers"] == []


def test_a_gone_hosts_use_replaces_a_garbled_record_never_a_newer_versions(mp: Path) -> None:
    """A record no volagent reads keeps nothing for gc: the use is recorded over it. One of
    a newer format may say more than this version knows: it is left alone."""
    dev = os.stat(mp).st_dev
    now = time.time()
    base = mp / ".volagent" / "usage" / "r1-a"
    for d, doc in (("web", {"host": "host-b"}), ("api", {"format": "9.0", "time": 1})):
        (base / d).mkdir(parents=True)
        (base / d / "host-b.json").write_text(json.dumps(doc))
    ended = [Entry("host-b", "c1", "", f"r1-a/{d}/x", now) for d in ("web", "api")]
    recorder.keep_uses(str(mp), dev, ended)
    assert json.loads((base / "web" / "host-b.json").read_text())["time"] == pytest.approx(now)
    assert json.loads((base / "api" / "host-b.json").read_text())["format"] == "9.0"
