"""Structured logs: JSON lines for machines, readable lines in a terminal.

Every line made while a host processes a command carries ``host``, ``agent``,
``correlation_id`` and ``trace_id``/``span_id`` (``_telemetry.add_trace_context``).
"""

from __future__ import annotations

import logging
import sys

import structlog

from .telemetry import add_trace_context


class StderrLogger:
    """Writes each line to whatever ``sys.stderr`` is when it writes, not to the stream it was
    when logging was configured: a stream swapped and closed since (a CLI runner's, a test
    capture's, a supervisor's) then neither loses later lines nor raises into the code that
    logs (an activation failed on "I/O operation on closed file"). A line that cannot be
    written at all is dropped, as the standard library's handlers do."""

    def msg(self, message: str) -> None:
        try:
            print(message, file=sys.stderr, flush=True)
        except (ValueError, OSError):  # stderr closed or gone: a log line must not fail the caller
            pass

    log = debug = info = warn = warning = error = critical = exception = fatal = failure = err = msg


def _stderr_logger(*_args: object) -> StderrLogger:
    return StderrLogger()


def configure_logging(fmt: str = "auto", level: str = "INFO") -> None:
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_trace_context,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=True,
    )
