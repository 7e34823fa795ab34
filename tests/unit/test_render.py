"""The human status view, rendered from real status documents."""

from __future__ import annotations

import re
from typing import Any

from tests.unit.factories import make_state

from volagent import __version__
from volagent.api import render
from volagent.state import ContainerRecord, VolumeRecord, now_iso
from volagent.terminal import format_size
from volagent.values import Size

NOW = 1_800_000_000.0
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _doc(**changes: Any) -> dict[str, Any]:
    state = make_state(host="host-1")
    state.mount.type, state.mount.source, state.mount.file_system_id = "nfs4", "fs-1.efs:/", "fs-1"
    state.mount.last_probe_ms = 1.25
    for i in range(3):
        vol = VolumeRecord("/volumes/r-a/web/data", "/data", False)
        state.upsert_container(ContainerRecord(f"c{i}", f"web-{i}", "r", "a", "web", [vol]))
        state.set_volume_state(vol, "ready")
    doc = state.status_document()
    doc["mount"]["since"] = now_iso(NOW - 3 * 3600 - 60)
    doc["docker"]["since"] = now_iso(NOW - 50 * 3600)
    doc.update(changes)
    return doc


def test_healthy_view_folds_containers_and_leads_with_the_verdict() -> None:
    text = render.render_status(_doc(), now=NOW, host="host-1")
    lines = text.splitlines()
    assert lines[0] == f"volagent {__version__} on host-1: OK"
    assert "!" not in text
    assert "Mount      mounted for 3h01m at /volumes, last probe 1.2 ms" in lines
    assert "           nfs4 fs-1.efs:/ (fs-1)" in lines
    assert "Docker     connected for 2d02h, 0 events seen" in lines
    assert "Guard      disabled" in text
    assert "Containers 3 containers, 3 volumes" in lines
    assert "  a/web  3 containers: 3 ready" in lines
    assert "web-0" not in text  # healthy volumes fold into the group line
    assert "web-0 /data -> /volumes/r-a/web/data" in render.render_status(
        _doc(), now=NOW, verbose=True
    )
    assert not ANSI.search(text)


def test_problems_come_first_with_their_fix_and_their_own_line() -> None:
    doc = _doc(warnings=["config change refused: mount.type: bad; the old config stays"])
    doc["status"] = "critical"
    doc["mount"].update(state="stalled", error="probe timed out after 3 s")
    doc["docker"]["state"] = "connecting"
    doc["guard"] = {"enabled": True, "allowed": 7, "denied": 2}
    doc["containers"][1]["volumes"][0].update(state="violation", error="rule 5: other app")
    doc["containers"][2]["volumes"][0].update(state="late")
    lines = render.render_status(doc, now=NOW).splitlines()
    assert lines[0].endswith(": CRITICAL")
    fixes = [ln for ln in lines if ln.startswith("! ")]
    assert fixes[0] == "! config change refused: mount.type: bad; the old config stays"
    assert any("mount stalled" in f and "TCP 2049" in f for f in fixes)
    assert any("systemctl status docker" in f for f in fixes)
    assert any(f.startswith("! 1 volume late:") for f in fixes)
    assert any(f.startswith("! 1 volume violation:") for f in fixes)
    assert lines.index(fixes[-1]) < next(i for i, ln in enumerate(lines) if ln.startswith("Mount"))
    assert "           error: probe timed out after 3 s" in lines
    assert "Guard      enabled: 7 allowed, 2 denied" in lines
    assert "Containers 3 containers, 3 volumes, 2 with problems" in lines
    assert "  a/web  3 containers: 1 violation, 1 late, 1 ready" in lines
    assert "    x violation web-1 /data -> /volumes/r-a/web/data: rule 5: other app" in lines
    assert "    x late      web-2 /data -> /volumes/r-a/web/data" in lines


def test_rack_view_lists_hosts_and_flags_stale_ones() -> None:
    hosts = [
        {
            "host": "host-1",
            "instance_id": "i-1",
            "status": "ok",
            "version": "0.3.2",
            "registry": True,
            "last_seen": now_iso(NOW - 5),
        },
        {
            "host": "host-22",
            "instance_id": "",
            "status": "critical",
            "last_seen": now_iso(NOW - 600),
            "stale": True,
        },
    ]
    lines = render.render_status(_doc(hosts=hosts), now=NOW).splitlines()
    start = lines.index("Rack hosts 1 sharing this filesystem, 1 stale")
    header = ["HOST", "INSTANCE", "STATUS", "LAST", "SEEN", "VERSION", "REGISTRY"]
    assert lines[start + 1].split() == header
    assert lines[start + 2].split() == ["host-1", "i-1", "ok", "5s", "ago", "0.3.2", "yes"]
    # an entry without a version or a registry part shows them unknown
    stale = ["host-22", "-", "critical", "10m00s", "ago", "?", "?", "STALE"]
    assert lines[start + 3].split() == stale
    broken = render.render_status(_doc(hosts=[], hosts_error="cannot list hosts"), now=NOW)
    assert "cannot list hosts" in broken


def _host(name: str, version: str, registry: bool) -> dict[str, Any]:
    return {
        "host": name,
        "rack": "r1",
        "instance_id": f"i-{name}",
        "status": "ok",
        "version": version,
        "registry": registry,
        "last_seen": now_iso(NOW - 5),
        "age_s": 5.0,
        "stale": False,
    }


def test_the_rack_view_shows_each_hosts_version_and_whether_it_takes_part_in_the_registry() -> None:
    """During a rolling upgrade an operator waits until `volagent status --rack` shows every
    host in the registry (the README's upgrade path; the contract: "shows, per host, the
    version it runs and whether it takes part in the registry (hosts on 0.2 do not)"). The
    JSON document carried `version` and `registry`; the human view dropped both."""
    doc = make_state(host="new-1").status_document()
    doc["hosts"] = [_host("new-1", "0.3.2", True), _host("old-1", "0.2.4", False)]
    text = render.render_status(doc, now=NOW)
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("  ")}
    header = rows["HOST"]
    assert header.index("VERSION") < header.index("REGISTRY")
    for host, version, part in (("new-1", "0.3.2", "yes"), ("old-1", "0.2.4", "no")):
        row = rows[host]
        assert (row[-2], row[-1]) == (version, part), text
    coloured = render.render_status(doc, now=NOW, color=True)
    assert "\x1b[33mno" in coloured and ANSI.sub("", coloured) == text


def test_rack_view_shows_usage_per_app_biggest_first() -> None:
    usage = [
        {
            "app": "shop",
            "bytes": 3 << 30,
            "inodes": 1200,
            "quota_bytes": 2 << 30,
            "over_quota": True,
            "measured": now_iso(NOW - 90),
        },
        {
            "app": "blog",
            "bytes": 5 << 20,
            "inodes": 40,
            "quota_bytes": None,
            "over_quota": False,
            "measured": now_iso(NOW - 30),
        },
    ]
    lines = render.render_status(_doc(hosts=[], usage=usage), now=NOW).splitlines()
    start = lines.index("Usage      2 apps measured, 1 over quota")
    assert lines[start + 1].split() == ["APP", "SIZE", "FILES", "QUOTA", "MEASURED"]
    assert lines[start + 2].split() == ["shop", "3.0", "GiB", "1200", "2.0", "GiB", "1m30s", "ago"]
    assert lines[start + 3].split() == ["blog", "5.0", "MiB", "40", "-", "30s", "ago"]


def test_colour_codes_only_add_to_the_plain_text() -> None:
    doc = _doc()
    doc["containers"][0]["volumes"][0]["state"] = "failed"
    coloured = render.render_status(doc, color=True, now=NOW)
    assert "\x1b[31m" in coloured
    assert ANSI.sub("", coloured) == render.render_status(doc, now=NOW)


def test_empty_and_odd_documents_still_render() -> None:
    text = render.render_status({"status": "weird"}, now=NOW)
    assert text.startswith("volagent ?: WEIRD")
    assert "Containers none" in text
    assert render.ago("not a time", NOW) == "?"
    assert render.ago(None, NOW) == "?"


def test_strings_from_containers_cannot_drive_the_terminal() -> None:
    evil = "/volumes/r-a/web/\x1b[2J\x1b[H\rvolagent 0.1.0: OK\x1b]0;title\x07"
    doc = _doc(warnings=["bad \x1b[31mwarning\r"])
    c = doc["containers"][0]
    c["name"] = "web\x1b[8m"
    c["volumes"][0].update(host=evil, state="violation", error="nope\rOK")
    for color in (False, True):
        text = render.render_status(doc, now=NOW, verbose=True, host="h\x1b", color=color)
        plain = ANSI.sub("", text)  # the view's own colours, when asked for
        assert not set(plain) & {"\x1b", "\r", "\x07"}, repr(plain)
        assert "/volumes/r-a/web/\\x1b[2J\\x1b[H\\rvolagent 0.1.0: OK\\x1b]0;title\\x07" in plain
        assert "web\\x1b[8m" in plain
        assert "nope\\rOK" in plain
        assert "bad \\x1b[31mwarning\\r" in plain
        assert plain.splitlines()[0].startswith(f"volagent {__version__} on h\\x1b: ")


def test_one_formatter_for_sizes_in_both_spellings() -> None:
    # status, gc and the quota warning; the warning writes sizes as the config does
    spelled = [(n, format_size(n), format_size(n, sep="")) for n in (0, 1023, 1536, 50 << 30)]
    assert spelled == [
        (0, "0 B", "0B"),
        (1023, "1023 B", "1023B"),
        (1536, "1.5 KiB", "1.5KiB"),
        (50 << 30, "50.0 GiB", "50.0GiB"),
    ]
    assert Size(format_size(50 << 30, sep="")).bytes == 50 << 30
