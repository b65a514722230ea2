"""The operator's subcommands (pause, resume, pauses, audit, redrive, jobs), registered in one go.

Each parser stores its handler as `handler`; `cli.main` calls it like its own.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from retryd.commands.operator_input import OperatorInputError, check_arn_glob
from retryd.logs import configure_logging

if TYPE_CHECKING:
    from retryd.settings import Settings

Handler = Callable[[argparse.Namespace], int]


def _settings(args: argparse.Namespace, *, keeps_state: str | None = None) -> Settings:
    """The settings; with `keeps_state` (the command, as typed), only a durable backend.

    Pauses, jobs and audit records live in the ledger's backend. The memory
    backend is this process's own: a pause stored there would be forgotten as the
    command ends, and the command would have said it was made.
    """
    from retryd.settings import load_settings  # noqa: PLC0415 - keeps `--help` fast

    settings = load_settings(args.config)
    if keeps_state is not None and settings.ledger.backend == "memory":
        raise OperatorInputError(
            f'{keeps_state}: ledger.backend is "memory", which forgets operator state when '
            'this command ends; set ledger.backend = "sqlite" (one host) or "dynamodb" '
            "(several replicas), e.g. RETRYD_LEDGER__BACKEND=sqlite"
        )
    configure_logging(settings.log.level, settings.log.format)
    return settings


def _pause(args: argparse.Namespace) -> int:
    from retryd.commands.pause import run_pause  # noqa: PLC0415 - keeps `--help` fast

    if args.target is not None:
        check_arn_glob(args.target, "TARGET_GLOB")
    return anyio.run(
        partial(
            run_pause,
            _settings(args, keeps_state="pause"),
            pattern=args.target,
            every=args.all,
            reason=args.reason,
            for_text=args.for_,
            until_text=args.until,
        )
    )


def _resume(args: argparse.Namespace) -> int:
    from retryd.commands.pause import run_resume  # noqa: PLC0415 - keeps `--help` fast

    for selector in args.targets:
        # A pause id has no colon; anything shaped like an ARN must be a usable glob.
        if selector.startswith("arn:"):
            check_arn_glob(selector, "TARGET_GLOB")
    return anyio.run(
        partial(
            run_resume,
            _settings(args, keeps_state="resume"),
            selectors=args.targets,
            every=args.all,
        )
    )


def _pauses(args: argparse.Namespace) -> int:
    from retryd.commands.pause import run_pauses  # noqa: PLC0415 - keeps `--help` fast

    return anyio.run(partial(run_pauses, _settings(args), output=args.output))


def _audit(args: argparse.Namespace) -> int:
    from retryd.commands.audit import run_audit  # noqa: PLC0415 - keeps `--help` fast

    return anyio.run(
        partial(
            run_audit, _settings(args, keeps_state="audit"), limit=args.limit, output=args.output
        )
    )


def _redrive(args: argparse.Namespace) -> int:
    from retryd.commands.redrive import (  # noqa: PLC0415 - keeps `--help` fast
        RedriveRequest,
        check_selectors,
        run_redrive,
    )

    given = frozenset(
        option for option, dest in REDRIVE_OPTIONS.items() if getattr(args, dest) not in (None, [])
    )
    request = RedriveRequest(
        given=given,
        resume_options=_repeat_on_resume(args),
        sources=args.sources or [],
        reasons=args.reasons or [],
        targets=args.targets or [],
        groups=args.groups or [],
        since=args.since,
        until=args.until,
        message_ids=args.message_ids or [],
        where=args.where,
        to=args.to,
        transform=args.transform,
        ramp=args.ramp,
        # Left out, these take their defaults; given with --resume, they change the job.
        canary_wait_s=30.0 if args.canary_wait_s is None else args.canary_wait_s,
        max_refail=0 if args.max_refail is None else args.max_refail,
        max_messages=1000 if args.max_messages is None else args.max_messages,
        execute=args.execute,
        resume=args.resume,
        output=args.output,
    )
    check_selectors(request)
    durable = "redrive --resume" if args.resume else "redrive --execute" if args.execute else None
    return anyio.run(run_redrive, _settings(args, keeps_state=durable), request)


# Each redrive option and its argparse dest: `--resume` tells which were given.
REDRIVE_OPTIONS = {
    "--from": "sources",
    "--reason": "reasons",
    "--target": "targets",
    "--group": "groups",
    "--since": "since",
    "--until": "until",
    "--message-id": "message_ids",
    "--where": "where",
    "--to": "to",
    "--transform": "transform",
    "--ramp": "ramp",
    "--canary-wait-s": "canary_wait_s",
    "--max-refail": "max_refail",
    "--max-messages": "max_messages",
}


def _repeat_on_resume(args: argparse.Namespace) -> tuple[str, ...]:
    """The global options a resume command must repeat to reach the same job store."""
    repeated: list[str] = []
    for option in ("config", "region", "profile", "endpoint_url"):
        value = getattr(args, option, None)
        if value:
            repeated += ["--" + option.replace("_", "-"), str(value)]
    return tuple(repeated)


def _jobs(args: argparse.Namespace) -> int:
    from retryd.commands import redrive  # noqa: PLC0415 - keeps `--help` fast

    settings = _settings(args, keeps_state="jobs")
    if args.jobs_command == "show":
        return anyio.run(
            partial(redrive.run_job_show, settings, job_id=args.job, output=args.output)
        )
    if args.jobs_command == "cancel":
        return anyio.run(partial(redrive.run_job_cancel, settings, job_id=args.job))
    return anyio.run(partial(redrive.run_jobs, settings, output=args.output))


REDRIVE_DESCRIPTION = """Send selected messages back to their targets now. Without --execute nothing
changes: the sources are read under a short lease, every selected message is
judged as executing would judge it, every lease is handed back, and the counts
are printed by target, action and reason. With --execute the plan is printed,
then carried out as a durable job (resumable with --resume JOB), in canary
steps (--ramp) that stop the job if the canaries fail again.

A redrive ignores backoff, the age limit and the retention rule, and gives a
message whose attempt budget is spent one more attempt (counted); the
allowlist, the loop guard, pauses, ledger claims, breakers and rate limits
hold as always. Selectors combine with AND; a repeated one matches any value.
exit codes: 0 done (or planned), 1 stopped by its canaries or a read error,
2 bad input, 4 parking queue missing.
"""


def _add_output(parser: argparse.ArgumentParser) -> None:
    """The `--output` every operator command that prints a result takes."""
    parser.add_argument(
        "--output",
        choices=("text", "json"),
        default="text",
        help="text for people, json for scripts",
    )


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
    resume.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET_GLOB|PAUSE_ID",
        help="the pauses to end, by the glob they were made with or by their id",
    )
    resume.add_argument("--all", action="store_true", help="end every pause")
    resume.set_defaults(handler=_resume)
    pauses = commands.add_parser("pauses", parents=[common], help="list the pauses in force")
    _add_output(pauses)
    pauses.set_defaults(handler=_pauses)
    audit = commands.add_parser(
        "audit", parents=[common], help="the latest operator actions (who, what, when, outcome)"
    )
    audit.add_argument(
        "--limit", type=int, default=20, metavar="N", help="how many of the latest records"
    )
    _add_output(audit)
    audit.set_defaults(handler=_audit)
    redrive = commands.add_parser(
        "redrive",
        parents=[common],
        help="send selected DLQ, S3 or parked messages back now (plan by default; --execute)",
        description=REDRIVE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = redrive.add_argument_group("source")
    source.add_argument(
        "--from",
        dest="sources",
        action="append",
        metavar="QUEUE|BUCKET/PREFIX|parking",
        help="a DLQ retryd drains (name or URL; repeatable), an S3 source it drains "
        "(bucket/prefix, s3://bucket/prefix or its ARN; each object a message whose id is its "
        "key), or `parking` for parked copies",
    )
    chosen = redrive.add_argument_group("selectors (combined with AND)")
    chosen.add_argument(
        "--reason",
        dest="reasons",
        action="append",
        metavar="REASON",
        help="parking reason, e.g. target-rejected (with --from parking)",
    )
    chosen.add_argument(
        "--target",
        dest="targets",
        action="append",
        metavar="ARN_GLOB",
        help="the message's resolved target",
    )
    chosen.add_argument(
        "--group",
        dest="groups",
        action="append",
        metavar="ID",
        help="failure group id, as `retryd inspect` shows",
    )
    chosen.add_argument(
        "--since", metavar="TIME", help="first failure at or after (ISO 8601 or 2h)"
    )
    chosen.add_argument("--until", metavar="TIME", help="first failure at or before")
    chosen.add_argument(
        "--message-id",
        dest="message_ids",
        action="append",
        metavar="ID",
        help="one DLQ message id, or an S3 object's key (repeatable)",
    )
    chosen.add_argument(
        "--where", metavar="JMESPATH", help="JMESPath over the JSON body; selected when true"
    )
    acting = redrive.add_argument_group("acting")
    acting.add_argument("--to", metavar="ARN", help="send to this target instead (allowlisted)")
    acting.add_argument(
        "--transform",
        metavar="NAME|module:function",
        help="run this transform on every selected message, for this job only (in place of "
        "the [[hooks]] rules; stored with the job, so --resume uses it too)",
    )
    acting.add_argument("--execute", action="store_true", help="do it (default: plan only)")
    acting.add_argument(
        "--ramp",
        metavar="N,N,...",
        help="canary step sizes (default 1,5,25,100; `none`: no canaries)",
    )
    acting.add_argument(
        "--canary-wait-s",
        type=float,
        default=None,
        metavar="S",
        help="wait after each canary step before judging it (default 30)",
    )
    acting.add_argument(
        "--max-refail",
        type=int,
        default=None,
        metavar="N",
        help="canary failures tolerated per step (default 0: any stops)",
    )
    acting.add_argument(
        "--max-messages",
        type=int,
        default=None,
        metavar="N",
        help="messages read per source per pass (default 1000)",
    )
    acting.add_argument(
        "--resume",
        metavar="JOB",
        help="go on with a stopped job, from the step that stopped it, at that step's size; "
        "only --ramp (a new ramp starts at its first step), --canary-wait-s, --max-refail and "
        "--max-messages may be given, and change the job",
    )
    _add_output(redrive)
    redrive.set_defaults(handler=_redrive)
    _add_jobs_commands(commands, common)


def _add_jobs_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """`retryd jobs` (bare: the list), `jobs list`, `jobs show JOB`, `jobs cancel JOB`."""
    jobs = commands.add_parser(
        "jobs", parents=[common], help="redrive jobs: list, show JOB, cancel JOB"
    )
    _add_output(jobs)
    jobs_commands = jobs.add_subparsers(dest="jobs_command", metavar="ACTION")
    listed = jobs_commands.add_parser(
        "list", parents=[common], help="every job (the same as bare `retryd jobs`)"
    )
    _add_output(listed)
    show = jobs_commands.add_parser("show", parents=[common], help="one job, its failures")
    show.add_argument("job", metavar="JOB", help="the job id `retryd jobs` lists")
    _add_output(show)
    cancel = jobs_commands.add_parser("cancel", parents=[common], help="never resume JOB")
    cancel.add_argument("job", metavar="JOB", help="the job id `retryd jobs` lists")
    jobs.set_defaults(handler=_jobs)
