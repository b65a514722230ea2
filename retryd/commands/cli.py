"""The `retryd` command line: run, once, plan, inspect, iam-policy, ledger, sandbox, config.

Every failure a user can cause ends here as one line on stderr and an `ExitCode`,
never a traceback: the handlers raise `RetrydError`s, and `main` turns them (and
botocore's set-up errors, Ctrl-C and a closed pipe) into that line and code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, cast

from retryd.environment import CONFIG_ENV
from retryd.errors import (
    ExitCode,
    QueueNotFoundError,
    RetrydError,
    SandboxUnavailableError,
    UsageError,
    exit_code_lines,
)
from retryd.logs import configure_logging, import_structlog
from retryd.version import DISTRIBUTION, SANDBOX_INSTALL_HINT, package_version

# Start-up: a command imports what it uses when it runs. `retryd --version` answers before
# the command line is built, and building it imports the settings (pydantic) only for the
# help texts that name them; anyio, botocore, the models and the commands' own modules
# are imported by the handlers that use them.
if TYPE_CHECKING:
    from retryd.drain.cycle import CycleReport
    from retryd.settings import Settings

DESCRIPTION = """\
retryd redrives AWS dead-letter queues. Each cycle it finds the DLQs it is
responsible for, works out where every message must go back to (Lambda, Step
Functions, SQS, SNS or EventBridge), checks the target against the allowlist and
the attempt limit, resubmits it or parks it in the parking queue with a reason,
and deletes it from the DLQ only once its copy is safe.

AWS endpoint, region and credentials come from the standard AWS chain
(AWS_ENDPOINT_URL, AWS_REGION, AWS_PROFILE, the ECS task role, ...), or from the
global options --endpoint-url, --region and --profile.
"""

LOG_LEVELS = ("debug", "info", "warning", "error")
# Global options that set the AWS chain's environment variables, and which ones.
AWS_ENVIRONMENT = {
    "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "profile": ("AWS_PROFILE",),
    "endpoint_url": ("AWS_ENDPOINT_URL",),
}


def epilog() -> str:
    """The text after `--help`: configuration sources and every exit code."""
    codes = "\n".join(
        textwrap.fill(line, width=79, initial_indent="  ", subsequent_indent=" " * 7)
        for line in exit_code_lines()
    )
    return (
        f"configuration: a TOML file (--config PATH or ${CONFIG_ENV}); any field can be\n"
        "overridden with RETRYD_<GROUP>__<FIELD>, e.g. RETRYD_SCHEDULE__INTERVAL_S=30.\n\n"
        f"exit codes:\n{codes}\n"
    )


def _add_global_options(parser: argparse.ArgumentParser, *, on_command: bool) -> None:
    """The options accepted both before and after the command.

    On a command's own parser they default to SUPPRESS, so that leaving them out
    there keeps what was given before the command instead of resetting it.
    """
    default = argparse.SUPPRESS if on_command else None
    group = parser.add_argument_group("global options (before or after the command)")
    group.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        default=default,
        help=f"TOML settings file (default: ${CONFIG_ENV}, else environment only)",
    )
    group.add_argument(
        "--region",
        metavar="REGION",
        default=default,
        help="AWS region for every call (sets AWS_REGION and AWS_DEFAULT_REGION)",
    )
    group.add_argument(
        "--profile",
        metavar="NAME",
        default=default,
        help="AWS profile from ~/.aws/config (sets AWS_PROFILE)",
    )
    group.add_argument(
        "--endpoint-url",
        metavar="URL",
        default=default,
        help="AWS endpoint for every service, e.g. an emulator (sets AWS_ENDPOINT_URL)",
    )
    group.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=default,
        help="log level, overriding log.level",
    )
    group.add_argument(
        "-v",
        "--verbose",
        dest="log_level",
        action="store_const",
        const="debug",
        default=default,
        help="same as --log-level debug",
    )


def _output_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--output",
        choices=("text", "json"),
        default="text",
        help=f"text for people (default), or json: {what}",
    )


def _queues_option(parser: argparse.ArgumentParser, verb: str, *, s3: bool = False) -> None:
    sources = "; an S3 source as bucket/prefix, s3://bucket/prefix or its ARN" if s3 else ""
    parser.add_argument(
        "queues",
        nargs="*",
        metavar="QUEUE",
        help=f"DLQ names or URLs to {verb}{sources} (default: every DLQ discovery finds)",
    )


class _Commands:
    """Adds commands that all take the global options, with one formatter."""

    def __init__(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        self._subparsers = subparsers

    def add(self, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        parser = self._subparsers.add_parser(
            name,
            help=help_text,
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_global_options(parser, on_command=True)
        return parser


def _sandbox_parser(commands: _Commands) -> None:
    sandbox = commands.add(
        "sandbox",
        "try retryd with no AWS account: an embedded emulator, a demo world, one cycle",
        "Start an in-process AWS emulator (moto), create demo DLQs and targets of every\n"
        "type, run one cycle, and print what happened to every message. Needs the\n"
        f"sandbox extra: {SANDBOX_INSTALL_HINT}",
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
        default=None,
        metavar="PORT",
        help="with --serve: the emulator's port (default: a free one)",
    )


def _drain_parsers(commands: _Commands) -> None:
    commands.add(
        "run",
        "run as a daemon: a cycle every schedule.interval_s until SIGTERM/SIGINT",
        "Run cycles every schedule.interval_s, serve /metrics, /healthz and /readyz on\n"
        "http.port, and stop cleanly on SIGTERM/SIGINT: stop receiving, let in-flight\n"
        "messages settle for shutdown.drain_timeout_s, exit 0. A second signal exits at once.",
    )
    once = commands.add(
        "once",
        "run one cycle, print a summary, exit (see exit codes)",
        "Run exactly one cycle and print a summary: queues, received, and how many\n"
        "messages were resubmitted, parked, deferred or failed, by reason.",
    )
    _queues_option(once, "drain")
    _output_option(once, "the cycle's counts as one JSON object")
    plan = commands.add(
        "plan",
        "dry run: say what `once` would do with every message, change nothing",
        "Receive each DLQ's messages with a short lease, resolve and guard every one,\n"
        "print what would happen and why, then release every lease\n"
        "(ChangeMessageVisibility 0). Nothing is resubmitted, parked, deleted or written\n"
        "to the ledger.",
    )
    _queues_option(plan, "look at")
    _output_option(plan, "every decision and the summary")
    plan.add_argument(
        "--max-messages",
        type=int,
        default=100,
        metavar="N",
        help="messages looked at per DLQ (default: 100)",
    )
    inspect = commands.add(
        "inspect",
        "per DLQ: depth, what feeds it, and its messages grouped by failure",
        "For each DLQ (all discovered ones, or those named): its depth, the resources\n"
        "discovery found feeding it, and its messages grouped by target and error\n"
        "signature, with counts and the oldest and newest of each group. Leases taken\n"
        "to read messages are released at once.",
    )
    _queues_option(inspect, "inspect", s3=True)
    _output_option(inspect, "every queue's depth, feeds and failure groups")
    inspect.add_argument(
        "--max-messages",
        type=int,
        default=1000,
        metavar="N",
        help="messages sampled per DLQ for the failure groups (default: 1000)",
    )


def _tool_parsers(
    commands: _Commands,
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    iam = commands.add(
        "iam-policy",
        "print the least-privilege IAM policy for this configuration",
        "Print the IAM policy document retryd needs for this configuration: SQS\n"
        "read/delete only on the DLQs it discovers, send only to the parking queue,\n"
        "invoke/start/send/publish/put only on allow_targets, and the ledger table.\n"
        "The ARNs name the region given with --region, else any ('*').\n"
        "With [[accounts]]: the home role's policy (sts:AssumeRole on exactly the member\n"
        "roles), then each member account's role policy and trust policy.",
    )
    iam.add_argument("--account", metavar="ID", help="AWS account id (default: any, '*')")
    iam.add_argument(
        "--role",
        choices=("daemon", "operator", "console"),
        default="daemon",
        help="daemon (run, once, plan, inspect), operator (also redrive --from parking) "
        "or console (retryd console: the operator's, as it runs redrive jobs)",
    )
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
    iam.add_argument(
        "--home-role",
        metavar="ARN",
        help="with [[accounts]]: the role retryd runs as in the home account; the member "
        "roles' trust policies then admit exactly it (default: the home account)",
    )
    _output_option(iam, "with [[accounts]], one object keyed by account id")
    ledger = subparsers.add_parser("ledger", help="attempt-ledger tools: create-table")
    ledger_commands = _Commands(
        ledger.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    )
    ledger_commands.add(
        "create-table",
        "create the DynamoDB ledger table (ledger.table) with TTL enabled",
        "Create the DynamoDB table named by ledger.table, with TTL on its expiry\n"
        "attribute, or check that an existing one is usable. Only the dynamodb ledger\n"
        "backend uses it.",
    )
    config = subparsers.add_parser("config", help="configuration tools: check")
    config_commands = _Commands(
        config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    )
    config_commands.add(
        "check",
        "validate the configuration and print the effective settings as JSON",
        "Load the TOML file and RETRYD_* overrides, validate them, and print the\n"
        "effective settings as JSON (exit 0), or every problem, each naming its field\n"
        "(exit 2). Calls no AWS API.",
    )
    completion = commands.add(
        "completion",
        "print a shell completion script (bash, zsh, tcsh, fish)",
        "Print a completion script for the shell, generated from this command line.\n"
        'bash: eval "$(retryd completion bash)"; zsh: retryd completion zsh > \n'
        '"${fpath[1]}/_retryd"',
    )
    completion.add_argument(
        "shell", choices=("bash", "zsh", "tcsh", "fish"), help="the shell to complete in"
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; `retryd completion` generates its scripts from it."""
    from retryd.commands.operator_cli import add_operator_commands  # noqa: PLC0415
    from retryd.console.command import add_console_command  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="retryd",
        description=DESCRIPTION,
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {package_version()} ({DISTRIBUTION})",
        help="print the installed version and exit",
    )
    _add_global_options(parser, on_command=False)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = _Commands(subparsers)
    _drain_parsers(commands)
    _sandbox_parser(commands)
    _tool_parsers(commands, subparsers)
    # The operator's commands (pause, resume, pauses, audit, redrive, jobs) take the same
    # global options, handed down from one parent parser.
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, on_command=True)
    add_operator_commands(subparsers, common)
    add_console_command(subparsers, common)
    # Set over the whole tree, so that no parser added later can miss it: a prefix such
    # as `--ex` must never stand for `--execute`.
    for each in _parsers(parser):
        each.allow_abbrev = False
    return parser


def _apply_aws_options(args: argparse.Namespace) -> None:
    """--region, --profile and --endpoint-url set the AWS chain's own variables.

    Through the environment rather than arguments to each client, so that they
    mean exactly what the variables mean to every other AWS tool.
    """
    for option, variables in AWS_ENVIRONMENT.items():
        value = getattr(args, option, None)
        if value:
            for variable in variables:
                os.environ[variable] = value


def _load(args: argparse.Namespace) -> Settings:
    from retryd.settings import load_settings  # noqa: PLC0415 - see the imports

    settings = load_settings(args.config)
    configure_logging(args.log_level or settings.log.level, settings.log.format)
    return settings


def _log_options(args: argparse.Namespace, settings: Settings) -> tuple[str, str]:
    """The log level and format in force, for worker processes to log the same way."""
    return args.log_level or settings.log.level, settings.log.format


def _check_aws() -> None:
    """Fail with one line now, rather than from deep inside a run, if AWS cannot be used."""
    from retryd.aws import open_session  # noqa: PLC0415 - keeps `--help` fast

    open_session()


def _check_ready_to_drain(settings: Settings) -> None:
    """Hooks, then AWS: a hook that cannot be loaded is a configuration error (exit 2),
    and is said as one whatever the state of the AWS chain."""
    from retryd.resolve.hooks import Hooks  # noqa: PLC0415 - keeps `--help` fast

    Hooks.from_settings(settings)
    _check_aws()


def _only_queues(settings: Settings, names: Sequence[str]) -> Settings:
    """The settings with discovery narrowed to the DLQs named on the command line."""
    if not names:
        return settings
    discovery = settings.discovery.model_copy(
        update={"queues": list(names), "queue_prefixes": [], "queue_tags": {}}
    )
    return settings.model_copy(update={"discovery": discovery})


def _check_named_queues(settings: Settings, command: str, names: Sequence[str]) -> None:
    """QueueNotFoundError (exit 1, one line) when a queue named on the command line does not
    exist, before anything is done: discovery would skip it with a log line, and the
    command would say `0 queue(s)` and exit 0, as if there had been nothing to do.

    With [[accounts]] a name may be in any place; each place's command reports it there.
    """
    if not names or settings.accounts:
        return
    import anyio  # noqa: PLC0415 - see the imports

    from retryd.aws import open_clients  # noqa: PLC0415 - keeps `--help` fast
    from retryd.discovery.survey import select_queues  # noqa: PLC0415 - keeps `--help` fast

    async def missing() -> list[str]:
        async with open_clients(settings.aws) as clients:
            return (await select_queues(clients.sqs, settings, names))[1]

    unknown = anyio.run(missing)
    if unknown:
        raise QueueNotFoundError(command, unknown)


def _once_exit(report: CycleReport) -> ExitCode:
    from retryd.models import Outcome  # noqa: PLC0415 - see the imports

    if report.fatal is not None:
        return report.fatal.exit_code
    if report.config_failures:
        print(
            f"retryd: {report.config_failures} message(s) failed for a configuration reason; "
            "see the errors logged with them",
            file=sys.stderr,
        )
        return ExitCode.CONFIG
    if not report.discovered and report.errors:
        # Not even the DLQs could be listed: AWS is unreachable or refuses retryd.
        return ExitCode.AWS
    failed = {
        reason: count
        for (outcome, reason), count in sorted(report.reasons.items())
        if outcome == Outcome.FAILED.value
    }
    if failed:
        # Left in their DLQs for a later cycle, whatever the reason (a lease that ran
        # out included): this cycle did less than it was asked to.
        reasons = ", ".join(f"{reason}={count}" for reason, count in failed.items())
        print(
            f"retryd: {sum(failed.values())} message(s) failed and stay in their DLQs ({reasons})",
            file=sys.stderr,
        )
        return ExitCode.CYCLE_FAILED
    return ExitCode.OK if report.ok else ExitCode.CYCLE_FAILED


def _once(args: argparse.Namespace) -> int:
    import anyio  # noqa: PLC0415 - see the imports

    # Logging is configured (by _load) before the engine is imported: the first import
    # of structlog then knows whether it needs rich (retryd.logs.import_structlog).
    settings = _only_queues(_load(args), args.queues)

    from retryd.service.lifecycle import run_once  # noqa: PLC0415 - keeps `--help` fast

    _check_ready_to_drain(settings)
    _check_named_queues(settings, "once", args.queues)
    if settings.drain.processes > 1:
        from retryd.service.processes import run_once_in_workers  # noqa: PLC0415

        report = run_once_in_workers(settings, *_log_options(args, settings))
    else:
        report = anyio.run(partial(run_once, settings, settle_heap=True))
    if args.output == "json":
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.summary())
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    return _once_exit(report)


def _run(args: argparse.Namespace) -> int:
    import anyio  # noqa: PLC0415 - see the imports

    settings = _load(args)  # before the engine's imports, as in _once

    from retryd.service.lifecycle import run_daemon  # noqa: PLC0415 - keeps `--help` fast

    _check_ready_to_drain(settings)
    if settings.drain.processes > 1:
        from retryd.service.processes import run_daemon_in_workers  # noqa: PLC0415

        anyio.run(run_daemon_in_workers, settings, *_log_options(args, settings))
    else:
        anyio.run(partial(run_daemon, settings, settle_heap=True))
    return ExitCode.OK


def _sandbox(args: argparse.Namespace) -> int:
    if args.port is not None and not args.serve:
        raise UsageError("sandbox: --port only applies with --serve")
    given = [
        "--" + option.replace("_", "-")
        for option in ("config", *AWS_ENVIRONMENT)
        if getattr(args, option, None)
    ]
    if given:
        raise UsageError(
            f"sandbox: {', '.join(given)} do not apply: the sandbox brings its own "
            "AWS emulator and settings"
        )
    try:
        from retryd.commands.sandbox import (  # noqa: PLC0415 - moto is an optional extra
            run_sandbox,
            serve_sandbox,
        )
    except ImportError as exc:
        raise SandboxUnavailableError(
            f"the sandbox needs the sandbox extra ({exc.name} is not installed): "
            f"{SANDBOX_INSTALL_HINT}"
        ) from None

    # The sandbox prints its own report of every decision; log lines would repeat it.
    configure_logging(args.log_level or "error", "auto")
    if args.serve:
        return serve_sandbox(args.scale, args.port or 0)
    return run_sandbox(args.scale)


def _plan(args: argparse.Namespace) -> int:
    import anyio  # noqa: PLC0415 - see the imports

    from retryd.commands.plan import run_plan  # noqa: PLC0415 - keeps `--help` fast

    settings = _only_queues(_load(args), args.queues)
    _check_named_queues(settings, "plan", args.queues)
    return anyio.run(
        partial(run_plan, settings, output=args.output, max_messages=args.max_messages)
    )


def _inspect(args: argparse.Namespace) -> int:
    import anyio  # noqa: PLC0415 - see the imports

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
    from retryd.arns import partition_for_region  # noqa: PLC0415 - keeps `--help` fast
    from retryd.commands.iam_policy import run_iam_policy  # noqa: PLC0415 - keeps `--help` fast

    # Logs go to stderr (--kms calls AWS), so the document alone is on stdout.
    settings = _load(args)
    partition = args.partition or (partition_for_region(args.region) if args.region else "aws")
    return run_iam_policy(
        settings,
        account=args.account,
        region=args.region,
        partition=partition,
        role=args.role,
        kms=args.kms,
        output=args.output,
        home_role=args.home_role,
    )


def _ledger(args: argparse.Namespace) -> int:
    import anyio  # noqa: PLC0415 - see the imports

    from retryd.ledger import create_table  # noqa: PLC0415 - keeps `--help` fast

    settings = _load(args)
    _check_aws()
    if settings.ledger.backend != "dynamodb":
        print(
            f"retryd: warning: ledger.backend is {settings.ledger.backend!r}, so this "
            f"configuration will not use the table {settings.ledger.table!r}; set "
            'ledger.backend = "dynamodb" to use it',
            file=sys.stderr,
        )
    print(anyio.run(create_table, settings))
    return ExitCode.OK


def _config_check(args: argparse.Namespace) -> int:
    # It prints JSON and never logs, but the breaker (imported for the cluster's rate
    # split) imports structlog, which would bring rich (about 60 ms) with it.
    import_structlog(console=False)
    from retryd.admission.ratelimit import effective_rates  # noqa: PLC0415 - keeps `--help` fast
    from retryd.drain.shard import worker_rates  # noqa: PLC0415 - keeps `--help` fast
    from retryd.settings import load_settings  # noqa: PLC0415 - see the imports

    settings = load_settings(args.config)
    effective = effective_rates(settings.rate_limit)
    per_worker = worker_rates(settings)
    if per_worker is not None:
        effective["per_worker"] = per_worker
    rates = {"effective_rate_limits": effective}
    print(json.dumps(settings.model_dump(mode="json") | rates, indent=2))
    return ExitCode.OK


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """`parser` and every command parser under it."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found.extend(_parsers(child))
    return found


def _completion(args: argparse.Namespace) -> int:
    # shtab generates the script from the parser itself, so completion cannot drift from
    # the options; imported here so that every other command starts without it.
    import shtab  # noqa: PLC0415

    parser = build_parser()
    for each in _parsers(parser):
        for action in each._actions:
            if "--config" in action.option_strings:
                action.complete = shtab.FILE  # type: ignore[attr-defined]  # read by shtab
    print(shtab.complete(parser, shell=args.shell))
    return ExitCode.OK


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run,
    "once": _once,
    "plan": _plan,
    "inspect": _inspect,
    "iam-policy": _iam_policy,
    "ledger": _ledger,
    "sandbox": _sandbox,
    "config": _config_check,
    "completion": _completion,
}


def _leaves(exc: BaseException) -> list[BaseException]:
    """The real errors inside (possibly nested) exception groups, e.g. from a task group."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _reader_gone() -> ExitCode:
    """stdout's reader closed the pipe (`| head`): stop quietly, as Unix tools do.

    Python's recipe (docs.python.org/3/library/signal.html#note-on-sigpipe): point
    stdout at /dev/null so that the flush at exit does not raise a second time.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return ExitCode.OK


def _explain(exc: BaseException) -> ExitCode | None:
    """The one line and exit code for an error a user can cause; None for a bug."""
    if isinstance(exc, BrokenPipeError):
        return _reader_gone()
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    if isinstance(exc, RetrydError):
        print(f"retryd: {exc}", file=sys.stderr)
        return exc.exit_code
    # botocore's errors can only have been raised once botocore was imported.
    boto_errors = sys.modules.get("botocore.exceptions")
    if boto_errors is not None and isinstance(
        exc, boto_errors.BotoCoreError | boto_errors.ClientError
    ):
        from retryd import classify  # noqa: PLC0415 - keeps `--help` fast

        print(f"retryd: AWS: {classify.from_exception(exc)}", file=sys.stderr)
        return ExitCode.AWS
    return None


class _ReaderMayGo:
    """A standard stream whose reader may go away (`| head`) without cutting the work short.

    A write to a closed pipe raises BrokenPipeError wherever it happens: in a log
    line in the middle of a cycle, or in the line a redrive prints before it saves
    its job. Raised there, it stopped the work half done and the command still
    exited 0. Here the stream is pointed at /dev/null instead (Python's recipe,
    docs.python.org/3/library/signal.html#note-on-sigpipe) and the work goes on to
    its end; the exit code is then the work's own.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._discard()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._discard()

    def _discard(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


@contextmanager
def _readers_may_go() -> Iterator[None]:
    """stdout and stderr wrapped for the command's duration (tests run `main` many times)."""
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout = cast(TextIO, _ReaderMayGo(stdout))
    sys.stderr = cast(TextIO, _ReaderMayGo(stderr))
    try:
        yield
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def main(argv: Sequence[str] | None = None) -> int:
    with _readers_may_go():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    if given[:1] == ["--version"]:
        # What argparse's version action prints, before the whole command line is built
        # (and its settings imported): the action exits at `--version` whatever follows.
        print(f"retryd {package_version()} ({DISTRIBUTION})")
        return ExitCode.OK
    args = build_parser().parse_args(argv)
    try:
        _apply_aws_options(args)
        handler = getattr(args, "handler", None) or _HANDLERS[args.command]
        code = handler(args)
        # Inside the try: a reader that went away shows up here, not at exit.
        sys.stdout.flush()
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        # A task group wraps what its tasks raised; the first explainable error speaks.
        for leaf in _leaves(exc):
            explained = _explain(leaf)
            if explained is not None:
                return explained
        raise
    return code
