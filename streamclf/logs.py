"""structlog set-up shared by every command: logs go to stderr, never into stdout's data."""

from __future__ import annotations

import logging
import os
import sys

import structlog

LEVELS = ("debug", "info", "warning", "error")


def configure_logging(level: str = "warning", fmt: str = "auto") -> None:
    """JSON lines for journald and pipes, readable console lines on a terminal.

    "auto" picks JSON under systemd ($JOURNAL_STREAM) or when stderr is not a terminal.
    """
    if fmt == "auto":
        fmt = "json" if os.environ.get("JOURNAL_STREAM") or not sys.stderr.isatty() else "console"
    renderer = (structlog.processors.JSONRenderer() if fmt == "json"
                else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(_StderrNow()),
        cache_logger_on_first_use=False,
    )


class _StderrNow:
    """Writes to whatever sys.stderr is at the time, so the live view can redirect it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()
