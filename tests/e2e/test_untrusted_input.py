"""Adversarial review of resolution, targets and the operator commands.

Each test either pins a property nobody had tested (it passes), or shows a real
bug (each was an `xfail(strict=True)` until its fix landed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from retryd.admission.guards import Guards
from retryd.commands.cli import main
from retryd.models import DeadLetter, Job, Outcome, ParkReason, Target, Unresolvable
from retryd.resolve import build_chain
from retryd.resolve.failure_groups import NO_ERROR, error_signature
from retryd.settings import Settings
from tests.conftest import SettingsFactory
from tests.e2e.helpers import cycle, string
from tests.faults import Fault
from tests.native_helpers import DLQ, fixture
from tests.operator_helpers import (
    config_file,
    depth,
    visible_ids,
)
from tests.world import ACCOUNT, REGION, World, envelope

PARKING = "retryd-parking"
OTHER_REGION = "eu-west-1"


def region_wildcard_settings(make_settings: SettingsFactory) -> Settings:
    """An allowlist in the docs' own style: any region of the operator's account."""
    return make_settings(guards={"allow_targets": [f"arn:aws:*:*:{ACCOUNT}:*"]})


def bodies(world: World, queue: str) -> list[Any]:
    return [json.loads(message["Body"]) for message in world.drain(queue)]


# -- Loop guard: a target ARN is compared as a string, but SQS resolves it by name -------


def test_another_regions_arn_for_a_drained_dlq_is_never_a_target(
    world: World, make_settings: SettingsFactory
) -> None:
    """An envelope naming a drained DLQ under another region cannot put itself back there."""
    world.create_queue(PARKING)
    world.create_queue("retry-loop")
    spelled = f"arn:aws:sqs:{OTHER_REGION}:{ACCOUNT}:retry-loop"
    world.send("retry-loop", envelope("sqs", spelled, {"n": 1}))

    report = cycle(region_wildcard_settings(make_settings))

    assert report.outcomes.get(Outcome.RESUBMITTED, 0) == 0
    assert world.depth("retry-loop") == 0


def test_an_arn_with_no_region_cannot_reach_the_parking_queue(
    world: World, make_settings: SettingsFactory
) -> None:
    """A queue ARN with an empty region cannot smuggle a message into the parking queue."""
    world.create_queue(PARKING)
    world.create_queue("retry-sneak")
    spelled = f"arn:aws:sqs::{ACCOUNT}:{PARKING}"
    world.send("retry-sneak", envelope("sqs", spelled, {"n": 2}))

    report = cycle(region_wildcard_settings(make_settings))

    assert report.outcomes.get(Outcome.RESUBMITTED, 0) == 0
    parked = world.drain(PARKING)
    assert [m["MessageAttributes"].get("retryd.reason", {}).get("StringValue") for m in parked] == [
        "target-not-allowed"
    ]


def test_a_queue_arn_in_another_region_is_not_delivered_to_this_regions_queue(
    world: World, make_settings: SettingsFactory
) -> None:
    """A target queue in another region never lands in the same-named queue of this one."""
    world.create_queue(PARKING)
    world.create_queue("retry-x")
    world.create_queue("orders")
    spelled = f"arn:aws:sqs:{OTHER_REGION}:{ACCOUNT}:orders"
    world.send("retry-x", envelope("sqs", spelled, {"n": 3}))

    cycle(region_wildcard_settings(make_settings))

    assert bodies(world, "orders") == []


# -- Bodies a queue or topic cannot carry -------------------------------------------------


def test_a_payload_no_queue_can_carry_is_parked_and_spares_its_neighbours(
    world: World, make_settings: SettingsFactory
) -> None:
    """A string payload with a lone surrogate is parked; the good message beside it goes."""
    world.create_queue(PARKING)
    world.create_queue("retry-odd")
    world.create_queue("orders")
    orders = world.queue_arn("orders")
    # The DLQ body is plain ASCII JSON; only decoding it yields the unpaired surrogate.
    world.send("retry-odd", json.dumps(envelope("sqs", orders, "\ud800")))
    world.send("retry-odd", json.dumps(envelope("sqs", orders, {"good": 1})))

    report = cycle(make_settings())

    assert report.outcomes == {Outcome.RESUBMITTED: 1, Outcome.PARKED: 1}
    assert bodies(world, "orders") == [{"good": 1}]
    assert world.depth("retry-odd") == 0


# -- inspect and plan: nothing a message holds may stop them, nothing may stay leased -----

# Valid JSON nested deeper than Python's parser follows, and still far under SQS's size limit.
DEEP_LEVELS = 100_000
DEEP_BODY = "[" * DEEP_LEVELS + "]" * DEEP_LEVELS


def test_a_body_nested_too_deep_for_the_parser_has_no_error_signature() -> None:
    """error_signature falls back to `(no error recorded)` for JSON too deep to parse."""
    letter = DeadLetter(queue=DLQ, message_id="m-1", receipt_handle="r-1", body=DEEP_BODY)
    assert error_signature(letter) == NO_ERROR


@pytest.mark.usefixtures("keep_logging_config")
def test_inspect_survives_a_body_nested_too_deep_and_hands_its_lease_back(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """inspect groups an unparsable message as `(no error recorded)`; it is visible after."""
    world.create_queue(PARKING)
    world.create_queue("retry-deep")
    world.send("retry-deep", DEEP_BODY)

    code = main(["inspect", "--output", "json", "--config", config_file(tmp_path)])

    document = json.loads(capsys.readouterr().out)
    assert code == 0
    [queue] = document["queues"]
    assert [(g["signature"], g["count"]) for g in queue["groups"]] == [(NO_ERROR, 1)]
    assert depth(world, "retry-deep") == (1, 0)


@pytest.mark.usefixtures("keep_logging_config")
def test_plan_judges_a_body_nested_too_deep_without_failing(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """plan resolves the same message as any unroutable body (every resolver copes with it)."""
    world.create_queue(PARKING)
    world.create_queue("retry-deep")
    world.send("retry-deep", DEEP_BODY)

    code = main(["plan", "--output", "json", "--config", config_file(tmp_path)])

    document = json.loads(capsys.readouterr().out)
    assert code == 0
    [message] = document["queues"][0]["messages"]
    assert (message["action"], message["reason"]) == ("park", "unresolvable")
    assert depth(world, "retry-deep") == (1, 0)


@pytest.mark.usefixtures("keep_logging_config")
def test_plan_on_a_fifo_dlq_reads_every_group_and_unlocks_them_all(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """plan reads every group of a FIFO DLQ, then each group is receivable again at once."""
    world.create_queue(PARKING)
    world.create_queue("retry-orders.fifo")
    sent = {
        world.send(
            "retry-orders.fifo",
            f"order {n}",
            MessageGroupId=f"customer-{n % 2}",
            MessageDeduplicationId=f"d-{n}",
        )
        for n in range(5)
    }

    code = main(["plan", "--output", "json", "--config", config_file(tmp_path)])

    document = json.loads(capsys.readouterr().out)
    assert code == 0
    [queue] = document["queues"]
    assert {m["message_id"] for m in queue["messages"]} == sent
    assert queue["errors"] == []
    # A group whose lease was kept would stay locked: its messages would not come back.
    assert depth(world, "retry-orders.fifo") == (5, 0)
    assert visible_ids(world, "retry-orders.fifo") == sent


@pytest.mark.usefixtures("keep_logging_config")
def test_inspect_of_an_empty_dlq_reports_it_and_reads_nothing(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty named DLQ: exit 0, depth zero, no sample and no receive made."""
    world.create_queue(PARKING)
    world.create_queue("retry-empty")
    world.faults.add(
        Fault("sqs", "ReceiveMessage", code="AccessDenied", status=403, contains="retry-empty")
    )

    code = main(["inspect", "retry-empty", "--output", "json", "--config", config_file(tmp_path)])

    document = json.loads(capsys.readouterr().out)
    assert code == 0
    [queue] = document["queues"]
    assert (queue["depth"], queue["sampled"], queue["groups"]) == (
        {"visible": 0, "in_flight": 0, "delayed": 0},
        0,
        [],
    )
    assert queue["errors"] == []


# -- What a message says about itself: trusted, but only within the allowlist ---------------


def with_redrive(world: World, source: str, dlq: str) -> None:
    policy = json.dumps({"deadLetterTargetArn": world.queue_arn(dlq), "maxReceiveCount": "1"})
    world.create_queue(source, RedrivePolicy=policy)


def fail_until_redriven(world: World, source: str, dlq: str) -> None:
    """Receive from `source` without deleting until SQS's redrive policy moves it to `dlq`."""
    sqs = world.client("sqs")
    url = world.queue_url(source)
    for _ in range(5):
        sqs.receive_message(QueueUrl=url, VisibilityTimeout=0, WaitTimeSeconds=0)
        if world.depth(dlq) >= 1:
            return
    raise AssertionError(f"redrive policy never moved the message to {dlq}")


def spoofed_eventbridge_attributes(target_arn: str) -> dict[str, dict[str, str]]:
    return {
        "RULE_ARN": string(f"arn:aws:events:{REGION}:{ACCOUNT}:rule/anything"),
        "TARGET_ARN": string(target_arn),
    }


def test_a_source_queue_producer_can_steer_its_message_only_within_the_allowlist(
    world: World, make_settings: SettingsFactory
) -> None:
    """Forged TARGET_ARN on a redriven message: allowlisted wins over the source, foreign parks."""
    world.create_queue(PARKING)
    world.create_queue("retry-orders")
    with_redrive(world, "orders", "retry-orders")
    world.create_function("admin")
    admin = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:admin"
    foreign = f"arn:aws:lambda:{REGION}:999999999999:function:drain-bank"
    world.send("orders", {"steer": "admin"}, attributes=spoofed_eventbridge_attributes(admin))
    world.send("orders", {"steer": "foreign"}, attributes=spoofed_eventbridge_attributes(foreign))
    fail_until_redriven(world, "orders", "retry-orders")
    fail_until_redriven(world, "orders", "retry-orders")
    assert world.depth("retry-orders") == 2
    world.record()

    report = cycle(make_settings())

    assert report.decisions is not None
    by_body = {json.loads(d.letter.body)["steer"]: d for d in report.decisions}
    assert by_body["admin"].outcome is Outcome.RESUBMITTED
    assert by_body["admin"].target is not None
    assert by_body["admin"].target.arn == admin
    assert by_body["foreign"].outcome is Outcome.PARKED
    assert by_body["foreign"].reason == ParkReason.TARGET_NOT_ALLOWED
    assert [json.loads(call["payload"]) for call in world.invocations()] == [{"steer": "admin"}]
    assert world.depth("orders") == 0


def test_a_destination_record_naming_another_accounts_function_is_not_allowed(
    make_settings: SettingsFactory,
) -> None:
    """A Lambda destination record's functionArn is vetted like any target: foreign is parked."""
    record = fixture("lambda_destination_record")
    body = json.loads(record["Body"])
    body["requestContext"]["functionArn"] = (
        f"arn:aws:lambda:{REGION}:999999999999:function:charge:$LATEST"
    )
    letter = DeadLetter(DLQ, "m-2", "r-2", json.dumps(body))
    settings = make_settings()

    job = build_chain(settings).resolve(letter)

    assert isinstance(job, Job)
    assert job.target.arn == f"arn:aws:lambda:{REGION}:999999999999:function:charge"
    refused = Guards(settings.guards).check(job)
    assert isinstance(refused, Unresolvable)
    assert refused.reason is ParkReason.TARGET_NOT_ALLOWED


# -- Attempts: a redrive loop is stopped even when retryd's stamps cannot ride along -------


def test_a_redrive_loop_whose_stamps_do_not_fit_is_still_parked_by_the_ledger(
    world: World, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """With no room for stamps, the ledger still counts redrive trips and parks at the limit."""
    world.create_queue(PARKING)
    world.create_queue("retry-orders")
    with_redrive(world, "orders", "retry-orders")
    full = {f"user-{n}": string(str(n)) for n in range(10)}
    settings = make_settings(
        guards={"max_attempts": 2},
        ledger={"backend": "sqlite", "path": str(tmp_path / "ledger.sqlite3")},
    )
    world.send("orders", {"poison": True}, attributes=full)
    outcomes = []
    for _ in range(3):
        fail_until_redriven(world, "orders", "retry-orders")
        report = cycle(settings)
        assert report.decisions is not None
        outcomes += [(d.outcome.value, d.reason or None, d.attempt) for d in report.decisions]
        for message in world.drain("orders"):
            # No stamp fitted beside the producer's ten attributes.
            assert not any(name.startswith("retryd.") for name in message["MessageAttributes"])
            world.send("orders", message["Body"], attributes=message["MessageAttributes"])

    assert outcomes == [
        ("resubmitted", None, 1),
        ("resubmitted", None, 2),
        ("parked", "attempts-exhausted", 2),
    ]


def test_latest_is_one_spelling_of_the_unqualified_function_for_every_shape() -> None:
    """`function:f:$LATEST` and `function:f` are one target (allowlist, key, breaker), however
    the message spells it; a real qualifier (alias, version) is kept."""
    plain = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:charge"
    assert Target.from_arn(plain + ":$LATEST") == Target.from_arn(plain)
    assert Target.from_arn(plain + ":live").arn == plain + ":live"


@pytest.mark.usefixtures("keep_logging_config")
def test_inspect_prints_a_messages_escape_sequences_spelled_out_and_survives_a_lone_surrogate(
    world: World, tmp_path: Path
) -> None:
    """An error recorded with terminal escapes and a lone surrogate: shown escaped, exit 0."""
    world.create_queue(PARKING)
    world.create_queue("retry-hostile")
    function_arn = world.create_function("charge")
    error = {"code": "Boom", "message": "\x1b]0;owned\x07\x1b[2J cleared \ud800"}
    world.send("retry-hostile", envelope("lambda", function_arn, {}, error=error))

    # A real process writing to a pipe: capsys would accept what stdout cannot encode.
    done = subprocess.run(
        [sys.executable, "-m", "retryd", "inspect", "--config", config_file(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout
    assert "\x07" not in done.stdout
    assert "Boom: \\x1b]<n>;owned\\x07\\x1b[<n>J cleared \\ud800" in done.stdout
    assert depth(world, "retry-hostile") == (1, 0)
