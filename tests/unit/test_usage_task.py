"""The usage walk's root task on real directories: a pass measures the namespaces this host
owns and leaves the others' to their owners, the figures become metrics, the `usage` of the
rack view and quota warnings, and `over_quota = "deny"` refuses new creates of that app."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.unit import factories
from tests.unit.changes import Changes, capturing_logs
from tests.unit.guard_requests import create

from volagent.config import ConfigError, from_dict
from volagent.guard.plugin import Guard
from volagent.rack import owners, quotas
from volagent.rack.usage import measure, share, task
from volagent.rack.usage.measure import Budget
from volagent.rack.usage.task import UsageWalker
from volagent.state import AgentState
from volagent.values import Size
from volagent.vocabulary import MountState
from volagent.volumes.preparer import Preparer
from volagent.worker import TimedWorker


def make_state(mp: Path, host: str = "host-a", guard: bool = False, **quota: Any) -> AgentState:
    """A state whose usage walk is not throttled, with `quota` as its [quotas] table."""
    return factories.make_state(
        mp, host, usage={"ops_per_second": 10000}, quotas=quota, guard={"enabled": guard}
    )


def fill(mp: Path, app: str, service: str, n_bytes: int) -> None:
    d = mp / f"r1-{app}" / service
    d.mkdir(parents=True, exist_ok=True)
    (d / "blob").write_bytes(os.urandom(n_bytes))


def samples(st: AgentState, name: str) -> dict[tuple[str, ...], float]:
    out = {}
    for family in text_string_to_metric_families(st.metrics.render().decode()):
        for s in family.samples:
            if s.name == name:
                out[tuple(s.labels.values())] = s.value
    return out


def walker(st: AgentState, hosts: list[str]) -> UsageWalker:
    async def view() -> list[dict[str, Any]]:
        return [{"host": h, "stale": False} for h in hosts]

    return UsageWalker(st, view)


async def test_a_pass_measures_every_app_and_exports_it(mp: Path) -> None:
    fill(mp, "shop", "web", 200_000)
    fill(mp, "blog", "db", 50_000)
    st = make_state(mp, default="100KiB")
    w = walker(st, ["host-a"])
    assert await w.one_pass() == 2
    by = samples(st, "volagent_namespace_bytes")
    assert by[("shop", "web")] >= 200_000 and by[("shop", "")] > by[("shop", "web")]
    assert samples(st, "volagent_namespace_inodes")[("blog", "")] == 3
    assert samples(st, "volagent_namespace_over_quota") == {("shop",): 1.0, ("blog",): 0.0}
    assert samples(st, "volagent_namespace_quota_bytes")[("shop",)] == 100 * 1024
    assert samples(st, "volagent_usage_walk_operations_total")[()] > 0
    assert st.verdict() == "degraded" and any("shop" in w for w in st.warnings)
    view = w.view()
    assert [u["app"] for u in view] == ["shop", "blog"]
    assert view[0]["over_quota"] and view[0]["quota_bytes"] == 102400
    assert view[0]["services"]["web"]["bytes"] >= 200_000 and view[0]["measured_by"] == "host-a"


async def test_the_first_pass_runs_once_the_mount_settles_not_an_interval_later(mp: Path) -> None:
    """After a daemon start the mount is still being mounted when the walk's root task first
    looks, as at every boot. The first pass waited a whole `[usage] interval_s` (an hour by
    default) because the mount settled a moment after the task started."""
    fill(mp, "shop", "web", 100_000)
    # as at start: the mount not looked at yet; the default interval
    st = factories.make_state(mp, mount_state=None, usage={"ops_per_second": 10000})
    w = walker(st, ["host-a"])
    changes, logs = Changes(), []
    changes.bind()
    with capturing_logs(logs, changes):
        running = asyncio.create_task(w.run())
        changes.watch(running)
        try:
            await asyncio.sleep(0)  # the task's first look: nothing to walk yet
            assert not w.view()
            # the mount task mounts a moment later
            st.set_mount_state(MountState.MOUNTED)
            st.mount_dev = os.stat(mp).st_dev
            await changes.until(lambda: bool(w.view()), "a pass once the mount is healthy")
            assert [u["app"] for u in w.view()] == ["shop"]
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)


async def test_hosts_walk_only_their_share_and_read_the_others(mp: Path) -> None:
    apps = [f"app{i}" for i in range(12)]
    for app in apps:
        fill(mp, app, "s", 1000)
    a, b = make_state(mp, "host-a"), make_state(mp, "host-b")
    wa, wb = walker(a, ["host-a", "host-b"]), walker(b, ["host-a", "host-b"])
    done_a = await wa.one_pass()
    done_b = await wb.one_pass()
    owners = [share.owner(["host-a", "host-b"], f"r1-{app}") for app in apps]
    assert done_a == owners.count("host-a") and done_b == owners.count("host-b")
    await wa.refresh()
    assert {u["app"] for u in wa.view()} == set(apps)
    assert {u["measured_by"] for u in wa.view()} == {"host-a", "host-b"}


async def test_hosts_of_another_rack_on_the_filesystem_neither_share_nor_forget(mp: Path) -> None:
    fill(mp, "shop", "web", 1000)
    mine = make_state(mp, "host-a")
    other = make_state(mp, "other")  # would win r1-shop if it counted
    other.config = from_dict({**_config(mp), "rack": "r2"})

    async def view() -> list[dict[str, Any]]:
        return [{"host": "host-a", "rack": "r1"}, {"host": "other", "rack": "r2"}]

    assert await UsageWalker(mine, view).one_pass() == 1  # "other" is of r2
    await UsageWalker(other, view).one_pass()  # r2 has no namespace: nothing to forget
    assert "r1-shop" in measure.read_sizes(_root(mp))


async def test_a_removed_namespace_loses_its_figures(mp: Path) -> None:
    fill(mp, "shop", "web", 1000)
    st = make_state(mp)
    w = walker(st, ["host-a"])
    await w.one_pass()
    (mp / "r1-shop" / "web" / "blob").unlink()
    for d in (mp / "r1-shop" / "web", mp / "r1-shop"):
        d.rmdir()
    await w.one_pass()
    await w.refresh()
    assert w.view() == [] and samples(st, "volagent_namespace_bytes") == {}


async def test_deny_refuses_creates_of_an_app_over_quota_only(mp: Path) -> None:
    fill(mp, "shop", "web", 100_000)
    st = make_state(mp, over_quota="deny", apps={"shop": "10KiB"})
    await walker(st, ["host-a"]).one_pass()
    refusal = quotas.refusal(st, "shop")
    assert refusal and "quota of 10KiB" in refusal and "volagent gc" in refusal
    assert quotas.refusal(st, "blog") is None
    warn = make_state(mp, apps={"shop": "10KiB"})
    await walker(warn, ["host-a"]).one_pass()
    assert warn.over_quota and quotas.refusal(warn, "shop") is None


async def test_the_quota_warning_clears_when_the_app_shrinks(mp: Path) -> None:
    fill(mp, "shop", "web", 100_000)
    st = make_state(mp, apps={"shop": "50KB"})
    w = walker(st, ["host-a"])
    await w.one_pass()
    assert st.verdict() == "degraded"
    (mp / "r1-shop" / "web" / "blob").write_bytes(b"")
    await w.one_pass()
    assert st.verdict() == "ok" and not st.warnings


def test_sizes_parse_once_and_bad_ones_name_the_key() -> None:
    cfg = from_dict({"quotas": {"default": "1.5GiB", "apps": {"shop": "50GB"}}})
    assert cfg.quotas.limit_of("shop") == Size("50000000000")
    assert cfg.quotas.limit_of("x") is not None and cfg.quotas.limit_of("x").bytes == 3 << 29
    assert from_dict({}).quotas.limit_of("x") is None
    assert from_dict({"quotas": {"default": ""}}).quotas.default is None
    for data, key in (
        ({"quotas": {"default": "lots"}}, "quotas.default"),
        ({"quotas": {"default": "0GiB"}}, "quotas.default"),
        ({"quotas": {"apps": {"Shop": "1GiB"}}}, "quotas.apps.Shop"),
        ({"quotas": {"apps": {"shop": 10}}}, "quotas.apps.shop"),
        ({"quotas": {"apps": "shop"}}, "quotas.apps"),
        ({"quotas": {"over_quota": "delete"}}, "quotas.over_quota"),
        ({"usage": {"ops_per_second": 0}}, "usage.ops_per_second"),
        ({"usage": {"interval_s": 0}}, "usage.interval_s"),
    ):
        with pytest.raises(ConfigError) as err:
            from_dict(data)
        assert err.value.key == key, data


@pytest.mark.root
def test_the_guard_denies_creates_of_an_app_over_quota_with_deny(mp: Path) -> None:
    fill(mp, "a", "web", 100_000)
    labels_b = {"convox.app": "b", "convox.service": "web"}
    for action, denied in (("deny", True), ("warn", False)):
        st = make_state(mp, guard=True, over_quota=action, apps={"a": "10KiB"})
        asyncio.run(walker(st, ["host-a"]).one_pass())
        worker = TimedWorker("test-quota", max_threads=1)
        try:
            guard = Guard(st, Preparer(st, worker))
            answer = create(guard, f"{mp}/r1-a/web/new:/data")
            assert answer["Allow"] is not denied, answer
            if denied:
                assert "quota of 10KiB" in answer["Msg"] and not (mp / "r1-a/web/new").exists()
            other = create(guard, f"{mp}/r1-b/web/data:/data", labels=labels_b, name="b-1")
            assert other["Allow"] is True, other
        finally:
            worker.close()


async def test_a_walk_cut_short_resumes_from_its_saved_cursor_after_a_restart(mp: Path) -> None:
    for i in range(6):
        fill(mp, "shop", f"s{i}", 5000)
        for j in range(10):
            (mp / "r1-shop" / f"s{i}" / f"more{j}").write_bytes(b"x" * 100)
    reference = make_state(mp)
    await walker(reference, ["host-a"]).one_pass()
    want = walker(reference, ["host-a"])
    await want.refresh()

    st = make_state(mp)
    st.config = from_dict({**_config(mp), "usage": {"ops_per_second": 1}})  # 10 ops a step
    first = walker(st, ["host-a"])
    first.budget = Budget(1, clock=FakeClock(), sleep=lambda s: None, on_spend=None)
    asked = 0

    async def owned_twice(ns: str) -> bool:
        nonlocal asked
        asked += 1
        return asked <= 3  # the pass's own check, then two steps: this host stops owning it

    first._owned = owned_twice  # type: ignore[method-assign]
    assert await first.one_pass() == 0
    saved = measure.read_sizes(_root(mp))["r1-shop"]["walk"]
    assert saved["host"] == "host-a" and len(saved["stack"]) >= 1 and saved["totals"]

    restarted = walker(make_state(mp), ["host-a"])
    assert await restarted.one_pass() == 1
    got = {u["app"]: u for u in restarted.view()}["shop"]
    assert got["services"] == {u["app"]: u for u in want.view()}["shop"]["services"]
    assert got["walking"] is False


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


def _config(mp: Path) -> dict[str, Any]:
    return {"rack": "r1", "mount_point": str(mp)}


def _root(mp: Path) -> int:
    return os.open(mp, os.O_RDONLY | os.O_DIRECTORY)


async def test_a_pass_reads_the_heartbeats_once_and_the_records_at_a_flat_pace(mp: Path) -> None:
    """A host's reads of the rack's records do not grow with the rack: the live hosts are
    read once a pass (not once a namespace or a walk step), and where there are more size
    records than BATCH, a BATCH of them every REFRESH_S, from one listing."""
    for i in range(6):
        fill(mp, f"app{i}", "s", 1000)
    st = make_state(mp)
    reads = 0

    async def view() -> list[dict[str, Any]]:
        nonlocal reads
        reads += 1
        return [{"host": "host-a", "stale": False}]

    w = UsageWalker(st, view)
    assert await w.one_pass() == 6
    assert reads == 1
    sizes = mp / ".volagent" / measure.SIZES_DIR
    many = 2 * task.BATCH + 10
    for i in range(many):
        (sizes / f"r1-other{i}.json").write_text(json.dumps({"namespace": f"r1-other{i}"}))

    async def rolling() -> list[int]:
        steps = []
        for _ in range(4):
            w._read_at = 0.0  # due
            steps.append(await w.refresh_step())
        steps.append(await w.refresh_step())  # not due
        return steps

    b = task.BATCH
    assert await rolling() == [b, b, 16, b, 0]  # 6 of the walk's own records too
    assert len(w._figures) == many + 6


async def test_a_rack_whose_name_starts_another_racks_leaves_that_racks_sizes_alone(
    mp: Path,
) -> None:
    """Racks r1 and r1-east share the filesystem, and `r1-` matches rack r1-east's namespace
    `r1-east-x` (app x): a pass of rack r1 neither removes its size record as gone nor
    reports it as r1's app `east-x`, whether its owner record says so or, before a pass has
    read that, the size record itself (the rack that measured it)."""
    fill(mp, "east-x", "web", 100_000)  # r1-east-x, as rack r1 would name app east-x
    owners.owner_of(str(mp), os.stat(mp).st_dev, "r1-east-x", rack="r1-east", app="x", host="e")

    async def view() -> list[dict[str, Any]]:
        return [{"host": "east-1", "rack": "r1-east"}, {"host": "host-a", "rack": "r1"}]

    east = factories.make_state(mp, "east-1", rack="r1-east", usage={"ops_per_second": 10000})
    assert await UsageWalker(east, view).one_pass() == 1
    root = os.open(mp, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert measure.read_sizes(root)["r1-east-x"]["rack"] == "r1-east"
        mine = factories.make_state(mp, "host-a", usage={"ops_per_second": 10000})
        before_a_pass = UsageWalker(mine, view)
        await before_a_pass.refresh()
        assert before_a_pass.view() == []
        walker = UsageWalker(mine, view)
        await walker.one_pass()
        assert "r1-east-x" in measure.read_sizes(root), "rack r1 removed rack r1-east's record"
        assert walker.view() == []
    finally:
        os.close(root)
