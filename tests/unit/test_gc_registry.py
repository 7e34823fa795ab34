"""gc against the rack's registry of binds, on real directories: an entry of a live host keeps
what it holds whatever the directory's times and the usage records say (the survey and the
last judgement under the registry's lock), a host gone for good keeps nothing, and a registry
that cannot be read keeps its namespace."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from tests.unit.aged import CUTOFF, FORGET, OLD, make_dir, still_unused, survey
from tests.unit.test_registry import hold, let_go

from volagent.ops.gc import registered, trashing, tree
from volagent.ops.gc import survey as gcsurvey
from volagent.rack import registry, registry_claim
from volagent.rack.heartbeat import HostBeat, write_heartbeat
from volagent.rack.registry import Entry, RegistryError

WHO = {"host": "host-a", "user": "root", "pid": 1}


def register(mp: Path, host: str, path: str, when: float | None = None) -> None:
    """`host`'s container binds `path`, as a claim writes it."""
    ns = path.split("/", maxsplit=1)[0]
    result = registry_claim.claim(
        str(mp),
        os.stat(mp).st_dev,
        ns,
        host=host,
        wanted=[Entry(host, "c1", "", path, time.time() if when is None else when)],
        expire_after_s=FORGET,
        deadline=time.monotonic() + 10,
    )
    assert not result.clashes


def test_a_directory_a_live_hosts_entry_holds_is_no_candidate(mp: Path, root: int) -> None:
    # old times and no usage record: what gc knew before 0.5 says unused, yet a container
    # of host-b binds a directory in it now
    make_dir(mp, "r1-shop/web/data")
    make_dir(mp, "r1-shop/worker")
    os.utime(mp / "r1-shop", (OLD, OLD))
    write_heartbeat(str(mp), os.stat(mp).st_dev, HostBeat("host-b", time.time()))
    register(mp, "host-b", "r1-shop/web/data")
    s = survey(mp, root)
    found = {(c.namespace, c.directory) for c in s.candidates}
    assert found == {("r1-shop", "worker")}, "web is held; worker is not, nor is the whole"


def test_the_last_judgement_keeps_what_a_claim_registered_after_the_survey(
    mp: Path, root: int
) -> None:
    make_dir(mp, "r1-shop/web")
    [c] = survey(mp, root).candidates
    assert still_unused(mp, root, c)
    # a create on another host claims a bind in it (its walk no longer marks the directory)
    write_heartbeat(str(mp), os.stat(mp).st_dev, HostBeat("host-b", time.time()))
    register(mp, "host-b", "r1-shop/web/data")
    assert os.stat(mp / "r1-shop").st_mtime < CUTOFF, "nothing marked it"
    assert not still_unused(mp, root, c)
    moved = trashing.move(
        root, c, tree.Progress(), still_unused=lambda: still_unused(mp, root, c),
        reason="test", who=WHO,
    )  # fmt: skip
    assert moved.outcome == trashing.Outcome.KEPT
    assert (mp / "r1-shop" / "web").is_dir()


def test_a_bind_of_the_whole_namespace_holds_every_directory(mp: Path, root: int) -> None:
    make_dir(mp, "r1-shop/web")
    make_dir(mp, "r1-shop/worker")
    register(mp, "host-a", "r1-shop")  # no heartbeat: fresh by its entry's time
    assert survey(mp, root).candidates == []
    c = gcsurvey.Candidate("r1-shop", "worker", str(mp / "r1-shop/worker"), None, "", OLD)
    assert not still_unused(mp, root, c)


def test_a_host_gone_for_good_keeps_what_its_entries_hold_for_the_window_only(
    mp: Path, root: int
) -> None:
    """A host that crashed leaves its entries behind: each is a use at its time (the host
    may have died before it wrote a usage record), no longer a use now."""
    make_dir(mp, "r1-shop/web")
    make_dir(mp, "r1-old/web")
    long_ago = time.time() - 2 * FORGET
    write_heartbeat(str(mp), os.stat(mp).st_dev, HostBeat("host-b", long_ago))
    register(mp, "host-b", "r1-shop/web/data", when=long_ago)  # within the window
    register(mp, "host-b", "r1-old/web/data", when=OLD)  # before it
    [c] = survey(mp, root).candidates
    assert (c.namespace, c.directory) == ("r1-old", None)
    assert still_unused(mp, root, c)
    kept = gcsurvey.Candidate("r1-shop", None, str(mp / "r1-shop"), None, "", OLD)
    assert not still_unused(mp, root, kept)


def test_a_host_that_says_it_trusts_its_entries_longer_is_not_gone_yet(mp: Path, root: int) -> None:
    # as the registry's claims judge it: no sooner than the forget_after_s its heartbeat says
    make_dir(mp, "r1-shop/web")
    silent = time.time() - 2 * FORGET
    beat = HostBeat("host-b", silent, forget_after_s=4 * FORGET)
    write_heartbeat(str(mp), os.stat(mp).st_dev, beat)
    register(mp, "host-b", "r1-shop/web/data", when=silent)
    assert survey(mp, root).candidates == []


def test_a_registry_that_cannot_be_read_keeps_its_namespace(mp: Path, root: int) -> None:
    make_dir(mp, "r1-shop/web")
    make_dir(mp, "r1-other/web")
    reg = mp / ".volagent" / "registry"
    reg.mkdir(parents=True)
    (reg / "r1-shop.lock").touch()
    (reg / registry.file_of("r1-shop")).write_text('{"kind": "volagent.registry", "format": 9}')
    s = survey(mp, root)
    assert [c.namespace for c in s.candidates] == ["r1-other"]
    assert "r1-shop" in s.unreadable and "format" in s.unreadable["r1-shop"]
    c = gcsurvey.Candidate("r1-shop", None, str(mp / "r1-shop"), None, "", OLD)
    with pytest.raises(RegistryError):
        still_unused(mp, root, c)
    with pytest.raises(RegistryError):
        trashing.move(
            root, c, tree.Progress(), still_unused=lambda: still_unused(mp, root, c),
            reason="test", who=WHO,
        )  # fmt: skip
    assert (mp / "r1-shop" / "web").is_dir()
    assert list((mp / ".volagent" / "trash").iterdir()) == [], "its claim went again"


def test_gc_reads_the_registry_under_its_lock_and_makes_nothing(mp: Path, root: int) -> None:
    """No entries file is held open outside the lock, where a writer may replace it (an
    open by file handle of a replaced file another host holds open would read it yet), and
    a listing makes no registry files."""
    make_dir(mp, "r1-shop/web")
    assert [c.namespace for c in survey(mp, root).candidates] == ["r1-shop"]
    assert not (mp / ".volagent").exists()
    register(mp, "host-b", "r1-shop/web/data")
    lock = mp / ".volagent" / "registry" / "r1-shop.lock"
    held: list[subprocess.Popen[str]] = []
    hold(held, lock)  # another process (another host, as far as locks go)
    try:
        c = gcsurvey.Candidate("r1-shop", None, str(mp / "r1-shop"), None, "", OLD)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(registered, "LOCK_WAIT_S", 0.2)
            with pytest.raises(RegistryError, match="stayed locked"):
                still_unused(mp, root, c)
            assert "stayed locked" in survey(mp, root).unreadable["r1-shop"]
    finally:
        let_go(held)
    (mp / ".volagent" / "registry" / "r1-shop.lock").unlink()
    with pytest.raises(RegistryError, match="no lock file"):
        still_unused(mp, root, c)


def test_a_gone_hosts_entries_count_each_by_its_own_time(mp: Path, root: int) -> None:
    """One host gone for good, with an entry older than the window and one within it in
    the same namespace: the old one keeps nothing, the recent one its directory."""
    make_dir(mp, "r1-shop/web")
    make_dir(mp, "r1-shop/worker")
    write_heartbeat(str(mp), os.stat(mp).st_dev, HostBeat("host-b", OLD))
    register(mp, "host-b", "r1-shop/web/data", when=OLD)
    register(mp, "host-b", "r1-shop/worker/data", when=time.time() - 2 * FORGET)
    found = {(c.namespace, c.directory) for c in survey(mp, root).candidates}
    assert found == {("r1-shop", "web")}


def test_the_last_judgement_judges_a_host_gone_by_all_its_entries(mp: Path, root: int) -> None:
    """host-b's heartbeat is long stale (its writes failing) and its entry of web is old: at
    the survey it is gone, and web a candidate. Then host-b claims another bind in the
    namespace: by the registry's own rule (a heartbeat or an entry written lately) it is
    not gone, and its entry of web holds web again, as a claim meeting it would judge."""
    make_dir(mp, "r1-shop/web")
    make_dir(mp, "r1-shop/worker")
    write_heartbeat(str(mp), os.stat(mp).st_dev, HostBeat("host-b", OLD))
    register(mp, "host-b", "r1-shop/web/data", when=OLD)
    assert [c.namespace for c in survey(mp, root).candidates] == ["r1-shop"]  # host-b gone
    register(mp, "host-b", "r1-shop/worker/data")  # a sign of life, now
    web = gcsurvey.Candidate("r1-shop", "web", str(mp / "r1-shop/web"), None, "", OLD)
    assert not still_unused(mp, root, web), "host-b is alive by the registry's rule"


def test_a_heartbeat_this_volagent_cannot_decode_still_says_when_its_host_beat(
    mp: Path, root: int
) -> None:
    """A newer version's heartbeat (another major format): gc reads it as the registry's
    claims do, for its time, not as no heartbeat at all."""
    make_dir(mp, "r1-shop/web")
    hosts = mp / ".volagent" / "hosts"
    hosts.mkdir(parents=True)
    beat = {"kind": "heartbeat", "format": "9.0", "host": "host-b", "time": time.time()}
    (hosts / "host-b.json").write_text(json.dumps(beat))
    register(mp, "host-b", "r1-shop/web/data", when=OLD)
    assert survey(mp, root).candidates == []
