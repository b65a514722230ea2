"""Exit codes decided once: refused input 2 before anything is sent, work not all done 1."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from retryd.commands import cli
from retryd.commands.cli import main
from retryd.drain.cycle import CycleReport
from retryd.errors import ExitCode
from tests.e2e.test_redrive import DLQ, cli_json, config, orders_world
from tests.faults import Fault
from tests.world import ACCOUNT, REGION, World

pytestmark = pytest.mark.usefixtures("keep_logging_config")


def test_to_of_another_target_type_is_refused_before_anything_is_sent(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SQS messages `--to` a Lambda: exit 2 naming --to, no job, every message still in the DLQ."""
    orders_world(world)
    cfg = config(tmp_path)
    lambda_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:charge"
    code = main(["redrive", "--config", cfg, "--from", DLQ, "--to", lambda_arn, "--execute"])
    assert code == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert f"retryd: --to {lambda_arn}: 4 selected message(s) go to another type" in err
    assert world.depth(DLQ) == 4
    _, [listed] = cli_json(capsys, "jobs", "--config", cfg)
    assert listed["jobs"] == []


def test_a_job_whose_messages_all_failed_exits_1(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every send fails (transient): the job is done but did nothing, so exit 1, said on stderr."""
    orders_world(world)
    world.faults.add(Fault("sqs", "SendMessageBatch", code="ServiceUnavailable", status=503))
    argv = ["redrive", "--config", config(tmp_path), "--from", DLQ, "--execute"]
    code = main([*argv, "--ramp", "none"])
    assert code == ExitCode.CYCLE_FAILED
    assert "ended with 4 failed" in capsys.readouterr().err


def test_a_job_that_did_everything_still_exits_0(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The counterpart: every message resubmitted, exit 0 and nothing on stderr from the job."""
    orders_world(world)
    argv = ["redrive", "--config", config(tmp_path), "--from", DLQ, "--execute"]
    assert main([*argv, "--ramp", "none"]) == 0
    assert "ended with" not in capsys.readouterr().err
    assert world.depth(DLQ) == 0


def test_a_source_that_is_not_a_drained_dlq_exits_1(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--from retry-typo`: one line, exit 1, as plan, once and inspect answer an unknown queue."""
    orders_world(world)
    code = main(["redrive", "--config", config(tmp_path), "--from", "retry-typo"])
    assert code == ExitCode.CYCLE_FAILED
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("{")]
    assert len(lines) == 1
    assert lines[0].startswith("retryd: redrive: not a DLQ retryd drains: retry-typo")


@pytest.mark.parametrize("command", ["once", "plan", "inspect"])
def test_a_named_queue_that_does_not_exist_exits_1(
    command: str, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`once retry-paymnts` (a typo): exit 1 with a line naming it, and nothing drained."""
    orders_world(world)
    code = main([command, "--config", config(tmp_path), "retry-paymnts"])
    assert code == ExitCode.CYCLE_FAILED
    assert "no such queue: retry-paymnts" in capsys.readouterr().err
    assert world.depth(DLQ) == 4


def test_a_reason_that_is_not_a_parking_reason_is_refused_listing_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--reason bogus-reason`: exit 2 before any AWS call, listing the valid reasons."""
    code = main(["redrive", "--from", "parking", "--reason", "bogus-reason"])
    assert code == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert "--reason bogus-reason: not a parking reason; one of unresolvable," in err
    assert "target-rejected" in err


def test_a_group_no_source_holds_is_said_and_exits_1(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--group` matching nothing: a line saying so, exit 1, no job, nothing sent."""
    orders_world(world)
    cfg = config(tmp_path)
    code = main(["redrive", "--config", cfg, "--from", DLQ, "--group", "g-nope", "--execute"])
    assert code == ExitCode.CYCLE_FAILED
    assert f"no message in {DLQ} is in failure group g-nope" in capsys.readouterr().err
    _, [listed] = cli_json(capsys, "jobs", "--config", cfg)
    assert listed["jobs"] == []
    assert world.depth(DLQ) == 4


def test_once_with_failed_messages_exits_1(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cycle whose sends all failed (transient) left its messages: exit 1, said why."""
    orders_world(world)
    world.faults.add(
        Fault(
            "sqs",
            "SendMessageBatch",
            code="ServiceUnavailable",
            status=503,
            contains=f"{ACCOUNT}/dest-",
        )
    )
    assert main(["once", "--config", config(tmp_path)]) == ExitCode.CYCLE_FAILED
    err = capsys.readouterr().err
    assert "message(s) failed and stay in their DLQs (transient-error=" in err


def test_lease_expired_failures_are_not_success(capsys: pytest.CaptureFixture[str]) -> None:
    """20 messages failed lease-expired (their targets answered after the lease): exit 1."""
    report = CycleReport(
        queues=1,
        discovered=True,
        received=20,
        outcomes=Counter({"failed": 20}),
        reasons=Counter({("failed", "lease-expired"): 20}),
    )
    assert cli._once_exit(report) == ExitCode.CYCLE_FAILED
    assert "lease-expired=20" in capsys.readouterr().err
