"""The usage walk on real directories: bytes and inodes per service like du, paced by its
budget, resumable from its saved cursor (after a restart, on another host), never following
a symlink; and the rack's share of the namespaces by rendezvous hashing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from volagent.rack import owners
from volagent.rack.usage import measure, share
from volagent.rack.usage.measure import LOOSE, Budget, NamespaceWalk


def tree(mp: Path) -> Path:
    ns = mp / "r1-shop"
    for svc, files in (("web", 3), ("db", 5)):
        d = ns / svc / "data" / "deep"
        d.mkdir(parents=True)
        for i in range(files):
            (d / f"f{i}").write_bytes(b"x" * 10000)
    (ns / "loose.txt").write_bytes(b"y" * 5000)
    return ns


def du(path: Path) -> tuple[int, int]:
    """Bytes (st_blocks) and entries below and including `path`, the reference."""
    n_bytes = os.lstat(path).st_blocks * 512
    n = 1
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            n_bytes += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            n += 1
    return n_bytes, n


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s
        self.slept += s


def free_budget() -> Budget:
    clock = FakeClock()
    return Budget(1000.0, clock=clock, sleep=clock.sleep)


def walk_all(walk: NamespaceWalk, step: int = 1000) -> int:
    steps = 1
    while not walk.step(step):
        steps += 1
    walk.close()
    return steps


def test_totals_per_service_match_du(mp: Path, root: int) -> None:
    ns = tree(mp)
    walk = NamespaceWalk(root, "r1-shop", free_budget())
    walk_all(walk)
    assert tuple(walk.totals["web"]) == du(ns / "web")
    assert tuple(walk.totals["db"]) == du(ns / "db")
    loose = os.lstat(ns).st_blocks * 512 + os.lstat(ns / "loose.txt").st_blocks * 512
    assert walk.totals[LOOSE] == [loose, 2]
    assert sum(b for b, _ in walk.totals.values()) == du(ns)[0]
    assert sum(i for _, i in walk.totals.values()) == du(ns)[1]


def test_the_budget_paces_the_walk(mp: Path, root: int) -> None:
    tree(mp)
    clock = FakeClock()
    budget = Budget(10.0, clock=clock, sleep=clock.sleep)
    walk = NamespaceWalk(root, "r1-shop", budget)
    walk_all(walk)
    # every operation cost a tenth of a second of the fake clock, less the burst allowance
    assert budget.spent > 20
    assert clock.slept == pytest.approx(budget.spent / 10.0 - Budget.BURST_S, abs=0.11)


def test_a_step_stops_at_its_share_of_operations(mp: Path, root: int) -> None:
    tree(mp)
    budget = free_budget()
    walk = NamespaceWalk(root, "r1-shop", budget)
    assert walk.step(5) is False
    assert budget.spent <= 5 + 2  # an entry's open finishes the step it was begun in
    walk.close()


@pytest.mark.parametrize("step", [1, 2, 3, 7])
def test_resuming_from_any_cursor_gives_the_same_totals(mp: Path, root: int, step: int) -> None:
    tree(mp)
    whole = NamespaceWalk(root, "r1-shop", free_budget())
    walk_all(whole)
    # a walk saved after every step and resumed by a new walker (a restart) each time
    saved = None
    for _ in range(1000):
        walk = NamespaceWalk.resume(root, "r1-shop", free_budget(), saved)
        done = walk.step(step)
        saved = walk.snapshot()
        walk.close()
        if done:
            break
    assert saved is not None and saved["totals"] == whole.totals


def test_symlinks_are_counted_never_followed(mp: Path, root: int, tmp_path: Path) -> None:
    ns = mp / "r1-shop" / "web"
    ns.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    for i in range(50):
        (outside / f"secret{i}").write_bytes(b"z" * 4096)
    (ns / "link").symlink_to(outside)
    (mp / "r1-shop" / "svc").symlink_to(outside)
    walk = NamespaceWalk(root, "r1-shop", free_budget())
    walk_all(walk)
    assert walk.totals["web"][1] == 2  # the directory and the link itself
    assert "svc" not in walk.totals  # a symlink at the top is a loose entry, not a service
    assert walk.totals[LOOSE][1] == 2


def test_a_hard_linked_file_counts_once(mp: Path, root: int) -> None:
    d = mp / "r1-shop" / "web"
    d.mkdir(parents=True)
    (d / "a").write_bytes(b"x" * 100000)
    os.link(d / "a", d / "b")
    walk = NamespaceWalk(root, "r1-shop", free_budget())
    walk_all(walk)
    blocks = os.lstat(d / "a").st_blocks * 512
    assert walk.totals["web"][0] == os.lstat(d).st_blocks * 512 + blocks


def test_a_cursor_into_a_removed_directory_starts_over(mp: Path, root: int) -> None:
    ns = tree(mp)
    saved = {"started": 1.0, "stack": [["r1-shop", 1], ["gone", 3]], "totals": {"web": [1, 1]}}
    walk = NamespaceWalk.resume(root, "r1-shop", free_budget(), saved)
    walk_all(walk)
    assert sum(i for _, i in walk.totals.values()) == du(ns)[1]


def test_a_bad_snapshot_is_ignored(mp: Path, root: int) -> None:
    tree(mp)
    for bad in ({"stack": "x"}, {"started": 0, "stack": [["other", 1]], "totals": {}}, None):
        walk = NamespaceWalk.resume(root, "r1-shop", free_budget(), bad)
        assert walk.cursor == [] and walk.totals == {}


def test_a_namespace_of_another_rack_sharing_the_prefix_is_not_measured(
    mp: Path, root: int
) -> None:
    """Rack `r1`'s namespaces are `r1-*`, and so are rack `r1-east`'s: the one whose owner
    record names rack r1-east is that rack's (its sizes are not rack r1's app `east-x`)."""
    tree(mp)
    (mp / "r1-east-x").mkdir()
    (mp / "r1-mine").mkdir()
    dev = os.stat(mp).st_dev
    owners.owner_of(str(mp), dev, "r1-east-x", rack="r1-east", app="x", host="h")
    owners.owner_of(str(mp), dev, "r1-mine", rack="r1", app="mine", host="h")
    found = measure.namespaces(root, "r1-", free_budget())
    assert found == ["r1-east-x", "r1-mine", "r1-shop"]
    assert measure.owned_elsewhere(root, found, "r1", free_budget()) == {"r1-east-x"}
    found = measure.namespaces(root, "r1-east-", free_budget())
    assert measure.owned_elsewhere(root, found, "r1-east", free_budget()) == set()


def test_records_round_trip_and_namespaces_listed(mp: Path, root: int) -> None:
    tree(mp)
    (mp / "r2-other").mkdir()
    (mp / "r1-file").write_text("")
    (mp / "r1-link").symlink_to(mp / "r1-shop")
    names = measure.namespaces(root, "r1-", free_budget())
    assert names == ["r1-shop"]
    walk = NamespaceWalk(root, "r1-shop", free_budget())
    walk.step(3)
    measure.save(root, "r1-shop", measure.record_of(None, walk, "host-a", False))
    rec = measure.read_sizes(root)["r1-shop"]
    assert rec["walk"]["host"] == "host-a" and "totals" not in rec
    walk_all(walk)
    measure.save(root, "r1-shop", measure.record_of(rec, walk, "host-a", True))
    rec = measure.read_sizes(root)["r1-shop"]
    assert rec["walk"] is None and rec["totals"] == walk.totals
    measure.forget(root, ["r1-shop"])
    assert measure.read_sizes(root) == {}


def test_rendezvous_moves_only_the_share_of_a_host_that_leaves() -> None:
    spaces = [f"r1-app{i}" for i in range(300)]
    hosts = ["a", "b", "c", "d"]
    before = {ns: share.owner(hosts, ns) for ns in spaces}
    after = {ns: share.owner(hosts[:-1], ns) for ns in spaces}
    moved = {ns for ns in spaces if before[ns] != after[ns]}
    assert moved == {ns for ns in spaces if before[ns] == "d"}
    counts = {h: list(before.values()).count(h) for h in hosts}
    assert all(40 < n < 110 for n in counts.values()), counts
    # every host computes the same owners, whatever order it lists the hosts in
    assert all(share.owner(list(reversed(hosts)), ns) == before[ns] for ns in spaces)


def test_live_hosts_leave_out_stale_ones_and_other_racks_and_count_this_one() -> None:
    view = [
        {"host": "a", "rack": "r1", "stale": False},
        {"host": "b", "rack": "r1", "stale": True},
        {"host": "c", "rack": "r2", "stale": False},
        {"host": "old", "stale": False},  # a heartbeat that names no rack counts in
    ]
    assert share.live_hosts(view, "me", "r1") == ["a", "me", "old"]
    assert share.mine(["x", "y"], ["me"], "me") == ["x", "y"]
