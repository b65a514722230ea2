"""`retryd console`: the subcommand that starts the web console (retryd/console)."""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

from retryd.logs import configure_logging

CONSOLE_DESCRIPTION = """Serve the team's web console: the DLQs, failure groups and parked copies
the daemon recorded, pauses, redrive jobs and the audit, as pages and as a JSON API
(/api/...). A process of its own, beside the daemon; it never receives a message.
Sign-in is [console] auth: alb-oidc (default), token, or none (loopback only).
exit codes: 2 bad configuration (including auth = "none" off loopback).
"""


def _console(args: argparse.Namespace) -> int:
    # Imported here, not above, so that `retryd --help` (which builds this subcommand's
    # parser) loads no pydantic and no web server.
    import anyio  # noqa: PLC0415

    from retryd.console.server import serve_console  # noqa: PLC0415
    from retryd.settings import load_settings  # noqa: PLC0415

    settings = load_settings(args.config)
    configure_logging(settings.log.level, settings.log.format)
    anyio.run(partial(serve_console, settings, args.listen))
    return 0


def add_console_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add `console` to `commands` (an argparse subparsers object)."""
    console = commands.add_parser(
        "console",
        parents=[common],
        help="serve the web console (pages and JSON API) for the team",
        description=CONSOLE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    console.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="where to listen (default: console.listen, 127.0.0.1:8088)",
    )
    console.set_defaults(handler=_console)
