"""Logging (structlog): JSON lines for machines, a readable console on an interactive terminal."""

from __future__ import annotations

import importlib
import importlib.util
import io
import logging
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Literal, TextIO, cast

if TYPE_CHECKING:
    from structlog.typing import Processor

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


def _rich_installed() -> bool:
    return importlib.util.find_spec("rich") is not None


def import_structlog(console: bool) -> ModuleType:
    """structlog, imported without rich unless its console renderer is wanted.

    structlog imports rich whenever it is installed, for its console's tracebacks,
    and rich costs about 60 ms of CPU; JSON lines never use it. So when structlog
    is first imported for JSON lines, an import of rich fails for that moment (a
    None in sys.modules makes it raise ImportError, which structlog expects when
    rich is not installed), and rich stays importable afterwards for the commands
    that draw with it. A console wanted later in the same process (the sandbox,
    tests) gets structlog's console module back with rich, as it would have had.
    """
    if "structlog" not in sys.modules and "rich" not in sys.modules and not console:
        sys.modules["rich"] = None  # type: ignore[assignment]  # None: "not importable"
        try:
            import structlog  # noqa: PLC0415
        finally:
            del sys.modules["rich"]
    import structlog  # noqa: PLC0415
    import structlog.dev  # noqa: PLC0415

    if console and getattr(structlog.dev, "rich", None) is None and _rich_installed():
        importlib.reload(structlog.dev)
    return structlog


def configure_logging(level: str = "info", fmt: LogFormat = "auto") -> None:
    """Configure structlog once per process; safe to call again (tests, sandbox)."""
    use_console = fmt == "console" or (fmt == "auto" and _interactive())
    # Imported when logging is configured, not with this module: structlog imports its dev
    # console (and rich, for a console: see above) with it, which commands that never log
    # (`--version`, `--help`, `config check`) should not pay.
    structlog = import_structlog(use_console)
    renderer: Processor = (
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
        # One write per line, its newline included (PrintLogger's print() makes two): worker
        # processes share stderr, and a pipe keeps a write of up to PIPE_BUF (4,096) bytes
        # whole (https://man7.org/linux/man-pages/man7/pipe.7.html), so their lines never
        # cut each other; under PYTHONUNBUFFERED it is one syscall a line, not two.
        logger_factory=structlog.WriteLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=False,
    )
