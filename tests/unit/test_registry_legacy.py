"""The binds of hosts on 0.2 (no registry entries, only usage records) as the registry judges
them: at every decision that could meet one, from records as fresh as 0.2 makes them, at
whatever mount point their host used, and whatever records of the release before a host
rolled back left behind."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tests.unit.factories import make_state
from tests.unit.test_registry_held import registry_of, volumes_of

from volagent.rack import binds
from volagent.state import AgentState, ContainerRecord, VolumeRecord

NS = "r1-web"


def alive(mp: Path, host: str = "host-new") -> AgentState:
    st = make_state(mp, host=host)
    st.note_heartbeat(time.time(), st.config.health.forget_after_s)
    st.containers_listed.set()
    return st


def run_container(st: AgentState, cid: str, host_path: str) -> None:
    vol = VolumeRecord(host=host_path, container="/d", read_only=False, state="ready")
    st.upsert_container(
        ContainerRecord(id=cid, name=f"n-{cid}", rack="r1", app="web", service="web", volumes=[vol])
    )


def usage_record(
    mp: Path,
    directory: str,
    host: str,
    *,
    binds: list[str],
    when: float,
    containers: list[str] | None = None,
    registry: int | None = None,
) -> None:
    """A usage record laid out as its writer lays it (0.2's: no `registry` key)."""
    rec: dict[str, Any] = {
        "binds": binds,
        "containers": ["web-1"] if containers is None else containers,
        "directory": directory,
        "host": host,
        "last_used": "2026-12-04T17:43:46.746Z",
        "namespace": NS,
        "time": when,
    }
    if registry is not None:
        rec["registry"] = registry
    d = mp / ".volagent" / "usage" / NS
    d = d / directory if directory else d
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{host}.json").write_text(json.dumps(rec))


def claims(st: AgentState, result: str) -> float:
    return float(st.metrics.registry_claims.labels(result=result)._value.get())


async def test_a_held_start_refuses_a_0_2_bind_made_inside_its_path_meanwhile(mp: Path) -> None:
    """This host holds `web/lag` (its keeper registered the running container: no claim, no
    look). A 0.2 host binds `web/lag/s1` within its lag and records it. The start of the
    container needs no transaction, but must still meet the 0.2 host's fresh record."""
    st = alive(mp)
    path = f"{mp}/{NS}/web/lag"
    async with registry_of(st) as reg:
        run_container(st, "c1", path)
        assert await reg.sync() == 1
        usage_record(mp, "web", "host-old", binds=[f"{path}/s1"], when=time.time())
        start, plans = volumes_of(path)
        await reg.claim(start, plans, "c1", "n-c1")
    assert start[0].state == "violation", start[0].error
    assert "host-old" in (start[0].error or "")
    assert claims(st, "clash") == 1


async def test_a_held_path_is_looked_at_for_0_2_binds_no_more_once_it_settled(
    mp: Path, monkeypatch: Any
) -> None:
    """Once a look made `binds.SETTLE_S` after the path was registered found nothing, 0.2
    hosts see this host's usage record of it and refuse a bind nesting it themselves: the
    held claims of it then read nothing at all."""
    st = alive(mp)
    path = f"{mp}/{NS}/web/lag"
    looks: list[str] = []
    real = binds.legacy_binds

    def counted(*args: Any, **kwargs: Any) -> Any:
        looks.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(binds, "legacy_binds", counted)
    async with registry_of(st) as reg:
        await reg.claim(*volumes_of(path), "request:1", "one")  # the create: a transaction
        await reg.claim(*volumes_of(path), "c1", "one")  # its start, just after: a look
        assert looks == [NS, NS] and claims(st, "held") == 1
        # all that happened longer ago than SETTLE_S
        reg._grown[NS, "web"] -= binds.SETTLE_S + 1
        reg._looked[NS, "web"] -= binds.SETTLE_S + 1
        await reg.claim(*volumes_of(path), "c1", "one")  # a restart: a look that settles it
        await reg.claim(*volumes_of(path), "c1", "one")  # and the next: nothing read
        assert looks == [NS, NS, NS] and claims(st, "held") == 3


async def test_a_look_at_one_directory_does_not_settle_the_held_paths_of_another(
    mp: Path,
) -> None:
    """This host holds `web/lag` and `worker/q`. A 0.2 host binds `worker/q/sub` and records
    it. The held start of the `web/lag` container looks at `web`'s records only: that must
    not spare the held start of the `worker/q` container its own look."""
    st = alive(mp)
    web, worker = f"{mp}/{NS}/web/lag", f"{mp}/{NS}/worker/q"
    async with registry_of(st) as reg:
        run_container(st, "c1", web)
        run_container(st, "c2", f"{worker}")
        assert await reg.sync() == 1
        for key in list(reg._grown):  # registered a while ago
            reg._grown[key] -= binds.SETTLE_S + 1
        usage_record(mp, "worker", "host-old", binds=[f"{worker}/sub"], when=time.time())
        first, plans = volumes_of(web)
        await reg.claim(first, plans, "c1", "n-c1")
        assert first[0].state != "violation", first[0].error
        second, plans = volumes_of(worker)
        await reg.claim(second, plans, "c2", "n-c2")
    assert second[0].state == "violation", second[0].error


async def test_an_old_record_of_the_release_before_does_not_hide_a_rolled_back_hosts_binds(
    mp: Path,
) -> None:
    """Host X ran a release that takes part, and stopped using `old` a week ago (its last
    record there says `registry`). Rolled back to 0.2, it binds `web/lag`. A claim that
    reads the week-old record first must not take X for a participant now."""
    week_ago = time.time() - 7 * 86400
    usage_record(mp, "old", "host-x", binds=[], containers=[], when=week_ago, registry=1)
    usage_record(mp, "web", "host-x", binds=[f"{mp}/{NS}/web/lag"], when=time.time())
    st = alive(mp)
    async with registry_of(st) as reg:
        first, plans = volumes_of(f"{mp}/{NS}/old/a")
        await reg.claim(first, plans, "request:1", "a")
        assert first[0].state not in ("violation", "failed"), first[0].error
        nested, plans = volumes_of(f"{mp}/{NS}/web/lag/s1")
        await reg.claim(nested, plans, "request:2", "b")
        # in one create binding both: the old record is read first
        both, plans = volumes_of(f"{mp}/{NS}/old/b", f"{mp}/{NS}/web/lag/s2")
        await reg.claim(both, plans, "request:3", "c")
    assert nested[0].state == "violation", nested[0].error
    assert both[1].state == "violation", both[1].error


async def test_a_fresh_record_of_a_participant_still_spares_its_binds_a_read(mp: Path) -> None:
    """The other side: a host whose fresh record says it takes part is judged by its
    registry entries, not by its usage records (which list binds the registry holds)."""
    usage_record(mp, "web", "host-y", binds=[f"{mp}/{NS}/web/lag"], when=time.time(), registry=1)
    st = alive(mp)
    async with registry_of(st) as reg:
        nested, plans = volumes_of(f"{mp}/{NS}/web/lag/s1")
        await reg.claim(nested, plans, "request:1", "")
        assert "host-y" in reg.participants.known()
    assert nested[0].state not in ("violation", "failed"), nested[0].error


async def test_a_0_2_bind_recorded_at_another_mount_point_is_judged_here(mp: Path) -> None:
    """A 0.2 record lists its host's own paths; that host mounted the filesystem at
    /mnt/other-efs. Its bind of `web/lag` nests this host's `web/lag/s1` all the same."""
    other = f"/mnt/other-efs/{NS}/web/lag"
    usage_record(mp, "web", "host-old", binds=[other], when=time.time())
    st = alive(mp)
    async with registry_of(st) as reg:
        nested, plans = volumes_of(f"{mp}/{NS}/web/lag/s1")
        await reg.claim(nested, plans, "request:1", "")
    assert nested[0].state == "violation", nested[0].error
    assert f"{mp}/{NS}/web/lag" in (nested[0].error or "")


def test_a_record_path_is_put_at_this_hosts_mount_point() -> None:
    assert binds.here("/volumes", NS, f"/mnt/efs/{NS}/web") == f"/volumes/{NS}/web"
    assert binds.here("/volumes", NS, f"/volumes/{NS}/web") == f"/volumes/{NS}/web"
    assert binds.here("/volumes/", NS, f"//mnt/efs/./{NS}/web/") == f"/volumes/{NS}/web"
    assert binds.here("/volumes", NS, "/srv/elsewhere") == "/srv/elsewhere"
    # a host mounting below this one's mount point: its path lies under it as a string only
    assert binds.here("/mnt", NS, f"/mnt/efs/{NS}/web") == f"/mnt/{NS}/web"


def test_a_record_file_older_than_any_fresh_record_is_not_read(mp: Path) -> None:
    """A record is replaced whole, so its file's time is when it was written: one older than
    a fresh record can be is skipped unread (no open, no read on the shared filesystem)."""
    usage_record(mp, "web", "host-gone", binds=[f"{mp}/{NS}/web/lag"], when=time.time())
    old = time.time() - binds.UNREAD_AFTER_S - 60
    os.utime(mp / ".volagent" / "usage" / NS / "web" / "host-gone.json", (old, old))
    found, hosts = binds.legacy_binds(
        str(mp), os.stat(mp).st_dev, NS, "me", binds.Participants(), directories={"web"}
    )
    assert (found, hosts) == ([], [])
    # the same record written a moment ago is read
    os.utime(mp / ".volagent" / "usage" / NS / "web" / "host-gone.json")
    found, hosts = binds.legacy_binds(
        str(mp), os.stat(mp).st_dev, NS, "me", binds.Participants(), directories={"web"}
    )
    assert hosts == ["host-gone"]
