"""The log: every line on stdout is JSON, library records included."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

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
