"""The operator's subcommands (pause, resume, pauses, audit, redrive, jobs), registered in one go.

Each parser stores its handler as `handler`; `cli.main` calls it like its own.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio

from retryd.logs import configure_logging
from retryd.settings import Settings, load_settings

Handler = Callable[[argparse.Namespace], int]


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    configure_logging(settings.log.level, settings.log.format)
    return settings


def _pause(args: argparse.Namespace) -> int:
    from retryd.commands.pause import run_pause  # noqa: PLC0415 - keeps `--help` fast

    return anyio.run(
        partial(
            run_pause,
            _settings(args),
            pattern=args.target,
            every=args.all,
            reason=args.reason,
            for_text=args.for_,
            until_text=args.until,
        )
    )


def _resume(args: argparse.Namespace) -> int:
    from retryd.commands.pause import run_resume  # noqa: PLC0415 - keeps `--help` fast

    return anyio.run(partial(run_resume, _settings(args), selectors=args.targets, every=args.all))


def _pauses(args: argparse.Namespace) -> int:
    from retryd.commands.pause import run_pauses  # noqa: PLC0415 - keeps `--help` fast

    return anyio.run(partial(run_pauses, _settings(args), output=args.output))


def _audit(args: argparse.Namespace) -> int:
    from retryd.commands.audit import run_audit  # noqa: PLC0415 - keeps `--help` fast

    return anyio.run(partial(run_audit, _settings(args), limit=args.limit, output=args.output))


def add_operator_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add the operator's subcommands to `commands` (an argparse subparsers object)."""
    pause = commands.add_parser(
        "pause",
        parents=[common],
        help="hold every message for the targets matching a glob (all replicas, next cycle)",
        description="Store a pause in the ledger's backend: every replica defers the "
        "messages of matching targets (reason `paused`, no attempt spent) from its next "
        "cycle until the pause ends (--for, --until) or `retryd resume`.",
    )
    pause.add_argument("target", nargs="?", metavar="TARGET_GLOB", help="target ARN glob")
    pause.add_argument("--all", action="store_true", help="pause every target")
    pause.add_argument("--reason", required=True, help="why (shown by pauses, plan, inspect)")
    pause.add_argument("--for", dest="for_", metavar="DURATION", help="e.g. 30m, 2h, 1d")
    pause.add_argument("--until", metavar="TIME", help="ISO 8601, e.g. 2026-11-30T18:00:00Z")
    pause.set_defaults(handler=_pause)
    resume = commands.add_parser(
        "resume",
        parents=[common],
        help="end pauses (by glob or pause id, or --all); held messages go next cycle",
    )
    resume.add_argument("targets", nargs="*", metavar="TARGET_GLOB|PAUSE_ID")
    resume.add_argument("--all", action="store_true", help="end every pause")
    resume.set_defaults(handler=_resume)
    pauses = commands.add_parser("pauses", parents=[common], help="list the pauses in force")
    pauses.add_argument("--output", choices=("text", "json"), default="text")
    pauses.set_defaults(handler=_pauses)
    audit = commands.add_parser(
        "audit", parents=[common], help="the latest operator actions (who, what, when, outcome)"
    )
    audit.add_argument("--limit", type=int, default=20, metavar="N")
    audit.add_argument("--output", choices=("text", "json"), default="text")
    audit.set_defaults(handler=_audit)
