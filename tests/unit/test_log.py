"""The log: every line on stdout is JSON, library records included."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from volagent import log


@pytest.fixture
def configured() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()


def test_library_records_become_json_lines_on_stdout(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    log.configure("info")
    log.configure("info")  # a reload must not add a second handler
    logging.getLogger("watchdog.observers.inotify").error("queue_events() called")
    logging.getLogger("urllib3").info("library chatter below warning stays out")
    log.get("daemon").info("started", pid=1)
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(x["component"], x["event"], x["level"]) for x in lines] == [
        ("watchdog.observers.inotify", "queue_events() called", "error"),
        ("daemon", "started", "info"),
    ]
    assert err == ""


LOG_SOME = """
import logging
from volagent import log
log.configure("debug")
logger = log.get("t")
logger.debug("d"); logger.info("i"); logger.warning("w"); logger.error("e")
logging.getLogger("botocore").warning("a library's warning")
"""


def logged_lines(tmp_path: Path, journal_stream: str | None) -> list[str]:
    """The lines a process logs with its stdout a file, and JOURNAL_STREAM as given
    (`"self"`: the device and inode of that file, as systemd sets it for the journal)."""
    out = tmp_path / "out"
    with out.open("w") as stdout:
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        if journal_stream == "self":
            st = os.fstat(stdout.fileno())
            journal_stream = f"{st.st_dev}:{st.st_ino}"
        if journal_stream is not None:
            env["JOURNAL_STREAM"] = journal_stream
        subprocess.run(
            [sys.executable, "-c", LOG_SOME], stdout=stdout, env=env, check=True, timeout=60
        )
    return out.read_text().splitlines()


def test_lines_to_the_journal_carry_their_syslog_priority(tmp_path: Path) -> None:
    lines = logged_lines(tmp_path, "self")
    priorities = [line[: line.index(">") + 1] for line in lines]
    assert priorities == ["<7>", "<6>", "<4>", "<3>", "<4>"]
    # the rest of each line is the JSON line as always
    assert [json.loads(line[3:])["level"] for line in lines] == [
        "debug",
        "info",
        "warning",
        "error",
        "warning",
    ]


@pytest.mark.parametrize("journal_stream", [None, "1:2", "garbage"])
def test_lines_elsewhere_are_plain_json(tmp_path: Path, journal_stream: str | None) -> None:
    # not under systemd, or stdout redirected away from the journal's stream
    lines = logged_lines(tmp_path, journal_stream)
    assert [json.loads(line)["event"] for line in lines] == [
        "d",
        "i",
        "w",
        "e",
        "a library's warning",
    ]
