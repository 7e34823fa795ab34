"""Logging: structlog JSON lines on stdout, one event name per line."""

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


def configure(level: str = "info") -> None:
    """(Re)configures structlog; called at start and when the config's log_level changes."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )


def get(name: str, **bound: Any) -> Any:
    """A logger bound to a component name; callers pass event names and fields.

    A lazy proxy, not a logger bound once: each call assembles its logger from the current
    configuration, so a log level changed by a config reload applies to loggers made before."""
    return structlog.get_logger(component=name, **bound)
