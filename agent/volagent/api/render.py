"""The human view of the status document: what an operator reads over SSH.

One screen, the verdict first, then what to fix, then mount, Docker and guard, then the
containers grouped by app and service. Healthy groups fold into one line each; every
volume with a problem gets its own highlighted line. Colour only on a terminal, never with
NO_COLOR. Every string of the document is shown with its control characters escaped (see
terminal): paths, names and errors come from containers' creators. Standard library only:
this runs on the fast `volagent status` path.
"""

from __future__ import annotations

import time
from datetime import datetime

from volagent.terminal import format_size, printable, printable_doc

TYPE_CHECKING = False  # typing costs an import on the fast path; annotations stay lazy
if TYPE_CHECKING:
    from typing import Any

PROBLEM_STATES = ("late", "violation", "failed")
_STATE_ORDER = ("violation", "failed", "late", "pending", "ready")  # worst first
_VERDICT_STYLE = {"ok": "green", "degraded": "yellow", "critical": "red"}
_STATE_STYLE = {
    "ready": "green",
    "pending": "dim",
    "late": "yellow",
    "violation": "red",
    "failed": "red",
    "mounted": "green",
    "local": "yellow",
    "connected": "green",
}
_SGR = {"red": "31", "green": "32", "yellow": "33", "dim": "2", "bold": "1"}

# what an operator does about each kind of trouble
FIX_MOUNT = {
    "stalled": "the shared filesystem does not answer: check the mount target's security group "
    "(TCP 2049 from this host) and network, then `volagent doctor`; volagent remounts by itself",
    "unmounted": "nothing is mounted: see the mount error above and run `volagent doctor`",
    "mounting": "volagent is mounting the shared filesystem; if this lasts, run `volagent doctor`",
    "disabled": "mounting is disabled in the config ([mount])",
    "local": "data stays on this host's disk, not shared with the rack: for a shared "
    "mount set [mount] type to efs or nfs4, and run `volagent doctor` if EFS failed",
}
FIX_DOCKER = "Docker is not connected: check `systemctl status docker` and [docker] url"
FIX_VOLUME = {
    "late": "the container started before its directory was ready; restart it if it needs "
    "the owner, and enable [guard] so Docker waits for volagent",
    "violation": "the bind leaves the app's namespace <mount point>/<rack>-<app>/: fix the "
    "volume path or the app/service labels",
    "failed": "the directory could not be prepared: see the error and the agent's log",
}


def ago(iso: str | None, now: float) -> str:
    """`3h12m` since an ISO-8601 time; `?` when there is none or it does not parse."""
    if not iso:
        return "?"
    try:
        then = datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return "?"
    secs = max(0, int(now - then))
    if secs < 60:
        return f"{secs}s"
    mins, secs = divmod(secs, 60)
    if mins < 60:
        return f"{mins}m{secs:02d}s"
    hours, mins = divmod(mins, 60)
    if hours < 48:
        return f"{hours}h{mins:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


class _Painter:
    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, style: str | None) -> str:
        if not self.color or not style:
            return text
        codes = ";".join(_SGR[s] for s in style.split("+"))
        return f"\x1b[{codes}m{text}\x1b[0m"

    def state(self, state: str, width: int = 0) -> str:
        # pad before painting: escape codes would count towards the width
        return self(state.ljust(width), _STATE_STYLE.get(state, "red"))


def render_status(
    doc: dict[str, Any],
    *,
    color: bool = False,
    verbose: bool = False,
    now: float | None = None,
    host: str = "",
) -> str:
    """The status document as text: the verdict, fixes, mount, Docker, guard, containers,
    and with `hosts` in the document, the rack's hosts."""
    paint = _Painter(color)
    now = time.time() if now is None else now
    doc = printable_doc(doc)
    host = printable(host)
    out: list[str] = []
    verdict = str(doc.get("status", "unknown"))
    host = f" on {host}" if host else ""
    badge = paint(verdict.upper(), _VERDICT_STYLE.get(verdict, "red") + "+bold")
    out.append(f"volagent {doc.get('version', '?')}{host}: {badge}")
    fixes = _fixes(doc)
    if fixes:
        out.append("")
        out.extend(f"{paint('!', 'yellow+bold')} {line}" for line in fixes)
    out.append("")
    out.extend(_mount_lines(doc.get("mount") or {}, paint, now))
    out.extend(_docker_lines(doc.get("docker") or {}, paint, now))
    guard = doc.get("guard") or {}
    if guard.get("enabled"):
        allowed, denied = guard.get("allowed", 0), guard.get("denied", 0)
        out.append(f"Guard      enabled: {allowed} allowed, {denied} denied")
    else:
        out.append("Guard      disabled (containers may start before their directories exist)")
    out.append("")
    out.extend(_container_lines(doc.get("containers") or [], paint, verbose))
    if "hosts" in doc:
        out.append("")
        out.extend(_host_lines(doc, paint, now))
    if doc.get("usage"):
        out.append("")
        out.extend(_usage_lines(doc["usage"], paint, now))
    return "\n".join(out) + "\n"


def _usage_lines(usage: list[dict[str, Any]], paint: _Painter, now: float) -> list[str]:
    """Per app on the shared filesystem, biggest first, over-quota apps in red."""
    over = sum(1 for u in usage if u.get("over_quota"))
    summary = f"{len(usage)} apps measured" + (
        ", " + paint(f"{over} over quota", "red+bold") if over else ""
    )
    lines = [f"Usage      {summary}"]
    rows = [("APP", "SIZE", "FILES", "QUOTA", "MEASURED")]
    for u in usage:
        quota = u.get("quota_bytes")
        size, files = format_size(int(u.get("bytes") or 0)), str(u.get("inodes", "?"))
        limit = format_size(int(quota)) if isinstance(quota, int) else "-"
        measured = ago(u.get("measured"), now) + " ago" if u.get("measured") else "?"
        rows.append((str(u.get("app", "?")), size, files, limit, measured))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for n, row in enumerate(rows):
        text = "  " + "  ".join(row[i].ljust(widths[i]) for i in range(5))
        flagged = n and usage[n - 1].get("over_quota")
        lines.append(paint(text.rstrip(), "red") if flagged else text.rstrip())
    return lines


def _fixes(doc: dict[str, Any]) -> list[str]:
    lines = [str(w) for w in doc.get("warnings") or []]
    mount_state = (doc.get("mount") or {}).get("state")
    if mount_state in FIX_MOUNT:
        lines.append(f"mount {mount_state}: {FIX_MOUNT[mount_state]}")
    if (doc.get("docker") or {}).get("state") not in ("connected", None):
        lines.append(FIX_DOCKER)
    counts = _volume_counts(doc.get("containers") or [])
    for state in PROBLEM_STATES:
        if counts.get(state):
            n = counts[state]
            lines.append(f"{n} volume{'s' if n > 1 else ''} {state}: {FIX_VOLUME[state]}")
    return lines


def _volume_counts(containers: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in containers:
        for v in c.get("volumes") or []:
            counts[v.get("state", "?")] = counts.get(v.get("state", "?"), 0) + 1
    return counts


def _mount_lines(m: dict[str, Any], paint: _Painter, now: float) -> list[str]:
    state = str(m.get("state", "?"))
    fs_id = f"({m['file_system_id']})" if m.get("file_system_id") else ""
    what = " ".join(p for p in (m.get("type") or "", m.get("source") or "", fs_id) if p)
    probe = m.get("last_probe_ms")
    probe_text = f", last probe {probe:.1f} ms" if isinstance(probe, int | float) else ""
    lines = [
        f"Mount      {paint.state(state)} for {ago(m.get('since'), now)}"
        f" at {m.get('mount_point', '?')}{probe_text}"
    ]
    if what:
        lines.append(f"           {what}")
    if m.get("error"):
        lines.append(f"           {paint('error: ' + str(m['error']), 'red')}")
    return lines


def _docker_lines(d: dict[str, Any], paint: _Painter, now: float) -> list[str]:
    state = str(d.get("state", "?"))
    lines = [
        f"Docker     {paint.state(state)} for {ago(d.get('since'), now)},"
        f" {d.get('events', 0)} events seen"
    ]
    if d.get("error"):
        lines.append(f"           {paint('error: ' + str(d['error']), 'red')}")
    return lines


def _container_lines(containers: list[dict[str, Any]], paint: _Painter, verbose: bool) -> list[str]:
    if not containers:
        return ["Containers none with volumes under the mount point"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in containers:
        groups.setdefault((str(c.get("app") or "?"), str(c.get("service") or "?")), []).append(c)
    counts = _volume_counts(containers)
    problems = sum(counts.get(s, 0) for s in PROBLEM_STATES)
    summary = f"{len(containers)} containers, {sum(counts.values())} volumes"
    if problems:
        summary += ", " + paint(f"{problems} with problems", "red+bold")
    lines = [f"Containers {summary}"]
    width = max(len(f"{a}/{s}") for a, s in groups)
    for (app, service), members in sorted(groups.items()):
        group_counts = _volume_counts(members)
        states = ", ".join(
            f"{n} {paint.state(s)}" for s, n in sorted(group_counts.items(), key=_state_order)
        )
        label = f"{app}/{service}".ljust(width)
        lines.append(f"  {label}  {len(members)} container{'s' * (len(members) != 1)}: {states}")
        for c in members:
            for v in c.get("volumes") or []:
                state = str(v.get("state", "?"))
                if not verbose and state not in PROBLEM_STATES:
                    continue
                name = c.get("name") or str(c.get("id", "?"))[:12]
                mark = paint("x", "red+bold") if state in PROBLEM_STATES else " "
                ro = " (ro)" if v.get("read_only") else ""
                line = f"    {mark} {paint.state(state, 9)} {name} {v.get('container')}{ro}"
                line += f" -> {v.get('host')}"
                if v.get("error"):
                    line += ": " + paint(str(v["error"]), "red")
                lines.append(line)
    return lines


def _state_order(item: tuple[str, int]) -> int:
    return _STATE_ORDER.index(item[0]) if item[0] in _STATE_ORDER else -1


def _host_lines(doc: dict[str, Any], paint: _Painter, now: float) -> list[str]:
    hosts = doc.get("hosts") or []
    stale = sum(1 for h in hosts if h.get("stale"))
    summary = f"{len(hosts) - stale} sharing this filesystem"
    if stale:
        summary += ", " + paint(f"{stale} stale", "red+bold")
    lines = [f"Rack hosts {summary}"]
    if doc.get("hosts_error"):
        lines.append(f"           {paint(str(doc['hosts_error']), 'red')}")
    if not hosts:
        return lines
    # the version each host runs and whether it takes part in the rack's registry of binds:
    # what a rolling upgrade is watched by
    rows = [("HOST", "INSTANCE", "STATUS", "LAST SEEN", "VERSION", "REGISTRY", "")]
    for h in hosts:
        flag = "STALE" if h.get("stale") else ""
        seen = ago(h.get("last_seen"), now) + " ago" if h.get("last_seen") else "?"
        host, instance = str(h.get("host", "?")), str(h.get("instance_id") or "-")
        part = h.get("registry")
        registry = "yes" if part is True else "no" if part is False else "?"
        version = str(h.get("version") or "?")
        rows.append((host, instance, str(h.get("status", "?")), seen, version, registry, flag))
    columns = len(rows[0]) - 1
    widths = [max(len(r[i]) for r in rows) for i in range(columns)]
    for n, row in enumerate(rows):
        cells = [row[i].ljust(widths[i]) for i in range(columns)]
        if n:
            cells[2] = paint(cells[2], _VERDICT_STYLE.get(row[2], "red"))
            if row[5] != "yes":  # the last column: padded outside the paint, then stripped
                cells[5] = paint(row[5], "yellow") + cells[5][len(row[5]) :]
        flag = row[columns]
        text = "  " + "  ".join(cells) + ("  " + paint(flag, "red+bold") if flag else "")
        lines.append(text.rstrip())
    return lines
