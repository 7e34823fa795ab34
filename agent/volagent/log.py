"""Logging: structlog JSON lines on stdout, one event name per line.

Libraries log through the standard `logging` module (watchdog, urllib3, botocore): their
warnings and errors are forwarded into the same JSON lines, so nothing the daemon logs goes
to stderr as free text.

Under systemd, with the lines going straight to the journal, each starts with its syslog
priority (`<4>` for a warning, sd-daemon(3)), which journald takes off and keeps as the
entry's priority (`SyslogLevelPrefix=`, on by default): `journalctl -p warning -u volagent`
then shows the warnings and errors alone.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

# syslog priorities (sd-daemon(3)) of the log levels
_PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}


def goes_to_journal(stream: TextIO) -> bool:
    """Whether `stream` is the journal's own stream: systemd sets JOURNAL_STREAM to its
    device and inode, and only a match means the lines reach journald unchanged (not a pipe
    or file the service redirected them to)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


class _JournalRenderer:
    """The JSON line, prefixed with the syslog priority of its level."""

    def __init__(self) -> None:
        self._json = structlog.processors.JSONRenderer(sort_keys=False)

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
        priority = _PRIORITIES.get(str(event.get("level", method)), 6)
        line = self._json(logger, method, event)
        return f"<{priority}>{line.decode() if isinstance(line, bytes) else line}"


class _ToStructlog(logging.Handler):
    """Forwards a standard library log record as a JSON line, its logger as the component."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"component": record.name}
            if record.exc_info and record.exc_info[0] is not None:
                fields["exc_info"] = record.exc_info
            structlog.get_logger().log(record.levelno, record.getMessage(), **fields)
        except Exception:
            self.handleError(record)


def _forward_stdlib_logging() -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _ToStructlog) for h in root.handlers):
        root.addHandler(_ToStructlog())
    # libraries' debug chatter is not the daemon's log, even at log_level = "debug"
    root.setLevel(logging.WARNING)


class _Stderr:
    """Whatever sys.stderr is at the time of each write (it may be replaced later)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str = "info", stderr: bool = False) -> None:
    """(Re)configures structlog; called at start and when the config's log_level changes.
    The lines go to stdout, or with `stderr` to stderr (a command whose stdout is its
    report)."""
    _forward_stdlib_logging()
    stream = sys.stderr if stderr else sys.stdout
    renderer: structlog.typing.Processor = (
        _JournalRenderer()
        if goes_to_journal(stream)
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(_Stderr() if stderr else sys.stdout),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def get(name: str, **bound: Any) -> Any:
    """A logger bound to a component name; callers pass event names and fields.

    A lazy proxy, not a logger bound once: each call assembles its logger from the current
    configuration, so a log level changed by a config reload applies to loggers made before."""
    return structlog.get_logger(component=name, **bound)
