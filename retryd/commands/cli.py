"""The `retryd` command line: run, once, plan, inspect, iam-policy, ledger, sandbox, config."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import anyio

from retryd.errors import RetrydError
from retryd.logs import configure_logging
from retryd.settings import CONFIG_ENV, Settings, load_settings

DESCRIPTION = """\
retryd redrives AWS dead-letter queues. Each cycle it finds the DLQs it is
responsible for, works out where every message must go back to (Lambda, Step
Functions, SQS, SNS or EventBridge), checks the target against the allowlist and
the attempt limit, resubmits it or parks it in the parking queue with a reason,
and deletes it from the DLQ only once its copy is safe.

AWS endpoint, region and credentials come from the standard AWS chain
(AWS_ENDPOINT_URL, AWS_REGION, AWS_PROFILE, the ECS task role, ...).
"""

EPILOG = f"""\
configuration: a TOML file (--config PATH or ${CONFIG_ENV}); any field can be
overridden with RETRYD_<GROUP>__<FIELD>, e.g. RETRYD_SCHEDULE__INTERVAL_S=30.
exit codes: 0 ok, 1 a cycle failed, 2 invalid configuration, 3 sandbox extra
missing, 4 parking queue missing.
"""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help=f"TOML settings file (default: ${CONFIG_ENV}, else environment only)",
    )
    parser = argparse.ArgumentParser(
        prog="retryd",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "run",
        parents=[common],
        help="run as a daemon: a cycle every schedule.interval_s until SIGTERM/SIGINT",
        description="Run cycles every schedule.interval_s, serve /metrics, /healthz and "
        "/readyz on http.port, and stop cleanly on SIGTERM/SIGINT: stop receiving, let "
        "in-flight messages settle for shutdown.drain_timeout_s, exit 0. A second signal "
        "exits at once.",
    )
    commands.add_parser(
        "once",
        parents=[common],
        help="run one cycle, print a one-line summary, exit (0 ok, 1 the cycle hit errors)",
        description="Run exactly one cycle and print a summary line: queues, received, "
        "and how many messages were resubmitted, parked, deferred or failed, by reason.",
    )
    sandbox = commands.add_parser(
        "sandbox",
        help="try retryd with no AWS account: an embedded emulator, a demo world, one cycle",
        description="Start an in-process AWS emulator (moto), create demo DLQs and "
        "targets of every type, run one cycle, and print what happened to every message. "
        "Needs the sandbox extra: pip install 'retryd[sandbox]'.",
    )
    sandbox.add_argument(
        "--scale",
        type=int,
        default=1,
        choices=range(1, 101),
        metavar="N",
        help="send every demo message N times (1-100), to watch a bigger cycle",
    )
    sandbox.add_argument(
        "--serve",
        action="store_true",
        help="build the demo world and keep the emulator up (until Ctrl-C) instead of running "
        "a cycle, so that plan, inspect, once and run can be tried against it",
    )
    sandbox.add_argument(
        "--port",
        type=int,
        default=0,
        metavar="PORT",
        help="with --serve: the emulator's port (default: a free one)",
    )
    plan = commands.add_parser(
        "plan",
        parents=[common],
        help="dry run: say what `once` would do with every message, change nothing",
        description="Receive each DLQ's messages with a short lease, resolve and guard "
        "every one, print what would happen and why, then release every lease "
        "(ChangeMessageVisibility 0). Nothing is resubmitted, parked, deleted or written "
        "to the ledger.",
    )
    plan.add_argument("--output", choices=("text", "json"), default="text")
    plan.add_argument(
        "--max-messages",
        type=int,
        default=100,
        metavar="N",
        help="messages looked at per DLQ (default: 100)",
    )
    inspect = commands.add_parser(
        "inspect",
        parents=[common],
        help="per DLQ: depth, what feeds it, and its messages grouped by failure",
        description="For each DLQ (all discovered ones, or those named): its depth, the "
        "resources discovery found feeding it, and its messages grouped by target and "
        "error signature, with counts and the oldest and newest of each group. Leases "
        "taken to read messages are released at once.",
    )
    inspect.add_argument("queues", nargs="*", metavar="QUEUE", help="DLQ names or URLs")
    inspect.add_argument("--output", choices=("text", "json"), default="text")
    inspect.add_argument(
        "--max-messages",
        type=int,
        default=1000,
        metavar="N",
        help="messages sampled per DLQ for the failure groups (default: 1000)",
    )
    iam = commands.add_parser(
        "iam-policy",
        parents=[common],
        help="print the least-privilege IAM policy for this configuration",
        description="Print the IAM policy document retryd needs for this configuration: "
        "SQS read/delete only on the DLQs it discovers, send only to the parking queue, "
        "invoke/start/send/publish/put only on allow_targets, and the ledger table.",
    )
    iam.add_argument("--account", metavar="ID", help="AWS account id (default: any, '*')")
    iam.add_argument("--region", metavar="REGION", help="AWS region (default: any, '*')")
    iam.add_argument(
        "--partition",
        help="ARN partition (default: the region's, e.g. aws-cn for cn-north-1; else aws)",
    )
    iam.add_argument(
        "--kms",
        action="store_true",
        help="look up the KMS keys of encrypted DLQs, parking queue and SQS/SNS targets in "
        "AWS, and grant kms:Decrypt / kms:GenerateDataKey on exactly those keys",
    )
    ledger = commands.add_parser("ledger", help="attempt-ledger tools")
    ledger_commands = ledger.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    ledger_commands.add_parser(
        "create-table",
        parents=[common],
        help="create the DynamoDB ledger table (ledger.table) with TTL enabled",
    )
    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    config_commands.add_parser(
        "check",
        parents=[common],
        help="validate the configuration and print the effective settings (exit 0 or 2)",
    )
    return parser


def _load(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    configure_logging(settings.log.level, settings.log.format)
    return settings


def _once(args: argparse.Namespace) -> int:
    from retryd.service.lifecycle import run_once  # noqa: PLC0415 - keeps `--help` fast

    settings = _load(args)
    report = anyio.run(run_once, settings)
    print(report.summary())
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    if report.fatal is not None:
        return report.fatal.exit_code
    return 0 if report.ok else 1


def _run(args: argparse.Namespace) -> int:
    from retryd.service.lifecycle import run_daemon  # noqa: PLC0415 - keeps `--help` fast

    settings = _load(args)
    anyio.run(run_daemon, settings)
    return 0


def _sandbox(args: argparse.Namespace) -> int:
    from retryd.sandbox.command import run_sandbox, serve_sandbox  # noqa: PLC0415 - moto is an optional extra

    # The sandbox prints its own report of every decision; log lines would repeat it.
    configure_logging("error", "auto")
    if args.serve:
        return serve_sandbox(args.scale, args.port)
    return run_sandbox(args.scale)


def _plan(args: argparse.Namespace) -> int:
    from retryd.commands.plan import run_plan  # noqa: PLC0415 - keeps `--help` fast

    settings = _load(args)
    return anyio.run(
        partial(run_plan, settings, output=args.output, max_messages=args.max_messages)
    )


def _inspect(args: argparse.Namespace) -> int:
    from retryd.commands.inspect import run_inspect  # noqa: PLC0415 - keeps `--help` fast

    settings = _load(args)
    return anyio.run(
        partial(
            run_inspect,
            settings,
            queues=args.queues,
            output=args.output,
            max_messages=args.max_messages,
        )
    )


def _iam_policy(args: argparse.Namespace) -> int:
    from retryd.commands.iam_policy import run_iam_policy  # noqa: PLC0415 - keeps `--help` fast
    from retryd.discovery.queues import partition_for_region  # noqa: PLC0415 - keeps `--help` fast

    # Logs go to stderr (--kms calls AWS), so the document alone is on stdout.
    settings = _load(args)
    partition = args.partition or (partition_for_region(args.region) if args.region else "aws")
    return run_iam_policy(
        settings, account=args.account, region=args.region, partition=partition, kms=args.kms
    )


def _ledger(args: argparse.Namespace) -> int:
    from retryd.ledger import create_table  # noqa: PLC0415 - keeps `--help` fast

    settings = _load(args)
    print(anyio.run(create_table, settings))
    return 0


def _config_check(args: argparse.Namespace) -> int:
    from retryd.admission.ratelimit import effective_rates  # noqa: PLC0415 - keeps `--help` fast

    settings = load_settings(args.config)
    rates = {"effective_rate_limits": effective_rates(settings.rate_limit)}
    print(json.dumps(settings.model_dump(mode="json") | rates, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {
        "run": _run,
        "once": _once,
        "plan": _plan,
        "inspect": _inspect,
        "iam-policy": _iam_policy,
        "ledger": _ledger,
        "sandbox": _sandbox,
        "config": _config_check,
    }
    try:
        return handlers[args.command](args)
    except RetrydError as exc:
        print(f"retryd: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
