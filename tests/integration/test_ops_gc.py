"""gc never deletes data in use, on the real engine with the start guard: binds under dot
directories and binds in violation (`violations = "warn"`) count as use; `--delete` moves
into the trash, refuses while a host is stale unless named; a create into a trashed
namespace is denied with the restore command; `--restore` and `--purge`; and gc stopped
(SIGSTOP) in the middle of its work while a container of that app is created loses nothing
that container wrote or read. Age is simulated by setting mtimes back (os.utime)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import pytest

from tests.testbed import (
    AgentProcess,
    Containers,
    Dockerd,
    agent_env,
    app_labels,
    ensure_image,
    volagent_cli,
)
from tests.testbed.plugin_home import PluginHome
from tests.testbed.registry_view import registered
from tests.testbed.waiting import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.mount]

DAY = 86400.0
HOST = "test-host"  # the test bed agent's host_id


class Bed:
    """The module's guarded engine and its one agent (violations only warned about)."""

    def __init__(self, home: PluginHome, engine: Dockerd, agent: AgentProcess) -> None:
        self.home = home
        self.engine = engine
        self.agent = agent
        self.ctr = Containers(engine.url)

    @property
    def mp(self) -> str:
        return self.agent.mount_point

    def gc(self, *args: str) -> subprocess.CompletedProcess[str]:
        return volagent_cli(["--config", self.agent.config_path, "gc", *args], timeout=300)

    def gc_process(self, *args: str) -> subprocess.Popen[str]:
        """gc running in the background, its JSON log lines readable on stderr."""
        return subprocess.Popen(
            [sys.executable, "-m", "volagent", "--config", self.agent.config_path, "gc", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=agent_env(),
        )

    def trash(self) -> str:
        return os.path.join(self.mp, ".volagent", "trash")

    def entries(self) -> list[str]:
        """Names of the trash entries holding a directory."""
        if not os.path.isdir(self.trash()):
            return []
        return sorted(
            n for n in os.listdir(self.trash()) if os.path.isdir(os.path.join(self.trash(), n))
        )

    def create(self, app: str, bind: str, command: list[str]) -> str:
        return self.ctr.create([bind], labels=app_labels(app, "web"), command=command)


@pytest.fixture(scope="module")
def bed(busybox_rootfs: str) -> Iterator[Bed]:
    home = PluginHome()
    engine = home.dockerd("--authorization-plugin=volagent")
    agent = home.agent(engine.url, config={"guard": {"violations": "warn"}})
    made: Bed | None = None
    try:
        agent.start()
        agent.wait_for(lambda d: d["mount"]["state"] == "local", what="the mount")
        engine.start()
        ensure_image(engine.client(), busybox_rootfs)
        made = Bed(home, engine, agent)
        yield made
    finally:
        try:
            if made is not None:
                made.ctr.cleanup()
                made.ctr.close()
        finally:
            engine.stop()
            agent.close()
            home.close()


@pytest.fixture
def gcbed(bed: Bed) -> Iterator[Bed]:
    yield bed
    bed.ctr.cleanup()


def age(top: str, days: float = 90) -> None:
    """Sets the mtime of `top` and every directory below it `days` back."""
    when = time.time() - days * DAY
    for path, _, _ in os.walk(top, topdown=False):
        os.utime(path, (when, when))


def usage_record(bed: Bed, *rel: str) -> str:
    return os.path.join(bed.mp, ".volagent", "usage", *rel, f"{HOST}.json")


def seed(path: str, text: str) -> None:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "state"), "w", encoding="utf-8") as f:
        f.write(text)


def denial(excinfo: pytest.ExceptionInfo[docker.errors.APIError]) -> str:
    text = str(excinfo.value)
    assert "authorization denied by plugin volagent" in text, text
    return text


def backdate_entry(bed: Bed, entry: str, days: float) -> None:
    """Makes a trash entry look moved `days` ago (its record says when)."""
    path = os.path.join(bed.trash(), entry + ".json")
    with open(path, encoding="utf-8") as f:
        rec = json.load(f)
    rec["time"] -= days * DAY
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rec, f)


def events(lines: str) -> list[str]:
    return [json.loads(line)["event"] for line in lines.splitlines() if line.startswith("{")]


# --- what counts as use ---------------------------------------------------------------------
def test_a_bind_under_a_dot_directory_keeps_its_namespace(gcbed: Bed) -> None:
    bed = gcbed
    ns = bed.agent.ns("dot")
    seed(os.path.join(ns, ".shared", "db"), "rows")
    cid = bed.create("dot", f"{ns}/.shared/db:/db", ["sh", "-c", "cat /db/state; echo; sleep 300"])
    bed.ctr.start(cid)
    # known to gc: its entry in the registry (its first usage record waits for a refresh)
    wait_until(
        lambda: (HOST, "r1-dot/.shared/db") in registered(bed.mp, "r1-dot"), "its registry entry"
    )
    age(ns)
    listing = bed.gc("--older-than", "30")
    assert listing.returncode == 0, listing.stderr
    assert ns not in listing.stdout.split("in the trash")[0], listing.stdout
    deleting = bed.gc("--older-than", "30", "--delete")
    assert deleting.returncode == 0, deleting.stdout + deleting.stderr
    assert "r1-dot" not in deleting.stdout.split("in the trash")[0]
    assert Path(os.path.join(ns, ".shared", "db", "state")).read_text() == "rows"
    wait_until(lambda: bed.ctr.logs(cid).strip() == "rows", "what the container read")


def test_a_bind_in_violation_still_keeps_what_it_uses(gcbed: Bed) -> None:
    """`violations = "warn"` lets app `evil` bind app `victim`'s data: still in use."""
    bed = gcbed
    victim = bed.agent.ns("victim")
    seed(os.path.join(victim, "web", "data"), "precious")
    cid = bed.create("evil", f"{victim}/web/data:/d", ["sh", "-c", "cat /d/state; sleep 300"])
    bed.ctr.start(cid)
    wait_until(lambda: os.path.exists(usage_record(bed, "r1-victim", "web")), "a usage record")
    age(victim)
    deleting = bed.gc("--delete")
    assert deleting.returncode == 0, deleting.stdout + deleting.stderr
    assert victim not in deleting.stdout.split("in the trash")[0]
    assert os.path.isfile(os.path.join(victim, "web", "data", "state"))


def test_an_unlabeled_containers_bind_keeps_its_directory(gcbed: Bed) -> None:
    """An unlabeled container's bind is a violation, let through by `violations = "warn"`:
    still a use of what it binds."""
    bed = gcbed
    ns = bed.agent.ns("nolabel")
    seed(os.path.join(ns, "web", "data"), "mine")
    cid = bed.ctr.create([f"{ns}/web/data:/d"], command=["sh", "-c", "cat /d/state; sleep 300"])
    bed.ctr.start(cid)
    bed.agent.wait_for(
        lambda d: any(c["id"] == cid for c in d["containers"]), 15, "the container tracked"
    )
    wait_until(lambda: os.path.exists(usage_record(bed, "r1-nolabel", "web")), "a usage record")
    age(ns)
    deleting = bed.gc("--delete")
    assert deleting.returncode == 0, deleting.stdout + deleting.stderr
    assert os.path.isfile(os.path.join(ns, "web", "data", "state")), deleting.stdout


# --- the stale rule -------------------------------------------------------------------------
def test_delete_refuses_while_a_host_is_stale_unless_named(gcbed: Bed) -> None:
    bed = gcbed
    ns = bed.agent.ns("stale")
    seed(os.path.join(ns, "web", "data"), "x")
    age(ns)
    hosts = os.path.join(bed.mp, ".volagent", "hosts")
    wait_until(lambda: os.path.exists(os.path.join(hosts, f"{HOST}.json")), "own heartbeat")
    gone = os.path.join(hosts, "host-gone.json")
    with open(gone, "w", encoding="utf-8") as f:
        json.dump({"host": "host-gone", "time": time.time() - 3 * DAY, "status": "ok"}, f)
    try:
        refused = bed.gc("--delete")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "host-gone" in refused.stdout and "--ignore-stale host-gone" in refused.stdout
        assert HOST not in refused.stdout.split("refused")[1]  # this host is fresh
        assert os.path.isdir(ns)
        wrong = bed.gc("--delete", "--ignore-stale", "host-other")
        assert wrong.returncode == 1 and os.path.isdir(ns)
        named = bed.gc("--delete", "--ignore-stale", "host-gone")
        assert named.returncode == 0, named.stdout + named.stderr
        assert f"trashed {ns} " in named.stdout
        assert not os.path.exists(ns)
    finally:
        os.unlink(gone)


# --- the trash: denial, restore, purge --------------------------------------------------------
def test_a_create_into_a_trashed_namespace_is_denied_until_restored(gcbed: Bed) -> None:
    bed = gcbed
    ns = bed.agent.ns("gone")
    seed(os.path.join(ns, "web", "data"), "before")
    age(ns)
    deleting = bed.gc("--delete")
    assert deleting.returncode == 0, deleting.stdout + deleting.stderr
    [entry] = [e for e in bed.entries() if e.startswith("r1-gone@")]
    with pytest.raises(docker.errors.APIError) as excinfo:
        bed.create("gone", f"{ns}/web/data:/d", ["cat", "/d/state"])
    text = denial(excinfo)
    assert entry in text and f"volagent gc --restore {entry}" in text
    assert not os.path.exists(ns), "nothing fresh made in its place"
    listing = bed.gc()
    assert entry in listing.stdout and f"was {ns}" in listing.stdout

    restored = bed.gc("--restore", entry)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert events(restored.stderr) == ["gc_restored"]
    cid = bed.create("gone", f"{ns}/web/data:/d", ["cat", "/d/state"])
    bed.ctr.start(cid)
    assert bed.ctr.wait(cid) == 0
    assert bed.ctr.logs(cid) == "before"
    again = bed.gc("--delete")  # restored means used now: not taken again at once
    assert again.returncode == 0 and os.path.isdir(ns)


def test_restore_refuses_over_a_namespace_made_again(gcbed: Bed) -> None:
    bed = gcbed
    ns = bed.agent.ns("twice")
    seed(os.path.join(ns, "web"), "old")
    age(ns)
    assert bed.gc("--delete").returncode == 0
    [entry] = [e for e in bed.entries() if e.startswith("r1-twice@")]
    os.makedirs(ns)  # made by hand, or by Docker for a container started without the guard
    refused = bed.gc("--restore", entry)
    assert refused.returncode == 1
    assert f"{ns} exists again" in refused.stderr and f"--restore {entry}" in refused.stderr
    os.rmdir(ns)
    assert bed.gc("--restore", entry).returncode == 0
    assert Path(os.path.join(ns, "web", "state")).read_text() == "old"


def test_purge_removes_what_has_been_in_the_trash_long_enough(gcbed: Bed) -> None:
    bed = gcbed
    for app in ("purge-old", "purge-new"):
        seed(bed.agent.ns(app, "web"), app)
        age(bed.agent.ns(app))
    assert bed.gc("--delete").returncode == 0
    [old] = [e for e in bed.entries() if e.startswith("r1-purge-old@")]
    [new] = [e for e in bed.entries() if e.startswith("r1-purge-new@")]
    backdate_entry(bed, old, 10)
    purged = bed.gc("--purge")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert f"purged  {old}" in purged.stdout
    assert events(purged.stderr) == ["gc_purge_started", "gc_purged"]
    assert old not in os.listdir(bed.trash()) and f"{old}.json" not in os.listdir(bed.trash())
    assert new in bed.entries()
    assert bed.gc("--purge", "--older-than", "0").returncode == 0
    assert new not in bed.entries()


# --- gc paused mid-work while a container of that app is created ----------------------------
def many_files(top: str, dirs: int, files: int) -> None:
    for d in range(dirs):
        path = os.path.join(top, f"d{d}")
        os.makedirs(path)
        for f in range(files):
            # empty: the test bed's filesystem is a small tmpfs
            with open(os.path.join(path, f"f{f}"), "w", encoding="utf-8"):
                pass


def read_until(proc: subprocess.Popen[str], event: str, about: str) -> None:
    """Reads gc's log lines until `event` about an entry or path containing `about`."""
    assert proc.stderr is not None
    seen: list[str] = []
    for line in proc.stderr:
        if line.startswith("{"):
            doc = json.loads(line)
            seen.append(doc["event"])
            if doc["event"] == event and about in doc.get("entry", "") + doc.get("path", ""):
                return
    raise AssertionError(f"gc ended without {event} for {about}: {seen}")


def test_gc_stopped_after_claiming_loses_nothing_of_a_new_container(gcbed: Bed) -> None:
    bed = gcbed
    ns = bed.agent.ns("paused")
    seed(os.path.join(ns, "web", "data"), "loaded")
    age(ns)
    proc = bed.gc_process("--delete")
    try:
        read_until(proc, "gc_trash_claimed", ns)
        proc.send_signal(signal.SIGSTOP)
        command = ["sh", "-c", "cat /d/state; echo written > /d/new"]
        with pytest.raises(docker.errors.APIError) as excinfo:
            bed.create("paused", f"{ns}/web/data:/d", command)
        names = os.listdir(bed.trash())
        [entry] = {n.removesuffix(".json") for n in names if n.startswith("r1-paused@")}
        assert f"volagent gc --restore {entry}" in denial(excinfo)
    finally:
        proc.send_signal(signal.SIGCONT)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    # the denied create marked the namespace used before gc's last look: kept, or trashed
    if entry in bed.entries():
        assert bed.gc("--restore", entry).returncode == 0
    else:
        assert f"kept    {ns}" in out
    cid = bed.create("paused", f"{ns}/web/data:/d", command)
    bed.ctr.start(cid)
    assert bed.ctr.wait(cid) == 0
    assert bed.ctr.logs(cid) == "loaded"
    assert Path(os.path.join(ns, "web", "data", "new")).read_text() == "written\n"


def test_gc_stopped_mid_purge_loses_nothing_of_a_new_container(gcbed: Bed) -> None:
    bed = gcbed
    ns = bed.agent.ns("bigpurge")
    many_files(os.path.join(ns, "web", "data"), dirs=100, files=200)
    age(ns)
    assert bed.gc("--delete").returncode == 0
    [entry] = [e for e in bed.entries() if e.startswith("r1-bigpurge@")]
    backdate_entry(bed, entry, 10)
    proc = bed.gc_process("--purge")
    command = ["sh", "-c", "ls /d | wc -l; echo written > /d/new"]
    cid = None
    try:
        read_until(proc, "gc_purge_started", entry)
        proc.send_signal(signal.SIGSTOP)
        purging = entry in bed.entries()
        if purging:  # the usual case: the removal of 20000 files is under way
            with pytest.raises(docker.errors.APIError) as excinfo:
                bed.create("bigpurge", f"{ns}/web/data:/d", command)
            text = denial(excinfo)
            assert entry in text and "being purged" in text
            assert not os.path.exists(ns)
        else:  # the purge was done before the stop: a new namespace, nobody else's
            cid = bed.create("bigpurge", f"{ns}/web/data:/d", command)
            bed.ctr.start(cid)
            assert bed.ctr.wait(cid) == 0
    finally:
        proc.send_signal(signal.SIGCONT)
        out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert entry not in bed.entries()
    if cid is None:
        cid = bed.create("bigpurge", f"{ns}/web/data:/d", command)
        bed.ctr.start(cid)
        assert bed.ctr.wait(cid) == 0
    assert bed.ctr.logs(cid).split() == ["0"]
    assert Path(os.path.join(ns, "web", "data", "new")).read_text() == "written\n"
