"""Logging: structlog JSON lines on stdout, one event name per line.

Libraries log through the standard `logging` module (watchdog, urllib3, botocore): their
warnings and errors are forwarded into the same JSON lines, so nothing the daemon logs goes
to stderr as free text.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


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
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(_Stderr() if stderr else sys.stdout),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def get(name: str, **bound: Any) -> Any:
    """A logger bound to a component name; callers pass event names and fields.

    A lazy proxy, not a logger bound once: each call assembles its logger from the current
    configuration, so a log level changed by a config reload applies to loggers made before."""
    return structlog.get_logger(component=name, **bound)
