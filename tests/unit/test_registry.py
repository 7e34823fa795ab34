"""The rack-wide registry of binds: its format, the claim under the lock, expiry of a silent
host's entries, this host's entries kept to what it runs, and fail closed when the lock or the
file cannot be had (the two-host races on real engines: tests/integration/test_rack_registry)."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.unit.factories import make_state, volumes_of

from volagent.errors import NamespaceViolation
from volagent.rack import registry, registry_claim
from volagent.rack.heartbeat import HostBeat, host_record, rack_view, write_heartbeat
from volagent.rack.registry import Entry, RegistryError
from volagent.rack.registry_task import Registry, request_ref
from volagent.state import AgentState, ContainerRecord, VolumeRecord

NS = "r1-evil"
FORGET = 900.0


def entry(host: str, path: str, ref: str = "c1", when: float | None = None) -> Entry:
    return Entry(host, ref, "", path, time.time() if when is None else when)


def claim(
    mp: Path, host: str, *paths: str, ref: str = "c1", forget_after_s: float = FORGET
) -> registry_claim.ClaimResult:
    return registry_claim.claim(
        str(mp),
        os.stat(mp).st_dev,
        NS,
        host=host,
        wanted=[entry(host, p, ref) for p in paths],
        expire_after_s=forget_after_s,
        deadline=time.monotonic() + 5,
    )


def registry_doc(mp: Path) -> dict[str, object]:
    data = json.loads((mp / ".volagent" / "registry" / f"{NS}.json").read_text())
    assert isinstance(data, dict)
    return data


def paths(mp: Path) -> list[tuple[str, str]]:
    entries = registry_doc(mp)["entries"]
    assert isinstance(entries, list)
    return sorted((e["host"], e["path"]) for e in entries)


def entered_since(mp: Path, host: str, when: float) -> None:
    """The registry holds one entry, `<NS>/web/lag` of `host`, written at `when`."""
    base = mp / ".volagent" / "registry"
    base.mkdir(parents=True, exist_ok=True)
    doc = registry.document(NS, [entry(host, f"{NS}/web/lag", when=when)])
    (base / f"{NS}.json").write_text(json.dumps(doc))


def beat(mp: Path, host: str, text: str) -> None:
    """`host`'s heartbeat file holds `text`."""
    hosts = mp / ".volagent" / "hosts"
    hosts.mkdir(parents=True, exist_ok=True)
    (hosts / f"{host}.json").write_text(text)


def test_a_nested_claim_of_another_host_is_refused_and_an_identical_one_shares(mp: Path) -> None:
    assert not claim(mp, "h1", f"{NS}/web/lag").clashes
    inner = claim(mp, "h2", f"{NS}/web/lag/s1")
    assert "lies inside" in inner.clashes[f"{NS}/web/lag/s1"]
    assert "host h1" in inner.clashes[f"{NS}/web/lag/s1"]
    outer = claim(mp, "h2", f"{NS}/web")
    assert "contains" in outer.clashes[f"{NS}/web"]
    assert not claim(mp, "h2", f"{NS}/web/lag").clashes  # one directory, shared
    assert paths(mp) == [("h1", f"{NS}/web/lag"), ("h2", f"{NS}/web/lag")]
    doc = registry_doc(mp)
    assert doc["kind"] == "volagent.registry" and doc["format"] == registry.FORMAT


def test_a_claim_repeated_at_a_start_writes_nothing(mp: Path) -> None:
    first = claim(mp, "h1", f"{NS}/web/a")
    again = claim(mp, "h1", f"{NS}/web/a", ref="other-ref")  # the path is held already
    assert first.written and not again.written
    assert again.counts.writes == 0 and again.counts.locks == 1


def test_a_silent_hosts_entries_stop_blocking_only_after_forget_after_s(mp: Path) -> None:
    old = time.time() - FORGET - 10
    entered_since(mp, "dead", old)
    # a heartbeat of a moment ago keeps the host's entries (its containers may still run)
    beat(mp, "dead", json.dumps({"host": "dead", "time": time.time() - 60}))
    assert claim(mp, "h1", f"{NS}/web/lag/s1").clashes
    # silent for longer than forget_after_s: forgotten, and its entries removed
    beat(mp, "dead", json.dumps({"host": "dead", "time": old}))
    result = claim(mp, "h1", f"{NS}/web/lag/s1")
    assert not result.clashes and result.expired == ["dead"]
    assert paths(mp) == [("h1", f"{NS}/web/lag/s1")]


def test_a_host_is_forgotten_no_sooner_than_its_own_forget_after_s_says(mp: Path) -> None:
    """The attack: this host forgets after 150 s; the host in the way (forget_after_s 900)
    skips its transactions for paths it holds while its heartbeat is younger than 450 s.
    Forgetting it after 150 s of silence would let a nested bind in beside its held one."""
    silent_since = time.time() - 200
    entered_since(mp, "held", silent_since)
    st = make_state(mp, host="held")
    record = host_record(st)
    assert record.forget_after_s == FORGET
    silent = dataclasses.replace(record, time=silent_since)
    write_heartbeat(str(mp), os.stat(mp).st_dev, silent)

    def claim_forgetting_after(seconds: float) -> registry_claim.ClaimResult:
        return claim(mp, "short", f"{NS}/web/lag/s1", forget_after_s=seconds)

    assert claim_forgetting_after(150.0).clashes  # silent 200 s: not for the held host's 900
    # a heartbeat of 0.3.2 and before says nothing of it: this host's own setting counts
    beat(mp, "held", json.dumps({"host": "held", "time": silent_since}))
    assert not claim_forgetting_after(150.0).clashes


def test_hosts_spelling_the_mount_point_differently_name_the_same_paths(mp: Path) -> None:
    """A host whose config says `<mp>/.` (or `//<mp>`) writes the entries a host saying
    `<mp>` reads: a bind nesting it is refused across them."""
    a = make_state(mp, host="a", mount_point=f"{mp}/.")
    b = make_state(mp, host="b", mount_point=f"/{mp}")
    assert a.config.mount_point == b.config.mount_point == str(mp)
    outer = registry_claim.relative(a.config.mount_point, f"{mp}/{NS}/web/lag")
    assert outer == f"{NS}/web/lag"
    assert not claim(mp, "a", outer).clashes
    inner = registry_claim.relative(b.config.mount_point, f"{mp}/{NS}/web/lag/s1")
    assert claim(mp, "b", inner).clashes


def test_a_claim_that_clashes_with_nothing_reads_no_heartbeat(mp: Path) -> None:
    claim(mp, "h1", f"{NS}/web/a")
    result = claim(mp, "h2", f"{NS}/web/b")
    # the lock file, the registry, the new registry: no heartbeat opened
    assert (result.counts.opens, result.counts.locks, result.counts.writes) == (3, 1, 1)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "not JSON"),
        (json.dumps({"kind": "volagent.registry", "format": 2}).encode(), "format 2"),
        (json.dumps({"kind": "something else"}).encode(), "not a volagent registry"),
        (
            json.dumps(
                {"kind": "volagent.registry", "format": 1, "entries": [{"host": "h", "ref": "r"}]}
            ).encode(),
            "bad entry",
        ),
    ],
)
def test_a_registry_this_version_cannot_read_refuses_the_claim(
    mp: Path, content: bytes, problem: str
) -> None:
    base = mp / ".volagent" / "registry"
    base.mkdir(parents=True)
    (base / f"{NS}.json").write_bytes(content)
    with pytest.raises(RegistryError, match=problem):
        claim(mp, "h1", f"{NS}/web/a")


def registry_of(*entries: dict[str, object], fmt: object = 1) -> bytes:
    return json.dumps({"kind": registry.KIND, "format": fmt, "entries": entries}).encode()


def test_entries_hold_clean_relative_paths_only() -> None:
    for bad in ("/abs/path", "a/../b", "a//b", "./a"):
        raw = {"host": "h", "ref": "r", "name": "", "path": bad, "time": 1}
        with pytest.raises(RegistryError, match=f"the registry of {NS}: a bad entry"):
            registry.parse(NS, registry_of(raw))


def test_the_registry_is_written_as_0_3_0_wrote_it() -> None:
    doc = registry.document(NS, [entry("h2", f"{NS}/b", when=2), entry("h1", f"{NS}/a", when=1)])
    assert json.dumps(doc, sort_keys=True) == (
        '{"entries": [{"host": "h1", "name": "", "path": "r1-evil/a", "ref": "c1", "time": 1}, '
        '{"host": "h2", "name": "", "path": "r1-evil/b", "ref": "c1", "time": 2}], '
        '"format": 1, "kind": "volagent.registry", "namespace": "r1-evil"}'
    )


def test_a_registry_of_a_newer_minor_format_is_read_and_of_a_newer_major_one_refused() -> None:
    raw = {"host": "h", "ref": "r", "name": "n", "path": f"{NS}/a", "time": 1, "new": [1]}
    assert registry.parse(NS, registry_of(raw, fmt="1.1")) == [Entry("h", "r", "n", f"{NS}/a", 1)]
    with pytest.raises(RegistryError, match=f"the registry of {NS}: format 2.0 is newer"):
        registry.parse(NS, registry_of(raw, fmt="2.0"))


@pytest.fixture
def other_process_holds_the_lock(mp: Path) -> Iterator[None]:
    """Another process (another host, as far as fcntl locks go) holds the namespace's lock."""
    base = mp / ".volagent" / "registry"
    base.mkdir(parents=True)
    lock = base / f"{NS}.lock"
    lock.touch()
    held: list[subprocess.Popen[str]] = []
    hold(held, lock)
    try:
        yield
    finally:
        let_go(held)


def hold(held: list[subprocess.Popen[str]], lock: Path) -> None:
    """Another process takes the lock of `lock` (made if missing) and keeps it until `let_go`."""
    p = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    held.append(p)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"


def let_go(held: list[subprocess.Popen[str]]) -> None:
    for p in held:
        assert p.stdin is not None and p.stdout is not None
        p.stdin.close()
        p.stdout.close()
        p.wait(10)
    held.clear()


@pytest.mark.usefixtures("other_process_holds_the_lock")
def test_a_lock_held_elsewhere_fails_the_claim_by_its_deadline(mp: Path) -> None:
    with pytest.raises(RegistryError, match="stayed locked"):
        registry_claim.claim(
            str(mp),
            os.stat(mp).st_dev,
            NS,
            host="h1",
            wanted=[entry("h1", f"{NS}/web/a")],
            expire_after_s=FORGET,
            deadline=time.monotonic() + 0.2,
        )
    assert not (mp / ".volagent" / "registry" / f"{NS}.json").exists()


# --- the daemon's side -------------------------------------------------------------------
def container(st: AgentState, cid: str, *hosts: str) -> None:
    vols = [VolumeRecord(host=h, container="/d", read_only=False, state="ready") for h in hosts]
    st.upsert_container(
        ContainerRecord(id=cid, name=f"n-{cid}", rack="r1", app="evil", service="web", volumes=vols)
    )


@pytest.mark.usefixtures("other_process_holds_the_lock")
async def test_a_registry_that_does_not_answer_in_time_fails_the_volumes(mp: Path) -> None:
    st = make_state(mp, directories={"timeout_s": 0.3})
    vols, plans = volumes_of(f"{mp}/{NS}/web/a")

    reg = Registry(st)
    try:
        await reg.claim(vols, plans, "c1", "")
    finally:
        reg.worker.close()
    assert vols[0].state == "failed"
    assert "could not consult the rack's registry" in (vols[0].error or "")
    assert "stayed locked" in (vols[0].error or "")  # the thread's own deadline, not the hang


async def test_a_clash_in_the_registry_is_a_rule_7_violation(mp: Path) -> None:
    claim(mp, "h2", f"{NS}/web/lag")
    st = make_state(mp, host="h1")
    vols, plans = volumes_of(f"{mp}/{NS}/web/lag/s1", f"{mp}/{NS}/web/other")

    reg = Registry(st)
    try:
        await reg.claim(vols, plans, "c1", "")
    finally:
        reg.worker.close()
    assert vols[0].state == "violation" and "host h2" in (vols[0].error or "")
    assert isinstance(plans[0], NamespaceViolation) and plans[0].rule == 7
    assert vols[1].state != "violation"
    assert paths(mp) == [("h2", f"{NS}/web/lag")]  # nothing of a refused claim registered


async def test_the_keeper_sets_this_hosts_entries_to_what_it_runs(mp: Path) -> None:
    st = make_state(mp, host="h1", listed=False, state_dir=str(mp.parent / "state"))
    claim(mp, "h2", f"{NS}/web/theirs")
    # an entry of this host from an earlier run, its container gone while volagent was down
    claim(mp, "h1", f"{NS}/web/gone", ref="old-container")
    container(st, "c1", f"{mp}/{NS}/web/mine")
    st.reserved_binds[b"k" * 32] = (f"{mp}/{NS}/web/creating",)

    reg = Registry(st)
    try:
        assert await reg.sync() == 0  # not before Docker's containers are listed
        st.containers_listed.set()
        await asyncio.sleep(0.01)  # the gone entry is older than the keeper's look
        assert await reg.sync() == 1
        assert paths(mp) == [
            ("h1", f"{NS}/web/creating"),
            ("h1", f"{NS}/web/mine"),
            ("h2", f"{NS}/web/theirs"),
        ]
        refs = {e["path"]: e["ref"] for e in registry_doc(mp)["entries"]}  # type: ignore[attr-defined]
        assert refs[f"{NS}/web/creating"] == request_ref(b"k" * 32)
        # the gone container's use ended: recorded before its entry went (gc counted it)
        record = mp / ".volagent" / "usage" / NS / "web" / "h1.json"
        first = json.loads(record.read_text())
        assert first["containers"] == ["n-c1"]  # the directory is in use still
        assert await reg.sync() == 0  # nothing changed: nothing read
        st.forget_container("c1")
        del st.reserved_binds[b"k" * 32]
        assert await reg.sync() == 1
        assert paths(mp) == [("h2", f"{NS}/web/theirs")]
        # no record again: this host recorded the directory since those entries were written
        assert json.loads(record.read_text()) == first
    finally:
        reg.worker.close()
    remembered = json.loads((mp.parent / "state" / "registry-namespaces.json").read_text())
    assert remembered == {"namespaces": []}


def test_a_lock_is_released_when_the_transaction_ends(mp: Path) -> None:
    claim(mp, "h1", f"{NS}/web/a")
    fd = os.open(mp / ".volagent" / "registry" / f"{NS}.lock", os.O_RDWR)
    try:
        # another process could take it now: this one can, without blocking
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


async def test_a_claim_reads_no_usage_records(mp: Path) -> None:
    """Since 0.4 every host of the rack takes part in the registry: a claim reads the
    registry alone, not the namespace's usage records, whatever binds they list (0.3 looked
    there for 0.2 hosts' binds at every claim, 4-6 round trips on EFS)."""
    usage_dir = mp / ".volagent" / "usage" / NS / "web"
    usage_dir.mkdir(parents=True)
    record = {"host": "old-host", "time": time.time(), "binds": [f"{mp}/{NS}/web/lag"]}
    (usage_dir / "old-host.json").write_text(json.dumps(record))
    st = make_state(mp, host="h1")
    vols, plans = volumes_of(f"{mp}/{NS}/web/lag/s1")

    reg = Registry(st)
    try:
        await reg.claim(vols, plans, "c1", "")
    finally:
        reg.worker.close()
    assert vols[0].state != "violation" and vols[0].error is None
    paths = [e["path"] for e in registry_doc(mp)["entries"]]  # type: ignore[attr-defined]
    assert paths == [f"{NS}/web/lag/s1"]


def test_the_rack_view_says_who_takes_part_in_the_registry() -> None:
    now = time.time()
    beats = [
        HostBeat("new", now, version="0.3.0", registry=1),
        HostBeat("old", now, version="0.2.1"),
    ]
    view = {h["host"]: h for h in rack_view(beats, stale_after_s=90, now=now)}
    assert view["new"]["registry"] is True and view["old"]["registry"] is False
    assert view["old"]["version"] == "0.2.1"


def test_a_heartbeat_cannot_keep_a_silent_host_for_longer_than_a_config_may(mp: Path) -> None:
    """A heartbeat saying `forget_after_s` of Infinity (or 1e12) would keep a dead host's
    entries blocking nested binds for ever; it counts for at most what a config may set."""
    silent_since = time.time() - 30 * 86400 - 3600
    for said in ("Infinity", "1e12"):
        beat(mp, "dead", f'{{"host": "dead", "time": {silent_since!r}, "forget_after_s": {said}}}')
        entered_since(mp, "dead", silent_since)
        result = claim(mp, "h1", f"{NS}/web/lag/s1")
        assert not result.clashes and result.expired == ["dead"], said
