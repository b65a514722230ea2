"""`retryd sandbox`: a demo world on an embedded emulator, one cycle, and each message's fate.

It needs no AWS account: everything runs against an in-process moto server on a
loopback port, and the process's AWS environment is pointed at it. With
`--serve` it builds the world and keeps the emulator up instead, so that
`retryd plan`, `inspect`, `once` and `run` can be tried against it from another
shell.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import anyio

from retryd.aws import AwsClients, open_clients
from retryd.commands.progress import QueueProgress
from retryd.commands.render import Column, Document, Line, Table, show
from retryd.drain.cycle import CycleReport
from retryd.environment import CONFIG_ENV
from retryd.errors import ExitCode, UsageError
from retryd.models import Decision
from retryd.sandbox.emulator import MotoServer
from retryd.sandbox.world import (
    ACCOUNT,
    INTAKE,
    PARKING,
    REGION,
    SANDBOX_CONFIG_TOML,
    DemoWorld,
    build_world,
    count,
    parked_reasons,
    planned_messages,
    sandbox_settings,
)
from retryd.service.lifecycle import run_once

LOOPBACK = "127.0.0.1"
# The emulator accepts any credentials; these only keep botocore from looking for real ones.
SANDBOX_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "sandbox", "AWS_SECRET_ACCESS_KEY": "sandbox"}

DECISION_COLUMNS = (
    Column("DLQ", min_width=8),
    Column("MESSAGE", min_width=12),
    Column("COUNT", justify="right"),
    Column("OUTCOME", min_width=8),
    Column("TARGET / REASON", min_width=16),
)
WHERE_COLUMNS = (Column("WHERE", min_width=12), Column("WHAT", min_width=16))


def _describe(decision: Decision) -> str:
    if decision.outcome.value == "resubmitted":
        assert decision.target is not None
        where = f"{decision.target.type.value} {decision.target.name} (attempt {decision.attempt}"
        if decision.source_attempts:
            # The source's own tries, shown so the demo says they did not count.
            where += f"; the source tried {decision.source_attempts} before"
        return where + ")"
    detail = decision.detail.splitlines()[0] if decision.detail else ""
    return f"{decision.reason}: {detail}"[:160]


async def _where_now(
    clients: AwsClients, world: DemoWorld, invocations: int
) -> list[tuple[str, str]]:
    executions = (
        await clients.stepfunctions.list_executions(stateMachineArn=world.state_machine_arn)
    )["executions"]
    parked = await parked_reasons(clients, world.queue_urls[PARKING])
    left = sum([await count(clients, world.queue_urls[dlq]) for dlq in world.dlqs])
    return [
        ("Lambda charge", f"{invocations} async invocation(s)"),
        ("Step Functions fulfil", f"{len(executions)} execution(s)"),
        ("SQS invoices", f"{await count(clients, world.queue_urls['invoices'])} message(s)"),
        ("SQS orders", f"{await count(clients, world.queue_urls['orders'])} message(s)"),
        ("SQS intake", f"{await count(clients, world.queue_urls[INTAKE])} message(s)"),
        (
            "SNS notify",
            f"{await count(clients, world.queue_urls['sandbox-notify-spy'])} delivery(ies)",
        ),
        (
            "EventBridge billing",
            f"{await count(clients, world.queue_urls['sandbox-billing-spy'])} event(s)",
        ),
        (
            f"parking {PARKING}",
            f"{await count(clients, world.queue_urls[PARKING])} message(s): "
            + ", ".join(f"{r}={n}" for r, n in sorted(parked.items())),
        ),
        ("DLQs (retry-*)", f"{left} message(s) left"),
    ]


def _print_report(
    server: MotoServer, world: DemoWorld, report: CycleReport, where: list[tuple[str, str]]
) -> None:
    # Identical demo messages (with --scale) are shown once, with how many there were.
    rows: Counter[tuple[str, str, str, str]] = Counter()
    for decision in report.decisions or []:
        label = world.labels.get(decision.letter.message_id, decision.letter.message_id)
        rows[(decision.letter.queue.name, label, decision.outcome.value, _describe(decision))] += 1
    handled = sum(report.outcomes.values())
    rate = handled / report.duration_s if report.duration_s > 0 else 0.0
    decisions = [
        [queue, label, str(copies), outcome, description]
        for (queue, label, outcome, description), copies in sorted(rows.items())
    ]
    show(
        Document(
            [
                [
                    Line(
                        f"retryd sandbox: AWS emulator at {server.url}, account {ACCOUNT}, {REGION}"
                    ),
                    Line(f"demo DLQs: {', '.join(world.dlqs)} ({world.message_count} messages)"),
                ],
                [Table(DECISION_COLUMNS, decisions)],
                [
                    Line(f"summary: {report.summary()}"),
                    Line(
                        f"throughput: {handled} messages settled in {report.duration_s:.2f}s"
                        f" ({rate:.0f} msg/s)"
                    ),
                    Line("where every copy is now:"),
                    Table(WHERE_COLUMNS, [list(row) for row in where], indent=2, show_header=False),
                ],
            ]
        )
    )


async def _build(clients: AwsClients, scale: int) -> DemoWorld:
    """The demo world, with a progress bar on a terminal and a plain line otherwise.

    At --scale 50 building takes a while; a silent wait looks like a hang.
    """
    total = planned_messages(scale)
    interactive = sys.stderr.isatty()
    if not interactive:
        print(f"retryd sandbox: building the demo world ({total} messages)", file=sys.stderr)
    with QueueProgress(enabled=interactive) as bars:
        bar = bars.add("building the demo world", total)
        return await build_world(clients, scale, on_sent=lambda sent: bars.advance(bar, sent))


async def _main(server: MotoServer, scale: int) -> int:
    settings = sandbox_settings()
    async with open_clients(settings.aws) as clients:
        world = await _build(clients, scale)
        server.start_recording()
        report = await run_once(settings, collect=True)
        # retryd invokes by ARN, which arrives percent-encoded in the request path.
        invocations = sum(
            1
            for entry in server.recording()
            if "function:charge/invocations" in unquote(entry.get("url", ""))
        )
        where = await _where_now(clients, world, invocations)
    _print_report(server, world, report, where)
    unaccounted = world.message_count - sum(report.outcomes.values())
    return ExitCode.OK if report.ok and unaccounted == 0 else ExitCode.CYCLE_FAILED


def _aws_environment(server: MotoServer) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": server.url,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        **SANDBOX_CREDENTIALS,
    }


def _point_aws_at(server: MotoServer) -> None:
    os.environ.update(_aws_environment(server))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)


def run_sandbox(scale: int = 1) -> int:
    """Start the emulator, point this process's AWS environment at it, run the demo.

    `scale` sends every demo message that many times, to watch a bigger cycle.
    """
    with MotoServer() as server:
        _point_aws_at(server)
        return anyio.run(_main, server, scale)


def _free_port() -> int:
    """A loopback port nothing listens on now, for `retryd run`'s metrics in --serve mode."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# The served sandbox's ledger, beside its settings file (a relative path is taken from
# the file's directory): pauses, jobs and audit records outlive each command, as they
# must for the Incidents recipes to work against it as written.
SERVE_LEDGER_FILE = "retryd.sqlite3"


def serve_config_toml(http_port: int) -> str:
    """The sandbox settings with the HTTP listener on, so `retryd run` serves its metrics,
    and a SQLite ledger, so that operator state lasts from one command to the next."""
    disabled = "[http]\nenabled = false\n"
    enabled = f'[http]\nenabled = true\nhost = "127.0.0.1"\nport = {http_port}\n'
    memory = '[ledger]\nbackend = "memory"\n'
    sqlite = f'[ledger]\nbackend = "sqlite"\npath = "{SERVE_LEDGER_FILE}"\n'
    text = SANDBOX_CONFIG_TOML
    for old, new in ((disabled, enabled), (memory, sqlite)):
        if old not in text:
            raise AssertionError(f"the sandbox settings no longer hold {old!r}")
        text = text.replace(old, new)
    return text


async def _serve(server: MotoServer, scale: int, config: Path, http_port: int) -> int:
    async with open_clients(sandbox_settings().aws) as clients:
        world = await _build(clients, scale)
    # RETRYD_CONFIG with the AWS variables: every command (and every Incidents recipe)
    # then runs against the sandbox exactly as written, with no --config to add.
    environment = {**_aws_environment(server), CONFIG_ENV: str(config)}
    exports = " ".join(f"{name}={value}" for name, value in environment.items())
    print(f"retryd sandbox: AWS emulator at {server.url}, account {ACCOUNT}, {REGION}")
    print(f"demo DLQs: {', '.join(world.dlqs)} ({world.message_count} messages)")
    print(f"settings: {config} (ledger, pauses, jobs and audit: {SERVE_LEDGER_FILE} beside it)")
    print("\nIn another shell, try:")
    print(f"  export {exports}")
    for command in ("plan", "inspect", "once", "run"):
        print(f"  retryd {command}")
    base = f"http://127.0.0.1:{http_port}"
    print(f"  (while `run` runs: {base}/metrics, {base}/healthz, {base}/readyz)")
    print("  and the recipes on the Incidents page (pause, redrive, jobs, audit), as written")
    print("\nServing until Ctrl-C.", flush=True)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            break
    return ExitCode.OK


def _check_port_free(port: int) -> None:
    """UsageError (one line, exit 2) when `port` is taken, before the emulator starts.

    Left to the server library, a busy port is its own multi-line text and exit 1.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the server will: a port only in TIME_WAIT is free to it.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError as exc:
            raise UsageError(
                f"sandbox: --port {port}: cannot listen on {LOOPBACK}:{port}: {exc.strerror or exc}"
            ) from None


def serve_sandbox(scale: int = 1, port: int = 0) -> int:
    """Build the demo world and keep the emulator up until SIGINT/SIGTERM.

    The settings file it writes is the one the one-shot sandbox uses (with the
    HTTP listener on, for `retryd run`), so `retryd plan` followed by `retryd
    once` against it show the same decisions.
    """
    if port:
        _check_port_free(port)
    with tempfile.TemporaryDirectory(prefix="retryd-sandbox-") as directory:
        config = Path(directory) / "retryd.toml"
        with MotoServer(port=port) as server:
            http_port = _free_port()
            config.write_text(serve_config_toml(http_port))
            _point_aws_at(server)
            return anyio.run(_serve, server, scale, config, http_port)
