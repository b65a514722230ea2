"""`retryd inspect`: depth, feeds and failure groups per DLQ, with every lease handed back."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retryd.commands.cli import main
from retryd.models import MessageAttribute
from retryd.resolve.failure_groups import NO_ERROR, error_signature, failure_group_id, normalise
from tests.faults import Fault
from tests.native_helpers import letter, load_letter
from tests.operator_helpers import (
    PARKING,
    config_file,
    depth,
)
from tests.world import ACCOUNT, REGION, World, envelope

CHARGE = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:charge"


pytestmark = pytest.mark.usefixtures("keep_logging_config")


def string(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def destination_record(**extra: Any) -> dict[str, Any]:
    """A Lambda on-failure destination record for the function `charge`."""
    return {
        "version": "1.0",
        "timestamp": "2024-05-01T10:00:00.000Z",
        "requestContext": {
            "requestId": str(uuid.uuid4()),
            "functionArn": f"{CHARGE}:$LATEST",
            "condition": "RetriesExhausted",
            "approximateInvokeCount": 3,
        },
        "requestPayload": {"order": 1},
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST"},
        **extra,
    }


def failing_dlq(world: World) -> None:
    """retry-orders, fed by the queue `orders`, holding failures of several shapes."""
    world.create_queue(PARKING)
    world.create_function("charge")
    world.create_queue("retry-orders")
    world.create_queue(
        "orders",
        RedrivePolicy=json.dumps(
            {"deadLetterTargetArn": world.queue_arn("retry-orders"), "maxReceiveCount": "3"}
        ),
    )
    for n, millis in enumerate((3000, 2500, 3100)):
        error = {"code": "Timeout", "message": f"timed out after {millis} ms ({uuid.uuid4()})"}
        world.send("retry-orders", envelope("lambda", CHARGE, {"n": n}, error=error))
    world.send(
        "retry-orders",
        envelope("lambda", CHARGE, {"n": 9}, error={"code": "Throttled", "message": "slow down"}),
    )
    for order in (17, 18):
        response = {"errorType": "ValueError", "errorMessage": f"bad order {order}"}
        world.send("retry-orders", destination_record(responsePayload=response))
    for request in ("5f2b9c1e0a7d", "0a9e77b3c4f1"):
        world.send(
            "retry-orders",
            {"detail": {"order": 1}},
            attributes={
                "RULE_ARN": string(f"arn:aws:events:{REGION}:{ACCOUNT}:rule/orders"),
                "TARGET_ARN": string(CHARGE),
                "ERROR_CODE": string("SDK_CLIENT_ERROR"),
                "ERROR_MESSAGE": string(f"Unable to invoke Lambda, request {request}"),
            },
        )
    world.send("retry-orders", "order 5 as the source queue sent it")


def inspect_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["inspect", "--output", "json", *args])
    return code, json.loads(capsys.readouterr().out)


def test_failure_groups_count_similar_failures_together_and_release_every_lease(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Messages differing only in numbers and ids form one group; all stay visible after."""
    failing_dlq(world)

    code, document = inspect_json(capsys, "--config", config_file(tmp_path))

    assert code == 0
    [queue] = document["queues"]
    assert queue["name"] == "retry-orders"
    assert queue["sampled"] == 9
    assert queue["truncated"] is False
    groups = {(g["target"], g["signature"]): g for g in queue["groups"]}
    assert groups[(CHARGE, "Timeout: timed out after <n> ms (<uuid>)")]["count"] == 3
    assert groups[(CHARGE, "Throttled: slow down")]["count"] == 1
    assert groups[(CHARGE, "ValueError: bad order <n>")]["count"] == 2
    # What the source tried before the DLQ: Lambda's approximateInvokeCount, else nothing.
    assert groups[(CHARGE, "ValueError: bad order <n>")]["source_attempts_max"] == 3
    assert groups[(CHARGE, "Throttled: slow down")]["source_attempts_max"] is None
    signatures = {g["signature"]: g["count"] for g in queue["groups"]}
    assert signatures["SDK_CLIENT_ERROR: Unable to invoke Lambda, request <hex>"] == 2
    # The plain message has no error of its own; it goes back to the queue feeding the DLQ.
    assert groups[(world.queue_arn("orders"), NO_ERROR)]["count"] == 1
    assert sum(g["count"] for g in queue["groups"]) == 9
    # Largest group first; each group has its time span and one example.
    assert queue["groups"][0]["count"] == 3
    timeout = groups[(CHARGE, "Timeout: timed out after <n> ms (<uuid>)")]
    assert timeout["oldest"] <= timeout["newest"]
    assert timeout["example_message_id"]
    assert depth(world, "retry-orders") == (9, 0)


def test_depth_and_feeds_are_shown_per_queue(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Visible, in-flight and delayed counts, the redrive source, and a matching static route."""
    failing_dlq(world)
    world.create_queue("retry-depth")
    for n in range(3):
        world.send("retry-depth", f"m{n}")
    world.client("sqs").receive_message(
        QueueUrl=world.queue_url("retry-depth"), MaxNumberOfMessages=1, VisibilityTimeout=300
    )
    world.send("retry-depth", "later", DelaySeconds=300)
    route = f'\n[[routes]]\nqueue = "retry-dep*"\ntarget = "{world.queue_arn("orders")}"\n'

    code, document = inspect_json(capsys, "--config", config_file(tmp_path, route))

    assert code == 0
    queues = {q["name"]: q for q in document["queues"]}
    assert queues["retry-depth"]["depth"] == {"visible": 2, "in_flight": 1, "delayed": 1}
    assert queues["retry-depth"]["sampled"] == 2
    assert queues["retry-depth"]["route"] == world.queue_arn("orders")
    assert queues["retry-depth"]["feeds"] == []
    assert queues["retry-orders"]["feeds"] == [
        {"kind": "sqs-redrive", "source_arn": world.queue_arn("orders")}
    ]
    assert queues["retry-orders"]["route"] is None
    # Only the message hidden before the inspection is still in flight.
    assert depth(world, "retry-depth") == (2, 1)


def test_named_queues_only_and_a_missing_one_exits_1(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Queues named by name or URL are the only ones shown; an unknown name is reported."""
    failing_dlq(world)
    world.create_queue("retry-other")
    world.create_queue("retry-third")

    code = main(
        [
            "inspect",
            "--config",
            config_file(tmp_path),
            "--output",
            "json",
            "retry-other",
            world.queue_url("retry-third"),
            "retry-nope",
            "https://not-a-queue",
        ]
    )

    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert code == 1
    assert [q["name"] for q in document["queues"]] == ["retry-other", "retry-third"]
    assert document["missing"] == ["retry-nope", "https://not-a-queue"]
    assert "retryd inspect: no such queue: retry-nope" in captured.err


def test_text_output_is_a_table_per_queue(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The text form names the queue, its depth, its feeds, and one row per failure group."""
    failing_dlq(world)

    assert main(["inspect", "--config", config_file(tmp_path), "retry-orders"]) == 0

    out = capsys.readouterr().out
    assert out.startswith(f"retry-orders  {world.queue_arn('retry-orders')}")
    assert "  depth:   9 visible, 0 in flight, 0 delayed" in out
    assert f"  fed by:  sqs-redrive {world.queue_arn('orders')}" in out
    assert "  sampled: 9 message(s)" in out
    header = next(line for line in out.splitlines() if "COUNT" in line)
    assert header.split() == [
        "GROUP",
        "COUNT",
        "TARGET",
        "OLDEST",
        "NEWEST",
        "SOURCE",
        "TRIES",
        "EXAMPLE",
        "ERROR",
    ]
    row = next(line for line in out.splitlines() if "Timeout: timed out" in line)
    assert row.split()[1:3] == ["3", CHARGE]
    signature = row.split(maxsplit=9)[9]  # the dates are two words each
    assert row.split()[0] == failure_group_id(CHARGE, signature)
    # Lambda's approximateInvokeCount 3 is shown for the destination records' group.
    destinations = next(line for line in out.splitlines() if "ValueError: bad order" in line)
    assert " up to 3 " in destinations


def test_an_unreadable_queue_is_named_and_exits_1(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ReceiveMessage refused: the depth is still shown, the error is on stderr, exit 1."""
    world.create_queue(PARKING)
    world.create_queue("retry-a")
    world.send("retry-a", "x")
    world.faults.add(Fault("sqs", "ReceiveMessage", code="AccessDenied", status=403))

    code, document = inspect_json(capsys, "--config", config_file(tmp_path))

    assert code == 1
    [queue] = document["queues"]
    assert queue["depth"]["visible"] == 1
    assert queue["errors"] == ["receive failed: AccessDenied: injected fault"]


def test_a_boolean_is_not_taken_for_an_error_code() -> None:
    """An envelope whose error code is `true` groups by its message, not by `True`."""
    body = envelope("lambda", CHARGE, 1, error={"code": True, "message": "order 12 failed"})
    assert error_signature(letter(json.dumps(body))) == normalise("order 12 failed")


def test_each_shape_yields_its_recorded_error() -> None:
    """Envelope, destination record (error or condition), EventBridge and Lambda DLQ attributes."""
    assert (
        error_signature(letter(json.dumps(envelope("lambda", CHARGE, 1, error={"code": "E"}))))
        == "E"
    )
    assert error_signature(letter(json.dumps(envelope("lambda", CHARGE, 1)))) == NO_ERROR
    record = destination_record()
    record["requestContext"]["condition"] = "EventAgeExceeded"
    assert error_signature(letter(json.dumps(record))) == "EventAgeExceeded"
    record["responsePayload"] = {"errorType": "KeyError", "errorMessage": "'id'"}
    assert error_signature(letter(json.dumps(record))) == "KeyError: 'id'"
    assert (
        error_signature(
            letter(
                "{}",
                {
                    "ERROR_CODE": MessageAttribute.string("NO_PERMISSIONS"),
                    "ERROR_MESSAGE": MessageAttribute.string("denied on 123456789012"),
                },
            )
        )
        == "NO_PERMISSIONS: denied on <n>"
    )
    lambda_dlq = letter(
        '{"order": 1}',
        {
            "RequestID": MessageAttribute.string(str(uuid.uuid4())),
            "ErrorCode": MessageAttribute.number(200),
            "ErrorMessage": MessageAttribute.string("Task timed out after 3.00 seconds"),
        },
    )
    assert error_signature(lambda_dlq) == "200: Task timed out after <n> seconds"
    assert error_signature(letter("plain text")) == NO_ERROR
    assert error_signature(letter("[1, 2]")) == NO_ERROR


def test_a_failed_execution_event_yields_its_error_and_cause_else_its_status() -> None:
    """A Step Functions status change: `error: cause` as the failed state set them; a
    timeout, which records neither, by its status; another source's `detail` is not read."""
    event = json.loads(load_letter("stepfunctions_execution_failed").body)
    assert error_signature(letter(json.dumps(event))) == "States.TaskFailed: The task failed."
    event["detail"].update(status="TIMED_OUT", error=None, cause=None)
    assert error_signature(letter(json.dumps(event))) == "TIMED_OUT"
    event["source"] = "aws.other"
    assert error_signature(letter(json.dumps(event))) == NO_ERROR


def test_normalise_replaces_the_variable_parts() -> None:
    """UUIDs, timestamps, 0x and mixed hex ids and numbers become placeholders; words stay."""
    assert (
        normalise(f"req {uuid.uuid4()} at 2024-05-01T10:00:00.123Z id 0x1F trace 1a2b3c4d5e")
        == "req <uuid> at <time> id <hex> trace <hex>"
    )
    assert normalise("order42 failed 3 times, deadbeef facade") == (
        "order<n> failed <n> times, deadbeef facade"
    )
    assert normalise("  spread \n over\tlines ") == "spread over lines"
    assert len(normalise("x" * 1000)) == 200


@given(st.text())
def test_normalise_is_idempotent_and_leaves_no_digits(text: str) -> None:
    """Normalising twice changes nothing, and no ASCII digit survives."""
    once = normalise(text)
    assert normalise(once) == once
    assert not any(character in "0123456789" for character in once)


@given(
    st.text(alphabet=st.characters(categories=["L", "Zs", "P"]), max_size=40),
    st.text(alphabet=st.characters(categories=["L", "Zs", "P"]), max_size=40),
    st.integers(min_value=0),
    st.integers(min_value=0),
)
def test_messages_differing_only_in_a_number_share_a_signature(
    before: str, after: str, first: int, second: int
) -> None:
    """Two errors that differ only in a number normalise to the same text."""
    assert normalise(f"{before} {first} {after}") == normalise(f"{before} {second} {after}")


def test_the_kms_key_of_an_encrypted_dlq_is_shown(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SSE-KMS: the queue's KmsMasterKeyId in JSON and text; an unencrypted queue says none."""
    world.create_queue(PARKING)
    key_id = world.client("kms").create_key()["KeyMetadata"]["KeyId"]
    world.create_queue("retry-sealed", KmsMasterKeyId=key_id)
    world.create_queue("retry-plain")

    code, report = inspect_json(capsys, "--config", config_file(tmp_path))
    keys = {queue["name"]: queue["kms_key"] for queue in report["queues"]}
    assert code == 0
    assert keys == {"retry-sealed": key_id, "retry-plain": None}

    assert main(["inspect", "--config", config_file(tmp_path), "retry-sealed"]) == 0
    assert f"  kms key: {key_id}" in capsys.readouterr().out


def test_the_kms_key_of_each_sqs_target_queue_is_shown(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The SQS queues a DLQ's messages go back to: each one's key (or none), in JSON and text;
    a target the allowlist refuses is not looked at (the policy grants no read of it)."""
    world.create_queue(PARKING)
    key_id = world.client("kms").create_key()["KeyMetadata"]["KeyId"]
    world.create_queue("orders-sealed", KmsMasterKeyId=key_id)
    world.create_queue("orders-plain")
    sealed, plain = world.queue_arn("orders-sealed"), world.queue_arn("orders-plain")
    outside = f"arn:aws:sqs:{REGION}:210987654321:elsewhere"
    world.create_queue("retry-orders")
    for target in (sealed, plain, outside):
        world.send("retry-orders", envelope("sqs", target, {"n": 1}))

    code, report = inspect_json(capsys, "--config", config_file(tmp_path))
    assert code == 0
    [queue] = report["queues"]
    assert queue["target_kms_keys"] == {sealed: key_id, plain: None}

    assert main(["inspect", "--config", config_file(tmp_path), "retry-orders"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"\n  target kms keys: +{plain}: none \(not encrypted", out), out
    assert re.search(rf"\n +{sealed}: {key_id}\n", out), out
