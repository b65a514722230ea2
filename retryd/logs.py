"""Logging (structlog): JSON lines for machines, a readable console on an interactive terminal."""

from __future__ import annotations

import io
import logging
import sys
from typing import Literal, TextIO, cast

LogFormat = Literal["auto", "json", "console"]


class _CurrentStderr(io.TextIOBase):
    """Whatever sys.stderr is when a line is written, not when logging was configured.

    Test runners and the sandbox swap sys.stderr; a logger holding on to an old,
    since closed stream would fail on its next line.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _interactive() -> bool:
    # Logs go to stderr so stdout stays free for command output (summaries, JSON);
    # the console renderer is used only when a person is watching both.
    return sys.stdout.isatty() and sys.stderr.isatty()


def configure_logging(level: str = "info", fmt: LogFormat = "auto") -> None:
    """Configure structlog once per process; safe to call again (tests, sandbox)."""
    # Imported when logging is configured, not with this module: structlog imports its dev
    # console and rich with it (over 100 ms), which commands that never log (`--version`,
    # `--help`, `config check`) should not pay.
    import structlog  # noqa: PLC0415

    use_console = fmt == "console" or (fmt == "auto" and _interactive())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=True)
        if use_console
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=False,
    )
