"""`retryd redrive` on the moto server: selectors, plan == execute, parking after a fix, ramps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from retryd.commands.cli import main
from retryd.ledger.base import BeginStatus, Claim
from retryd.ledger.sqlite import SqliteLedger
from retryd.models import DeadLetter, QueueRef
from retryd.resolve.failure_groups import error_signature, failure_group_id
from tests.faults import Fault
from tests.operator_helpers import (
    CONFIG,
    PARKING,
)
from tests.world import ACCOUNT, REGION, World, envelope

pytestmark = pytest.mark.usefixtures("keep_logging_config")

DLQ = "retry-orders"


def config(tmp_path: Path, extra: str = "") -> str:
    """The operator tests' config with a SQLite ledger, so that commands share what they did."""
    path = tmp_path / "retryd.toml"
    ledger = f'backend = "sqlite"\npath = "{tmp_path / "ledger.sqlite3"}"'
    path.write_text(CONFIG.replace('backend = "memory"', ledger) + extra)
    return str(path)


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, Any]]]:
    """Run one command with --output json; its exit code and every JSON document it printed."""
    code = main([*args, "--output", "json"])
    out = capsys.readouterr().out
    documents = []
    decoder = json.JSONDecoder()
    index = 0
    while index < len(out):
        if out[index].isspace():
            index += 1
            continue
        document, index = decoder.raw_decode(out, index)
        documents.append(document)
    return code, documents


def bodies(messages: list[dict[str, Any]]) -> list[Any]:
    return [json.loads(message["Body"]) for message in messages]


def orders_world(world: World) -> dict[str, str]:
    """A DLQ of four envelopes, two per destination queue; label -> message id."""
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    world.create_queue("dest-a")
    world.create_queue("dest-b")
    a, b = world.queue_arn("dest-a"), world.queue_arn("dest-b")
    failed = {"code": "Timeout", "message": "timed out"}
    return {
        "a-x-old": world.send(
            DLQ,
            envelope("sqs", a, {"kind": "x", "n": 1}, firstFailedAt="2026-01-01T00:00:00Z"),
        ),
        "a-y": world.send(DLQ, envelope("sqs", a, {"kind": "y", "n": 2}, error=failed)),
        "b-x": world.send(DLQ, envelope("sqs", b, {"kind": "x", "n": 3}, error=failed)),
        "b-y-old": world.send(
            DLQ,
            envelope("sqs", b, {"kind": "y", "n": 4}, firstFailedAt="2026-01-02T00:00:00Z"),
        ),
    }


def selected_ids(capsys: pytest.CaptureFixture[str], cfg: str, *selectors: str) -> int:
    code, [document] = cli_json(capsys, "redrive", "--config", cfg, "--from", DLQ, *selectors)
    assert code == 0, document
    selected: int = document["plan"]["selected"]
    return selected


def test_each_selector_and_their_combination_select_a_known_subset(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Target glob, group, since/until, message id, JMESPath, and an AND of them: exact counts."""
    ids = orders_world(world)
    cfg = config(tmp_path)
    b_arn = world.queue_arn("dest-b")
    letter = DeadLetter(
        QueueRef(DLQ, "", ""),
        "-",
        "-",
        json.dumps(envelope("sqs", b_arn, {}, error={"code": "Timeout", "message": "timed out"})),
    )
    group = failure_group_id(b_arn, error_signature(letter))
    cases: list[tuple[list[str], int]] = [
        ([], 4),
        (["--target", f"arn:aws:sqs:*:{ACCOUNT}:dest-a"], 2),
        (["--group", group], 1),
        (["--until", "2026-01-01T12:00:00Z"], 1),
        (["--since", "2026-01-01T12:00:00Z", "--until", "2026-01-03T00:00:00Z"], 1),
        (["--message-id", ids["b-x"], "--message-id", ids["a-y"]], 2),
        (["--where", "payload.kind == 'x'"], 2),
        (["--where", "payload.n > `2`"], 2),
        (["--target", f"arn:aws:sqs:*:{ACCOUNT}:dest-b", "--where", "payload.kind == 'x'"], 1),
    ]
    for selectors, expected in cases:
        assert selected_ids(capsys, cfg, *selectors) == expected, selectors
    # A plan changes nothing: every message is still visible in the DLQ.
    assert world.depth(DLQ) == 4
    assert world.depth("dest-a") == world.depth("dest-b") == 0


def test_plan_counts_are_what_execute_does(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--execute prints the plan, then a job whose counts match it group for group."""
    orders_world(world)
    world.send(DLQ, envelope("sqs", f"arn:aws:sqs:{REGION}:999999999999:foreign", {"n": 9}))
    cfg = config(tmp_path)
    code, documents = cli_json(
        capsys, "redrive", "--config", cfg, "--from", DLQ, "--execute", "--canary-wait-s", "0"
    )
    # One message was refused (target-not-allowed): a job that did less than all exits 1.
    assert code == 1, documents
    plan, job = documents[0]["plan"], documents[1]["job"]
    assert plan["groups"] == job["groups"]
    actions = {(g["target"], g["action"], g["reason"]): g["count"] for g in job["groups"]}
    assert actions == {
        (world.queue_arn("dest-a"), "resubmit", None): 2,
        (world.queue_arn("dest-b"), "resubmit", None): 2,
        (f"arn:aws:sqs:{REGION}:999999999999:foreign", "refuse", "target-not-allowed"): 1,
    }
    assert job["state"] == "done"
    assert len(world.drain("dest-a")) == len(world.drain("dest-b")) == 2
    # The refused message was handed back, not parked: it is still in its DLQ.
    assert world.depth(DLQ) == 1
    assert world.depth(PARKING) == 0


@pytest.mark.timeout(60)  # far below the 600 s canary wait
def test_a_step_that_sent_nothing_does_not_wait_for_canaries(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only a refused message selected, a ten-minute canary wait: the job ends at once (it
    waited the whole ten minutes for a canary that never went out), refused, exit 1."""
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    world.send(DLQ, envelope("sqs", f"arn:aws:sqs:{REGION}:999999999999:foreign", {"n": 9}))
    cfg = config(tmp_path)

    code, documents = cli_json(
        capsys, "redrive", "--config", cfg, "--from", DLQ, "--execute", "--canary-wait-s", "600"
    )

    assert code == 1, documents
    job = documents[1]["job"]
    assert job["state"] == "done"
    assert [g["action"] for g in job["groups"]] == ["refuse"]
    assert world.depth(DLQ) == 1


def test_to_outside_the_allowlist_is_refused(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--to a target no allow_targets pattern matches: exit 2, one line, nothing sent."""
    orders_world(world)
    foreign = f"arn:aws:sqs:{REGION}:999999999999:elsewhere"
    code = main(["redrive", "--config", config(tmp_path), "--from", DLQ, "--to", foreign])
    assert code == 2
    assert "matches no allow_targets pattern" in capsys.readouterr().err
    assert world.depth(DLQ) == 4


def test_to_a_drained_dlq_is_refused_as_a_loop(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--to a DLQ retryd drains (allowlisted or not) would loop: refused before anything."""
    orders_world(world)
    code = main(
        ["redrive", "--config", config(tmp_path), "--from", DLQ, "--to", world.queue_arn(DLQ)]
    )
    assert code == 2
    assert "would loop" in capsys.readouterr().err


def test_to_redirects_the_selection(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--to sends the selected messages to the new target; the others stay in the DLQ."""
    orders_world(world)
    world.create_queue("dest-new")
    code = main(
        [
            "redrive",
            "--config",
            config(tmp_path),
            "--from",
            DLQ,
            "--target",
            f"arn:aws:sqs:*:{ACCOUNT}:dest-a",
            "--to",
            world.queue_arn("dest-new"),
            "--execute",
            "--ramp",
            "none",
        ]
    )
    assert code == 0, capsys.readouterr()
    assert sorted(b["n"] for b in bodies(world.drain("dest-new"))) == [1, 2]
    assert world.depth("dest-a") == 0
    assert world.depth(DLQ) == 2


def park_rejected(world: World, cfg: str, capsys: pytest.CaptureFixture[str]) -> Fault:
    """Four messages for `dest-a` parked as target-rejected (a fault), one unresolvable."""
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    world.create_queue("dest-a")
    fault = Fault("sqs", "SendMessageBatch", code="AccessDenied", contains=f'{ACCOUNT}/dest-a"')
    world.faults.add(fault)
    for n in range(4):
        world.send(DLQ, envelope("sqs", world.queue_arn("dest-a"), {"n": n}))
    world.send(DLQ, "no route for this one")
    assert main(["once", "--config", cfg]) == 0
    capsys.readouterr()
    assert world.depth(DLQ) == 0
    assert world.depth(PARKING) == 5
    return fault


def test_parked_messages_come_back_after_a_fix_exactly_once(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Parked as target-rejected, fault lifted, redriven from parking: each delivered once."""
    cfg = config(tmp_path)
    park_rejected(world, cfg, capsys)
    world.faults.clear()
    code = main(
        [
            "redrive",
            "--config",
            cfg,
            "--from",
            "parking",
            "--reason",
            "target-rejected",
            "--execute",
            "--canary-wait-s",
            "0",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    delivered = bodies(world.drain("dest-a"))
    assert sorted(body["n"] for body in delivered) == [0, 1, 2, 3]
    remaining = world.drain(PARKING)
    assert [m["Body"] for m in remaining] == ["no route for this one"]
    # A second run finds nothing more to do: nothing is sent twice.
    assert main(["redrive", "--config", cfg, "--from", "parking", "--execute"]) == 0
    assert world.depth("dest-a") == 0


def test_a_ramp_stops_itself_when_the_fault_is_still_on(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fault still on: the first canary fails, the job stops, the rest stay parked untouched."""
    cfg = config(tmp_path)
    park_rejected(world, cfg, capsys)
    code, documents = cli_json(
        capsys,
        "redrive",
        "--config",
        cfg,
        "--from",
        "parking",
        "--reason",
        "target-rejected",
        "--execute",
        "--canary-wait-s",
        "0",
    )
    assert code == 1
    job = documents[1]["job"]
    assert job["state"] == "stopped"
    assert "1 canary failure(s)" in job["stop_reason"]
    assert sum(job["counts"].values()) == 1
    assert world.depth("dest-a") == 0
    # All five parked copies are still there: the canary handed back, the rest never read.
    assert world.depth(PARKING) == 5
    code, [listed] = cli_json(capsys, "jobs", "--config", cfg)
    assert [j["state"] for j in listed["jobs"]] == ["stopped"]
    assert main(["jobs", "show", "--config", cfg, job["id"]]) == 0
    shown = capsys.readouterr().out
    assert "target-rejected" in shown
    assert f"retryd redrive --resume {job['id']}" in shown


def test_a_job_killed_mid_ramp_resumes_with_nothing_twice_and_nothing_lost(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL during the canary wait, then --resume: every message delivered exactly once."""
    cfg = config(tmp_path)
    park_rejected(world, cfg, capsys)
    world.faults.clear()
    command = [
        sys.executable,
        "-m",
        "retryd",
        "redrive",
        "--config",
        cfg,
        "--from",
        "parking",
        "--reason",
        "target-rejected",
        "--execute",
        "--ramp",
        "1",
        "--canary-wait-s",
        "600",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the job never finished its first step"
            code, [listed] = cli_json(capsys, "jobs", "--config", cfg)
            started = [j for j in listed["jobs"] if j["messages"] == 1]
            if started:
                break
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.communicate()
    [job] = started
    assert world.depth("dest-a") == 1
    code, documents = cli_json(capsys, "redrive", "--config", cfg, "--resume", job["id"])
    assert code == 0, documents
    [resumed] = documents
    assert resumed["job"]["state"] == "done"
    assert sum(resumed["job"]["counts"].values()) == 4
    delivered = sorted(body["n"] for body in bodies(world.drain("dest-a")))
    assert delivered == [0, 1, 2, 3]
    assert [m["Body"] for m in world.drain(PARKING)] == ["no route for this one"]
    audit = json.loads(
        subprocess.run(
            [sys.executable, "-m", "retryd", "audit", "--config", cfg, "--output", "json"],
            capture_output=True,
            text=True,
            check=True,
            env=os.environ.copy(),
        ).stdout
    )["records"]
    assert [(r["action"], r["outcome"]) for r in audit] == [
        ("redrive-resume", "done"),
        ("redrive-execute", "started"),
    ]
    assert audit[0]["what"]["job"] == job["id"]


def test_a_young_message_once_deferred_is_sent_at_once_by_redrive(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`once` hides a young message for its backoff; the plan says so; --execute sends it now."""
    cfg = config(tmp_path, "")
    slow = Path(cfg)
    slow.write_text(
        slow.read_text().replace("base_s = 0.001\nmax_s = 0.001", "base_s = 3600\nmax_s = 3600")
    )
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    world.create_queue("dest-a")
    for n in range(4):
        world.send(DLQ, envelope("sqs", world.queue_arn("dest-a"), {"n": n}))
    assert main(["once", "--config", cfg]) == 0
    assert "deferred=4" in capsys.readouterr().out
    assert world.depth("dest-a") == 0

    code, [planned] = cli_json(capsys, "redrive", "--config", cfg, "--from", DLQ)
    assert code == 0
    assert planned["plan"]["deferred_hidden"] == 4
    assert planned["plan"]["selected"] == 0

    code, documents = cli_json(
        capsys, "redrive", "--config", cfg, "--from", DLQ, "--execute", "--ramp", "none"
    )
    assert code == 0, documents
    assert documents[1]["job"]["counts"] == {f"resubmitted||{world.queue_arn('dest-a')}": 4}
    assert sorted(body["n"] for body in bodies(world.drain("dest-a"))) == [0, 1, 2, 3]
    assert world.depth(DLQ) == 0


def test_a_canary_that_comes_back_into_a_dlq_stops_the_ramp(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The canary is accepted, its consumer fails, SQS moves it to a DLQ retryd drains: stop."""
    cfg = config(tmp_path)
    world.create_queue(PARKING)
    world.create_queue("retry-dest-a")
    world.create_queue(
        "dest-a",
        RedrivePolicy=json.dumps(
            {"deadLetterTargetArn": world.queue_arn("retry-dest-a"), "maxReceiveCount": 1}
        ),
    )
    world.create_queue(DLQ)
    world.faults.add(
        Fault("sqs", "SendMessageBatch", code="AccessDenied", contains=f'{ACCOUNT}/dest-a"')
    )
    for n in range(3):
        world.send(DLQ, envelope("sqs", world.queue_arn("dest-a"), {"n": n}))
    assert main(["once", "--config", cfg]) == 0
    assert world.depth(PARKING) == 3
    world.faults.clear()
    command = [
        *(sys.executable, "-m", "retryd", "redrive", "--config", cfg, "--from", "parking"),
        *("--execute", "--ramp", "1", "--canary-wait-s", "20", "--output", "json"),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        sqs = world.client("sqs")
        url = world.queue_url("dest-a")
        deadline = time.monotonic() + 60
        # The consumer of dest-a fails: it receives the canary and lets it go, twice,
        # and SQS moves it to retry-dest-a (maxReceiveCount 1).
        while world.depth("retry-dest-a") == 0:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the canary never reached its DLQ"
            sqs.receive_message(QueueUrl=url, VisibilityTimeout=0, WaitTimeSeconds=0)
            time.sleep(0.1)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
        process.communicate()
    assert process.returncode == 1, err
    job = json.loads(out[out.index('{\n  "job"') :])["job"]
    assert job["state"] == "stopped"
    assert "1 canary failure(s)" in job["stop_reason"]
    assert world.depth(PARKING) == 2


def test_a_stopped_ramp_resumed_after_the_fix_tries_its_failed_canary_again(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stopped by a failed canary, resumed once the fault is gone: all four go, each once."""
    cfg = config(tmp_path)
    park_rejected(world, cfg, capsys)
    selection = ["--from", "parking", "--reason", "target-rejected", "--canary-wait-s", "0"]
    code, documents = cli_json(capsys, "redrive", "--config", cfg, *selection, "--execute")
    assert code == 1
    job = documents[1]["job"]["id"]
    world.faults.clear()
    code, [resumed] = cli_json(capsys, "redrive", "--config", cfg, "--resume", job)
    assert code == 0, resumed
    assert resumed["job"]["state"] == "done"
    assert resumed["job"]["counts"] == {f"resubmitted||{world.queue_arn('dest-a')}": 4}
    assert resumed["job"]["failures"] == []
    assert sorted(body["n"] for body in bodies(world.drain("dest-a"))) == [0, 1, 2, 3]
    assert [m["Body"] for m in world.drain(PARKING)] == ["no route for this one"]


def test_a_cancelled_job_cannot_be_resumed(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`jobs cancel` on a stopped job: --resume then exits 2 saying so, and sends nothing."""
    cfg = config(tmp_path)
    park_rejected(world, cfg, capsys)
    code, documents = cli_json(
        capsys, "redrive", "--config", cfg, "--from", "parking", "--execute", "--canary-wait-s", "0"
    )
    assert code == 1
    job = documents[1]["job"]["id"]
    world.faults.clear()
    assert main(["jobs", "cancel", "--config", cfg, job]) == 0
    capsys.readouterr()
    assert main(["redrive", "--config", cfg, "--resume", job]) == 2
    assert "is cancelled; nothing to resume" in capsys.readouterr().err
    assert world.depth("dest-a") == 0
    assert world.depth(PARKING) == 5


def test_a_message_the_daemon_is_resubmitting_is_left_to_it(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ledger holds another owner's live claim on the key: deferred, not sent a second time."""
    cfg = config(tmp_path)
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    world.create_queue("dest-a")
    body = envelope("sqs", world.queue_arn("dest-a"), {"n": 1}, idempotencyKey="order-1")
    message_id = world.send(DLQ, body)

    async def daemon_claims() -> None:
        ledger = await SqliteLedger.open(
            tmp_path / "ledger.sqlite3", claim_s=300, ttl_s=86_400, owner="daemon"
        )
        [begun] = await ledger.begin([Claim("order-1", message_id, 1, None)])
        assert begun.status is BeginStatus.STARTED
        await ledger.aclose()

    anyio.run(daemon_claims)
    code, documents = cli_json(
        capsys, "redrive", "--config", cfg, "--from", DLQ, "--execute", "--ramp", "none"
    )
    assert code == 0, documents
    assert documents[1]["job"]["counts"] == {
        f"deferred|claimed-elsewhere|{world.queue_arn('dest-a')}": 1
    }
    assert world.depth("dest-a") == 0
    assert world.depth(DLQ) == 1
