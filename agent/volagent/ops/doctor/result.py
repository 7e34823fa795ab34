"""The outcome of one `volagent doctor` check, and how the report prints it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum

from volagent.terminal import printable


class Status(StrEnum):
    """A check's outcome, as `status` of `volagent doctor --json`."""

    PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"


PASS, FAIL, WARN, SKIP = Status.PASS, Status.FAIL, Status.WARN, Status.SKIP


@dataclass(frozen=True)
class CheckResult:
    """One check: its name, pass/fail/warn/skip, what was found, and the fix."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    @classmethod
    def ok(cls, name: str, detail: str) -> CheckResult:
        return cls(name, PASS, detail)

    @classmethod
    def failed(cls, name: str, detail: str, fix: str) -> CheckResult:
        return cls(name, FAIL, detail, fix)

    @classmethod
    def warning(cls, name: str, detail: str, fix: str) -> CheckResult:
        return cls(name, WARN, detail, fix)

    @classmethod
    def skip(cls, name: str, detail: str) -> CheckResult:
        return cls(name, SKIP, detail)

    @property
    def failing(self) -> bool:
        return self.status == FAIL


_MARK = {PASS: "PASS", FAIL: "FAIL", WARN: "WARN", SKIP: "SKIP"}
_COLOR = {PASS: "\033[32m", FAIL: "\033[31;1m", WARN: "\033[33m", SKIP: "\033[2m"}
_RESET = "\033[0m"


def report(results: Sequence[CheckResult], color: bool = False) -> str:
    """The report: one line per check, its fix under it, and a verdict line."""
    width = max((len(r.name) for r in results), default=0)
    lines = []
    for r in results:
        mark = _MARK[r.status]
        if color:
            mark = f"{_COLOR[r.status]}{mark}{_RESET}"
        # details quote what the host said (Docker's errors, names): shown escaped
        lines.append(f"{mark}  {printable(r.name):<{width}}  {printable(r.detail)}")
        if r.fix:
            lines.append(f"      {'':<{width}}  fix: {printable(r.fix)}")
    counts = {s: sum(1 for r in results if r.status == s) for s in _MARK}
    others = ", ".join(
        f"{counts[s]} {word}" for s, word in ((WARN, "warned"), (SKIP, "skipped")) if counts[s]
    )
    verdict = (
        f"{counts[FAIL]} of {len(results)} checks failed"
        if counts[FAIL]
        else f"no check failed ({counts[PASS]} passed)"
    )
    lines.append(verdict + (f", {others}" if others else ""))
    return "\n".join(lines) + "\n"


def json_report(results: Sequence[CheckResult]) -> str:
    """The report for a program (`volagent doctor --json`): every check in order, and
    whether none failed. Strings are as found (JSON escapes what a terminal would not)."""
    doc = {
        "ok": not any(r.failing for r in results),
        "failed": sum(1 for r in results if r.failing),
        "checks": [asdict(r) for r in results],
    }
    return json.dumps(doc, indent=2) + "\n"
