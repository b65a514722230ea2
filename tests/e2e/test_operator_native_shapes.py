"""`inspect`, `plan` and `redrive` over stream batch pointers and failed-execution events.

moto has no RedriveExecution: tests/stepfunctions_front.py answers it as AWS documents it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from retryd.commands.plan import run_plan
from retryd.models import DeadLetter, QueueRef
from retryd.resolve.failure_groups import error_signature, failure_group_id
from retryd.settings import load_settings
from tests.e2e.test_failed_executions import failed_execution, status_change
from tests.e2e.test_redrive import cli_json, config
from tests.e2e.test_stream_batches import kinesis_stream, pointer, replayed_events
from tests.operator_helpers import PARKING
from tests.stepfunctions_front import redrive_count
from tests.world import ACCOUNT, World

pytestmark = pytest.mark.usefixtures("keep_logging_config")

DLQ = "retry-native"


def native_world(world: World) -> dict[str, Any]:
    """A DLQ holding two Kinesis batch pointers (one per function) and one failed execution."""
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    consumer = world.create_function("consumer")
    auditor = world.create_function("auditor")
    stream, shard, sequences = kinesis_stream(world, "orders", 4)
    machine = world.create_state_machine("orders")
    execution = failed_execution(world, machine, "failed-1")
    batch = {"stream": stream, "shard": shard, "first": sequences[0], "last": sequences[1]}
    ids = {
        "consumer": world.send(DLQ, pointer("KinesisBatchInfo", consumer, **batch, size=2)),
        "auditor": world.send(
            DLQ,
            pointer(
                "KinesisBatchInfo",
                auditor,
                stream=stream,
                shard=shard,
                first=sequences[2],
                last=sequences[3],
                size=2,
            ),
        ),
        "execution": world.send(DLQ, status_change(execution, machine)),
    }
    return {
        "consumer": consumer,
        "auditor": auditor,
        "machine": machine,
        "execution": execution,
        "stream": stream,
        "sequences": sequences,
        "ids": ids,
    }


def group_of(target: str, body: dict[str, Any]) -> str:
    """The failure-group id `inspect` shows for a message of this body going to `target`."""
    letter = DeadLetter(QueueRef(DLQ, "", ""), "-", "-", json.dumps(body))
    return failure_group_id(target, error_signature(letter))


def test_inspect_groups_batches_by_function_and_executions_by_state_machine(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each batch pointer is grouped under the function it is replayed to; a failed execution
    under its state machine, with the error and cause the failed state recorded."""
    arranged = native_world(world)
    cfg = config(tmp_path)

    code, [document] = cli_json(capsys, "inspect", "--config", cfg, DLQ)

    assert code == 0, document
    (queue,) = document["queues"]
    groups = {group["target"]: group for group in queue["groups"]}
    assert {target: group["count"] for target, group in groups.items()} == {
        arranged["consumer"]: 1,
        arranged["auditor"]: 1,
        arranged["machine"]: 1,
    }
    assert groups[arranged["machine"]]["signature"] == "States.TaskFailed: The task failed."
    assert groups[arranged["machine"]]["example_message_id"] == arranged["ids"]["execution"]
    assert world.depth(DLQ) == 3


def test_plan_names_the_execution_to_redrive_and_the_batch_to_replay(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`retryd plan` shows each message's target and what it resumes in place: the execution
    a redrive resumes, the stream range replayed to the function."""
    arranged = native_world(world)
    settings = load_settings(Path(config(tmp_path)))

    code = anyio.run(lambda: run_plan(settings, output="json", max_messages=10))

    assert code == 0
    out = capsys.readouterr().out
    document = json.loads(out[out.index("{\n") :])
    (queue,) = [q for q in document["queues"] if q["name"] == DLQ]
    by_id = {m["message_id"]: m for m in queue["messages"]}
    execution = by_id[arranged["ids"]["execution"]]
    assert execution["target"] == {"type": "stepfunctions", "arn": arranged["machine"]}
    assert execution["resumes"] == {
        "kind": "execution",
        "execution_arn": arranged["execution"],
        "status": "FAILED",
    }
    batch = by_id[arranged["ids"]["consumer"]]
    assert batch["target"] == {"type": "lambda", "arn": arranged["consumer"]}
    assert batch["resumes"]["kind"] == "kinesis"
    assert batch["resumes"]["stream_arn"] == arranged["stream"]
    assert batch["resumes"]["batch_size"] == 2
    assert {m["action"] for m in queue["messages"]} == {"resubmit"}


def test_every_selector_selects_batches_and_executions(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Target glob, group, message id, time window and JMESPath select exact subsets of
    batch pointers and execution events; a plan changes nothing."""
    arranged = native_world(world)
    cfg = config(tmp_path)
    execution_event = status_change(arranged["execution"], arranged["machine"])
    cases: list[tuple[list[str], int]] = [
        ([], 3),
        (["--target", f"arn:aws:lambda:*:{ACCOUNT}:function:*"], 2),
        (["--target", f"arn:aws:states:*:{ACCOUNT}:stateMachine:orders"], 1),
        (["--group", group_of(arranged["machine"], execution_event)], 1),
        (["--message-id", arranged["ids"]["auditor"]], 1),
        (["--where", "KinesisBatchInfo.batchSize == `2`"], 2),
        (["--where", "detail.status == 'FAILED'"], 1),
        (["--since", "1h"], 3),
        (["--until", "2026-01-01T00:00:00Z"], 0),
    ]
    for selectors, expected in cases:
        code, [document] = cli_json(capsys, "redrive", "--config", cfg, "--from", DLQ, *selectors)
        assert code == 0, document
        assert document["plan"]["selected"] == expected, selectors
    assert world.depth(DLQ) == 3


def test_a_redrive_replays_the_selected_batch_and_redrives_the_selected_execution(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--target the consumer: its batch is read back and replayed to it, once, the other
    function's left; then --target the state machine: the execution is redriven in place."""
    arranged = native_world(world)
    world.record()
    cfg = config(tmp_path)
    selection = ["--from", DLQ, "--execute", "--ramp", "none"]

    code, documents = cli_json(
        capsys, "redrive", "--config", cfg, *selection, "--target", arranged["consumer"]
    )

    assert code == 0, documents
    assert documents[1]["job"]["counts"] == {f"resubmitted||{arranged['consumer']}": 1}
    (event,) = replayed_events(world, "consumer")
    sequences = [r["kinesis"]["sequenceNumber"] for r in event["Records"]]
    assert sequences == arranged["sequences"][:2]
    assert replayed_events(world, "auditor") == []
    assert world.depth(DLQ) == 2

    code, documents = cli_json(
        capsys, "redrive", "--config", cfg, *selection, "--target", arranged["machine"]
    )

    assert code == 0, documents
    assert documents[1]["job"]["counts"] == {f"resubmitted||{arranged['machine']}": 1}
    assert redrive_count(arranged["execution"]) == 1
    # Redriven in place: no new execution was started.
    assert [e["executionArn"] for e in world.executions(arranged["machine"])] == [
        arranged["execution"]
    ]
    assert world.depth(DLQ) == 1
