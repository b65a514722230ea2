"""One full cycle against the moto server: every target type, every park reason, nothing lost."""

from __future__ import annotations

import base64
import json
from typing import Any

import anyio
import pytest
import structlog
from prometheus_client import CollectorRegistry

from retryd.logs import configure_logging
from retryd.models import Outcome
from retryd.service.lifecycle import run_once
from tests.conftest import SettingsFactory
from tests.e2e.helpers import cycle
from tests.faults import Fault
from tests.world import ACCOUNT, REGION, World, envelope

PARKING = "retryd-parking"


def parked(world: World) -> dict[str, dict[str, Any]]:
    """Parked copies by their retryd.reason."""
    out = {}
    for message in world.drain(PARKING):
        attributes = message["MessageAttributes"]
        out[attributes["retryd.reason"]["StringValue"]] = message
    return out


def test_each_target_type_receives_its_message_and_the_dlq_empties(
    world: World, make_settings: SettingsFactory
) -> None:
    """Envelopes for all five target types are resubmitted exactly once and deleted."""
    world.create_queue(PARKING)
    world.create_queue("retry-work")
    function_arn = world.create_function("charge")
    machine_arn = world.create_state_machine("fulfil")
    world.create_queue("invoices")
    topic_arn, topic_spy = world.create_topic_with_spy("notify")
    bus_arn, bus_spy = world.create_bus_with_spy("billing", source="shop")
    world.send("retry-work", envelope("lambda", function_arn, {"order": 1}, idempotencyKey="k-1"))
    world.send("retry-work", envelope("stepfunctions", machine_arn, {"order": 2}))
    world.send("retry-work", envelope("sqs", world.queue_arn("invoices"), {"order": 3}))
    world.send("retry-work", envelope("sns", topic_arn, "order 4 shipped"))
    world.send(
        "retry-work",
        envelope(
            "eventbridge", bus_arn, {"Source": "shop", "DetailType": "Due", "Detail": {"o": 5}}
        ),
    )
    world.record()

    report = cycle(make_settings())

    assert report.outcomes == {"resubmitted": 5}
    invocations = world.invocations("charge")
    assert [json.loads(call["payload"]) for call in invocations] == [{"order": 1}]
    executions = world.executions(machine_arn)
    assert [json.loads(e["input"]) for e in executions] == [{"order": 2}]
    invoices = world.drain("invoices")
    assert [json.loads(m["Body"]) for m in invoices] == [{"order": 3}]
    assert invoices[0]["MessageAttributes"]["retryd.attempt"]["StringValue"] == "1"
    assert invoices[0]["MessageAttributes"]["retryd.source-queue"]["StringValue"] == "retry-work"
    assert [m["Body"] for m in world.drain(topic_spy)] == ["order 4 shipped"]
    events = [json.loads(m["Body"]) for m in world.drain(bus_spy)]
    assert [(e["detail-type"], e["detail"]) for e in events] == [("Due", {"o": 5})]
    assert world.depth("retry-work") == 0
    assert world.depth(PARKING) == 0


def test_static_route_sends_the_raw_body_with_its_attributes(
    world: World, make_settings: SettingsFactory
) -> None:
    """A queue routed in the config sends its messages, unchanged, to the route's target."""
    world.create_queue(PARKING)
    world.create_queue("retry-orders")
    world.create_queue("orders")
    world.send(
        "retry-orders",
        "plain text order 9",
        attributes={"tenant": {"DataType": "String", "StringValue": "acme"}},
    )
    settings = make_settings(routes=[{"queue": "retry-ord*", "target": world.queue_arn("orders")}])

    report = cycle(settings)

    assert report.outcomes == {"resubmitted": 1}
    [message] = world.drain("orders")
    assert message["Body"] == "plain text order 9"
    assert message["MessageAttributes"]["tenant"]["StringValue"] == "acme"
    assert world.depth("retry-orders") == 0


def test_every_park_reason_leaves_a_copy_with_its_reason_and_empties_the_dlq(
    world: World, make_settings: SettingsFactory
) -> None:
    """Unresolvable, invalid envelope, forbidden target, exhausted attempts, rejected by target."""
    world.create_queue(PARKING)
    world.create_queue("retry-mixed")
    function_arn = world.create_function("charge")
    missing = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:gone"
    foreign = f"arn:aws:lambda:{REGION}:999999999999:function:charge"
    world.send("retry-mixed", "not json, no route")
    world.send("retry-mixed", {"envelope": "retryd/v1", "target": {"type": "lambda"}, "payload": 1})
    world.send("retry-mixed", envelope("lambda", foreign, {"steal": True}))
    world.send("retry-mixed", envelope("lambda", function_arn, {"n": 1}, attempt=5))
    world.send("retry-mixed", envelope("lambda", missing, {"n": 2}))
    # moto's Docker-less Lambda accepts an async invoke of any name; AWS answers 404.
    world.faults.add(
        Fault("lambda", "Invoke", code="ResourceNotFoundException", status=404, contains="gone")
    )
    world.record()

    report = cycle(make_settings())

    assert report.outcomes == {"parked": 5}
    copies = parked(world)
    assert set(copies) == {
        "unresolvable",
        "invalid-envelope",
        "target-not-allowed",
        "attempts-exhausted",
        "target-rejected",
    }
    assert copies["unresolvable"]["Body"] == "not json, no route"
    assert (
        "target.arn"
        in copies["invalid-envelope"]["MessageAttributes"]["retryd.detail"]["StringValue"]
    )
    rejected = copies["target-rejected"]["MessageAttributes"]
    assert "ResourceNotFoundException" in rejected["retryd.detail"]["StringValue"]
    assert all(
        c["MessageAttributes"]["retryd.source-queue"]["StringValue"] == "retry-mixed"
        for c in copies.values()
    )
    # Only the missing function was tried: the forged and exhausted ones were never called.
    assert all("gone" in call["url"] for call in world.invocations())
    assert world.depth("retry-mixed") == 0


def test_transient_target_failure_leaves_the_message_in_the_dlq(
    world: World, make_settings: SettingsFactory
) -> None:
    """A throttled target: nothing parked, nothing deleted, the message reappears later."""
    world.create_queue(PARKING)
    world.create_queue("retry-hot")
    function_arn = world.create_function("charge")
    world.send("retry-hot", envelope("lambda", function_arn, {"n": 1}))
    world.faults.add(Fault("lambda", "Invoke", code="TooManyRequestsException", status=429))

    report = cycle(make_settings())

    assert report.outcomes == {"failed": 1}
    assert report.reasons == {("failed", "transient-error"): 1}
    assert world.depth("retry-hot") == 1
    assert world.depth(PARKING) == 0


def test_parking_outage_deletes_nothing(world: World, make_settings: SettingsFactory) -> None:
    """When the parking queue refuses the copy, the poison message stays in its DLQ."""
    world.create_queue(PARKING)
    world.create_queue("retry-poison")
    world.send("retry-poison", "unrecognisable")
    world.faults.add(Fault("sqs", "SendMessageBatch", code="ServiceUnavailable", status=503))

    report = cycle(make_settings())

    assert report.outcomes == {"failed": 1}
    assert world.depth("retry-poison") == 1


def test_receive_outage_fails_the_cycle_and_keeps_every_message(
    world: World, make_settings: SettingsFactory
) -> None:
    """An SQS outage on ReceiveMessage is reported as an error; the DLQ is untouched."""
    world.create_queue(PARKING)
    world.create_queue("retry-a")
    world.send("retry-a", "x")
    world.faults.add(Fault("sqs", "ReceiveMessage", code="InternalError", status=500))

    report = cycle(make_settings())

    assert not report.ok
    assert report.received == 0
    world.faults.clear()
    assert world.depth("retry-a") == 1


def test_missing_parking_queue_stops_the_cycle_before_any_receive(
    world: World, make_settings: SettingsFactory
) -> None:
    """Without a parking queue nothing could be parked, so nothing is drained."""
    world.create_queue("retry-a")
    world.send("retry-a", "x")

    report = cycle(make_settings())

    assert not report.ok
    assert "retryd-parking" in report.errors[0]
    assert world.depth("retry-a") == 1


def test_cycle_budget_caps_messages_per_queue(world: World, make_settings: SettingsFactory) -> None:
    """max_messages_per_queue bounds one cycle; the rest wait for the next one."""
    world.create_queue(PARKING)
    world.create_queue("retry-deep")
    world.create_queue("dest")
    for n in range(25):
        world.send("retry-deep", envelope("sqs", world.queue_arn("dest"), {"n": n}))
    settings = make_settings(drain={"max_messages_per_queue": 10, "workers_per_queue": 1})

    first = cycle(settings)
    assert first.outcomes == {"resubmitted": 10}
    assert world.depth("retry-deep") == 15

    second = cycle(make_settings())
    assert second.outcomes == {Outcome.RESUBMITTED.value: 15}
    assert sorted(json.loads(m["Body"])["n"] for m in world.drain("dest")) == list(range(25))


def test_a_target_that_is_a_drained_queue_or_the_parking_queue_is_refused(
    world: World, make_settings: SettingsFactory
) -> None:
    """Resubmitting into a DLQ retryd drains (or into parking) would loop: parked, never sent."""
    world.create_queue(PARKING)
    world.create_queue("retry-a")
    world.create_queue("retry-b")
    world.send("retry-a", envelope("sqs", world.queue_arn("retry-b"), {"n": 1}))
    world.send("retry-a", envelope("sqs", world.queue_arn(PARKING), {"n": 2}))

    report = cycle(make_settings())

    assert report.reasons == {("parked", "target-not-allowed"): 2}
    details = [m["MessageAttributes"]["retryd.detail"]["StringValue"] for m in world.drain(PARKING)]
    assert len(details) == 2
    assert all("would loop" in detail for detail in details)
    assert world.depth("retry-b") == 0


def test_a_batch_not_settled_within_its_lease_is_left_in_the_dlq(
    world: World, make_settings: SettingsFactory
) -> None:
    """A target slower than the lease, which may not be extended (the cap is the lease): the
    batch is abandoned, nothing deleted or parked."""
    world.create_queue(PARKING)
    world.create_queue("retry-slow")
    world.create_queue("dest")
    world.send("retry-slow", envelope("sqs", world.queue_arn("dest"), {"n": 1}))
    world.faults.add(Fault("sqs", "SendMessageBatch", code=None, delay_s=6, times=1))
    settings = make_settings(
        drain={"visibility_timeout_s": 5, "max_lease_s": 5}, aws={"read_timeout_s": 30}
    )

    report = cycle(settings)

    assert report.reasons == {("failed", "lease-expired"): 1}
    assert world.depth("retry-slow") == 1
    assert world.depth(PARKING) == 0


def test_payloads_are_logged_only_when_asked(
    world: World, make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """log.include_payloads adds the body to each decision line; off by default."""
    world.create_queue(PARKING)
    world.create_queue("retry-a")
    world.send("retry-a", "secret-body-1")
    configure_logging("info", "json")
    try:
        cycle(make_settings())
        assert "secret-body-1" not in capsys.readouterr().err

        world.send("retry-a", "secret-body-2")
        cycle(make_settings(log={"include_payloads": True}))
        assert '"body": "secret-body-2"' in capsys.readouterr().err
    finally:
        # The logger was bound to capsys's stream, which closes with this test.
        structlog.reset_defaults()


def test_payload_over_the_target_limit_is_parked_not_retried_forever(
    world: World, make_settings: SettingsFactory
) -> None:
    """A payload over the target queue's own limit (256 KiB here) is parked payload-too-large."""
    world.create_queue(PARKING)
    world.create_queue("retry-big")
    world.create_queue("dest", MaximumMessageSize=str(256 * 1024))
    world.send("retry-big", envelope("sqs", world.queue_arn("dest"), "x" * 300_000))

    report = cycle(make_settings())

    assert report.reasons == {("parked", "payload-too-large"): 1}
    [copy] = world.drain(PARKING)
    assert json.loads(copy["Body"])["payload"] == "x" * 300_000
    assert world.depth("dest") == 0
    assert world.depth("retry-big") == 0


def test_payload_within_a_1_mib_target_queue_is_resubmitted(
    world: World, make_settings: SettingsFactory
) -> None:
    """300 KB goes to a target queue whose MaximumMessageSize is 1 MiB: no constant 256 KiB."""
    world.create_queue(PARKING)
    world.create_queue("retry-big")
    world.create_queue("dest", MaximumMessageSize=str(1024 * 1024))
    world.send("retry-big", envelope("sqs", world.queue_arn("dest"), "x" * 300_000))

    report = cycle(make_settings())

    assert report.outcomes == {"resubmitted": 1}
    [copy] = world.drain("dest")
    assert copy["Body"] == "x" * 300_000
    assert world.depth(PARKING) == 0
    assert world.depth("retry-big") == 0


def test_a_copy_the_parking_queue_cannot_take_stays_in_its_dlq(
    world: World, make_settings: SettingsFactory
) -> None:
    """Too large for its target and for a 256 KiB parking queue: it stays, parking-failed."""
    world.create_queue(PARKING, MaximumMessageSize=str(256 * 1024))
    world.create_queue("retry-big")
    world.create_queue("dest", MaximumMessageSize=str(256 * 1024))
    world.send("retry-big", envelope("sqs", world.queue_arn("dest"), "x" * 300_000))

    report = cycle(make_settings())

    assert report.reasons == {("failed", "parking-failed"): 1}
    [decision] = report.decisions or []
    assert "payload-too-large" in decision.detail
    assert world.depth(PARKING) == 0
    assert world.depth("dest") == 0
    assert world.depth("retry-big") == 1


def test_fifo_dlq_to_fifo_target_keeps_the_group(
    world: World, make_settings: SettingsFactory
) -> None:
    """A FIFO dead letter goes back to a FIFO queue in its own message group, in order."""
    world.create_queue(PARKING)
    world.create_queue("retry-orders.fifo", ContentBasedDeduplication="true")
    world.create_queue("orders.fifo")
    for n in range(3):
        world.send(
            "retry-orders.fifo",
            envelope("sqs", world.queue_arn("orders.fifo"), {"n": n}),
            MessageGroupId="customer-7",
        )

    report = cycle(make_settings(drain={"workers_per_queue": 1}))

    assert report.outcomes == {"resubmitted": 3}
    delivered = world.drain("orders.fifo")
    assert [json.loads(m["Body"])["n"] for m in delivered] == [0, 1, 2]
    assert {m["Attributes"]["MessageGroupId"] for m in delivered} == {"customer-7"}
    assert world.depth("retry-orders.fifo") == 0


def test_depth_is_exported_and_empty_dlqs_are_not_polled(
    world: World, make_settings: SettingsFactory
) -> None:
    """Each DLQ's depth becomes a gauge; an empty DLQ costs no ReceiveMessage call."""
    world.create_queue(PARKING)
    world.create_queue("retry-empty")
    world.create_queue("retry-full")
    world.create_queue("dest")
    for n in range(3):
        world.send("retry-full", envelope("sqs", world.queue_arn("dest"), {"n": n}))
    registry = CollectorRegistry()
    world.record()

    anyio.run(lambda: run_once(make_settings(), registry=registry))

    def depth(queue: str) -> float | None:
        return registry.get_sample_value(
            "retryd_dlq_messages",
            {"queue": queue, "account": ACCOUNT, "region": REGION, "state": "visible"},
        )

    assert depth("retry-full") == 3
    assert depth("retry-empty") == 0
    receives = [
        recorded_body(entry)
        for entry in world.server.recording()
        if entry.get("headers", {}).get("X-Amz-Target") == "AmazonSQS.ReceiveMessage"
    ]
    assert any("retry-full" in body for body in receives)
    assert all("retry-empty" not in body for body in receives)
    assert world.depth("retry-full") == 0


def recorded_body(entry: dict[str, Any]) -> str:
    body = str(entry.get("body") or "")
    return base64.b64decode(body).decode() if entry.get("body_encoded") else body


def test_a_malformed_answer_fails_its_own_jobs_as_transient_and_no_others(
    world: World, make_settings: SettingsFactory
) -> None:
    """A GetQueueUrl 200 without QueueUrl leaves the SQS job in its DLQ; the SNS job goes."""
    world.create_queue(PARKING)
    world.create_queue("retry-mixed")
    world.create_queue("dest")
    topic_arn, spy = world.create_topic_with_spy("notify")
    world.send("retry-mixed", envelope("sqs", world.queue_arn("dest"), {"order": 1}))
    world.send("retry-mixed", envelope("sns", topic_arn, "order 2 shipped"))
    world.faults.add(
        Fault(
            "sqs",
            "GetQueueUrl",
            answer="<html>502</html>",
            contains='"dest"',
            times=1,
        )
    )

    report = cycle(make_settings())

    assert report.outcomes == {"resubmitted": 1, "failed": 1}
    assert report.reasons == {("failed", "transient-error"): 1}
    assert [m["Body"] for m in world.drain(spy)] == ["order 2 shipped"]
    assert world.depth("dest") == 0
    assert world.depth("retry-mixed") == 1
