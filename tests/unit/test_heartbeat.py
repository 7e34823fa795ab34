"""Heartbeats on real directories: written atomically where the rack can read them, never
through a symlink, never while the mount is unhealthy; the rack view flags stale hosts and
answers its last list when the filesystem does not answer."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.unit.factories import make_state

from volagent.errors import MountUnhealthy, RecordError
from volagent.rack import records
from volagent.rack.heartbeat import (
    Heartbeat,
    HostBeat,
    rack_view,
    read_heartbeats,
    write_heartbeat,
)
from volagent.worker import TimedWorker

# beats often, and a host is stale soon: the tests wait in fractions of a second
FAST = {"heartbeat_interval_s": 0.2, "stale_after_s": 1.0}


@pytest.fixture
def worker() -> Iterator[TimedWorker]:
    w = TimedWorker("test-records")
    yield w
    w.close()


def hosts_dir(mp: Path) -> Path:
    return mp / ".volagent" / "hosts"


async def test_beat_writes_the_contract_fields(mp: Path, worker: TimedWorker) -> None:
    st = make_state(mp, health=FAST)
    assert await Heartbeat(st, worker).beat()
    rec = json.loads((hosts_dir(mp) / "host-a.json").read_text())
    assert rec["host"] == "host-a"
    assert rec["instance_id"] == "i-0123"
    assert rec["status"] == "ok"
    assert rec["version"]
    assert abs(rec["time"] - time.time()) < 3600
    assert rec["last_seen"].endswith("Z")
    assert [p.name for p in hosts_dir(mp).iterdir()] == ["host-a.json"]  # no temp file left
    assert (
        st.metrics.registry.get_sample_value("volagent_heartbeats_total", {"result": "written"})
        == 1
    )


async def test_no_heartbeat_while_the_mount_is_unhealthy(mp: Path, worker: TimedWorker) -> None:
    st = make_state(mp, health=FAST)
    st.set_mount_state("stalled")
    st.mount_dev = None
    assert not await Heartbeat(st, worker).beat()
    assert not (mp / ".volagent").exists()
    assert (
        st.metrics.registry.get_sample_value("volagent_heartbeats_total", {"result": "skipped"})
        == 1
    )


def test_write_refuses_another_device(mp: Path) -> None:
    rec = HostBeat("h", time.time())
    with pytest.raises(MountUnhealthy):
        write_heartbeat(str(mp), os.stat(mp).st_dev + 1, rec)
    assert not (mp / ".volagent").exists()


def test_a_symlinked_hosts_dir_is_never_followed(mp: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (mp / ".volagent").mkdir()
    (mp / ".volagent" / "hosts").symlink_to(elsewhere)
    with pytest.raises(RecordError):
        write_heartbeat(str(mp), os.stat(mp).st_dev, HostBeat("h", 1.0))
    assert list(elsewhere.iterdir()) == []


def test_a_symlink_planted_as_the_record_is_replaced_not_followed(mp: Path, tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("keep")
    hosts_dir(mp).mkdir(parents=True)
    (hosts_dir(mp) / "h.json").symlink_to(target)
    write_heartbeat(str(mp), os.stat(mp).st_dev, HostBeat("h", 1.0))
    assert target.read_text() == "keep"
    assert not (hosts_dir(mp) / "h.json").is_symlink()
    assert json.loads((hosts_dir(mp) / "h.json").read_text())["host"] == "h"


def test_host_names_become_safe_file_names(mp: Path) -> None:
    write_heartbeat(str(mp), os.stat(mp).st_dev, HostBeat("../x/y", 1.0))
    assert [p.name for p in hosts_dir(mp).iterdir()] == ["_x_y.json"]


async def test_renamed_host_removes_its_former_record_once_its_entries_bear_the_new_name(
    mp: Path, worker: TimedWorker
) -> None:
    """Other hosts forget the registry entries of a host without a heartbeat: the former
    name's stays until the registry's keeper has set this host's entries under the new one."""
    st = make_state(mp, host="ip-10-0-0-1", health=FAST)
    hb = Heartbeat(st, worker)
    await hb.beat()
    st.rename("i-0abc")  # the instance id became known
    await hb.beat()
    assert sorted(p.name for p in hosts_dir(mp).iterdir()) == ["i-0abc.json", "ip-10-0-0-1.json"]
    st.entries_named = "i-0abc"  # the keeper's whole pass under the new name
    await hb.beat()
    assert sorted(p.name for p in hosts_dir(mp).iterdir()) == ["i-0abc.json"]


def test_rack_view_flags_stale_hosts_and_skips_garbage(mp: Path) -> None:
    dev = os.stat(mp).st_dev
    now = time.time()
    write_heartbeat(str(mp), dev, HostBeat("fresh", now - 1, status="ok"))
    write_heartbeat(str(mp), dev, HostBeat("old", now - 100, status="ok"))
    (hosts_dir(mp) / "garbage.json").write_text("{not json")
    (hosts_dir(mp) / "list.json").write_text("[1, 2]")
    (hosts_dir(mp) / "notime.json").write_text('{"host": "x"}')
    os.mkfifo(hosts_dir(mp) / "fifo.json")  # must not block the reader
    view = rack_view(read_heartbeats(str(mp), dev), stale_after_s=30, now=now)
    assert [(h["host"], h["stale"]) for h in view] == [("fresh", False), ("old", True)]
    assert set(view[0]) >= {"host", "instance_id", "status", "version", "last_seen", "stale"}


async def test_hosts_lists_every_host_sharing_the_directory(mp: Path, worker: TimedWorker) -> None:
    a, b = make_state(mp, "host-a", health=FAST), make_state(mp, "host-b", health=FAST)

    await Heartbeat(b, worker).beat()
    hb = Heartbeat(a, worker)
    await hb.beat()
    view = await hb.hosts()
    assert [(h["host"], h["stale"]) for h in view] == [("host-a", False), ("host-b", False)]
    assert a.metrics.registry.get_sample_value("volagent_rack_hosts", {"freshness": "fresh"}) == 2


async def test_the_status_warns_of_a_live_host_that_takes_no_part_in_the_registry(
    mp: Path, worker: TimedWorker
) -> None:
    """Since 0.4 no claim reads a 0.2 host's binds: the status says so, naming the host, from
    the rack view the daemon reads anyway (the usage walk's pass, `status --rack`), and stops
    once the host is upgraded or gone."""
    st = make_state(mp, "host-a", health=FAST)
    hb = Heartbeat(st, worker)
    await hb.beat()
    old = {"host": "host-old", "time": time.time(), "version": "0.1.0", "status": "ok"}
    (hosts_dir(mp) / "host-old.json").write_text(json.dumps(old))
    await hb.hosts()
    [warning] = [w for w in st.warnings if "registry" in w]
    assert "host-old" in warning and "rule 7" in warning and "host-a" not in warning
    (hosts_dir(mp) / "host-old.json").unlink()
    await hb.hosts()
    assert not [w for w in st.warnings if "registry" in w]


async def test_a_host_that_stops_beating_turns_stale(mp: Path, worker: TimedWorker) -> None:
    a, b = make_state(mp, "host-a", health=FAST), make_state(mp, "host-b", health=FAST)

    await Heartbeat(b, worker).beat()
    hb = Heartbeat(a, worker)
    task = asyncio.create_task(hb.run())
    try:
        deadline = time.monotonic() + 30
        while True:
            view = await hb.hosts()
            if any(h["host"] == "host-b" and h["stale"] for h in view):
                break
            if time.monotonic() >= deadline:
                raise AssertionError("host-b never turned stale")
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    by_host = {h["host"]: h for h in view}
    assert by_host["host-b"]["stale"] is True
    assert by_host["host-a"]["stale"] is False


async def test_stopping_says_stopped(mp: Path, worker: TimedWorker) -> None:
    st = make_state(mp, health=FAST)

    hb = Heartbeat(st, worker)
    task = asyncio.create_task(hb.run())
    deadline = time.monotonic() + 30
    while not (hosts_dir(mp) / "host-a.json").exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert json.loads((hosts_dir(mp) / "host-a.json").read_text())["status"] == "stopped"


async def test_hosts_answers_the_last_list_when_reading_hangs(mp: Path) -> None:
    """A read stuck in the filesystem must not hold up the answer: the list read before is
    answered at once, and reads do not pile up behind the stuck one."""
    st = make_state(mp, health=FAST)
    worker = TimedWorker("test-hang", max_threads=4)

    hb = Heartbeat(st, worker)
    await hb.beat()
    await hb.hosts()  # one list read while the filesystem answered
    release = threading.Event()
    real_submit = worker.submit
    calls = 0

    def hung_submit(fn):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        # stuck until released: if hosts() waited for it, the test would never end
        return real_submit(lambda: (release.wait(), fn())[1])

    worker.submit = hung_submit  # type: ignore[method-assign]
    try:
        views = [await hb.hosts() for _ in range(5)]
    finally:
        release.set()
    view = views[-1]
    worker.close()
    assert [h["host"] for h in view] == ["host-a"]
    assert calls == 1  # one stuck read shared by every caller


def test_records_skip_temp_files_and_dirs(mp: Path) -> None:
    d = mp / "d"
    d.mkdir()
    (d / ".x.json.1.tmp").write_text('{"host": "tmp", "time": 1}')
    (d / "sub.json").mkdir()
    (d / "ok.json").write_text('{"host": "ok", "time": 1}')
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert [name for name, _ in records.read_records(fd)] == ["ok"]
    finally:
        os.close(fd)


def test_a_host_that_said_it_stopped_is_stale_at_once() -> None:
    now = time.time()
    beats = [
        HostBeat("a", now - 1, status="ok"),
        HostBeat("b", now - 1, status="stopped"),
    ]
    view = {h["host"]: h for h in rack_view(beats, stale_after_s=90, now=now)}
    assert view["a"]["stale"] is False
    assert view["b"]["stale"] is True and view["b"]["status"] == "stopped"


async def test_creates_leave_out_gc_marks_only_once_every_host_says_its_gc_reads_the_registry(
    mp: Path, worker: TimedWorker
) -> None:
    """A host on 0.4 or before may run a gc that judges by mtimes and usage records alone:
    while one has beaten within `forget_after_s`, creates keep marking; a former name of a
    0.5 host (an alias) is no such host; and what is judged holds for its mount only."""
    st = make_state(mp, "host-a", health=FAST)
    hb = Heartbeat(st, worker)
    await hb.beat()
    assert st.gc_reads_registry_in is None, "not judged before the rack view is read"
    await hb.hosts()
    assert st.gc_reads_registry_in == st.mount_epoch
    older = {"host": "host-old", "time": time.time(), "version": "0.4.0", "registry": 1}
    (hosts_dir(mp) / "host-old.json").write_text(json.dumps(older))
    alias = {**older, "host": "ip-10-0-0-9", "alias_of": "i-0abc"}
    (hosts_dir(mp) / "ip-10-0-0-9.json").write_text(json.dumps(alias))
    await hb.hosts()
    assert st.gc_reads_registry_in is None
    gone = {**older, "time": time.time() - st.config.health.forget_after_s - 60}
    (hosts_dir(mp) / "host-old.json").write_text(json.dumps(gone))
    await hb.hosts()
    assert st.gc_reads_registry_in == st.mount_epoch
    st.mount_epoch += 1  # the mount was lost: what is mounted next is judged afresh
    assert st.gc_reads_registry_in != st.mount_epoch


async def test_the_heartbeat_task_judges_the_rack_once_a_mount(
    mp: Path, worker: TimedWorker
) -> None:
    """The usage walk reads the rack view once a pass (an hour apart by default): the
    heartbeat task reads it once after each mount, not at every beat."""
    st = make_state(mp, "host-a", health=FAST)
    hb = Heartbeat(st, worker)
    await hb.beat()
    await hb._judge_once_a_mount()
    assert st.gc_reads_registry_in == st.mount_epoch
    read = hb._reading
    await hb._judge_once_a_mount()
    assert hb._reading is read, "no second read on the same mount"
    st.mount_epoch += 1  # lost and mounted again
    await hb._judge_once_a_mount()
    assert hb._reading is not read
    assert st.gc_reads_registry_in == st.mount_epoch


async def test_a_rack_view_that_did_not_answer_in_time_is_judged_at_the_next_beat(
    mp: Path, worker: TimedWorker
) -> None:
    """The first read after a mount can meet a slow filesystem: creates keep marking (safe)
    and the next beat reads again, rather than waiting for the usage walk's next pass."""
    st = make_state(mp, "host-a", health=FAST)
    hb = Heartbeat(st, worker)
    await hb.beat()
    slow = threading.Event()
    real = worker.submit

    def stalled(fn: Any, *args: Any, **kw: Any) -> Any:
        return real(lambda: (slow.wait(), fn())[1], *args, **kw)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(worker, "submit", stalled)
        patch.setattr(hb, "hosts", functools.partial(hb.hosts, timeout=0.05))
        await hb._judge_once_a_mount()
    assert st.gc_reads_registry_in is None
    slow.set()
    await hb._judge_once_a_mount()
    assert st.gc_reads_registry_in == st.mount_epoch
