"""The EventBridge resubmitter: PutEvents entries on the target bus, against the moto server."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from retryd.aws import AwsClients
from retryd.models import ErrorClass, Refusal, SendError, Target
from retryd.targets.base import Resubmitter, pack_batches
from retryd.targets.event_bus import (
    PUT_EVENTS_LIMIT_BYTES,
    PUT_EVENTS_MAX_BYTES,
    PUT_EVENTS_MAX_ENTRIES,
    EventBusTarget,
    entry_size_bytes,
    to_entry,
)
from tests.conftest import SettingsFactory
from tests.faults import Fault
from tests.targets.helpers import (
    BUS_SOURCE,
    DEEP_JSON,
    YEAR_ONE_EVENT,
    codes,
    make_job,
    permanent,
    recorded_calls,
    submit,
)
from tests.world import ACCOUNT, REGION, World


def bus_target(clients: AwsClients) -> Resubmitter:
    return EventBusTarget(clients.events)


def spy_events(world: World, spy: str) -> list[dict[str, Any]]:
    return [json.loads(message["Body"]) for message in world.drain(spy)]


def test_event_bus_puts_entries_and_delivered_events_on_the_target_bus(
    world: World, make_settings: SettingsFactory
) -> None:
    """Both body shapes reach the target bus with their detail, whatever bus the body names."""
    bus_arn, spy = world.create_bus_with_spy("orders-bus", source=BUS_SOURCE)
    target = Target.from_arn(bus_arn)
    entry = {
        "Source": BUS_SOURCE,
        "DetailType": "OrderPlaced",
        "Detail": {"orderId": "1"},
        "EventBusName": "default",
    }
    delivered = {
        "version": "0",
        "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "source": BUS_SOURCE,
        "detail-type": "OrderPlaced",
        "account": ACCOUNT,
        "time": "2024-05-01T12:00:00Z",
        "region": REGION,
        "resources": ["arn:aws:s3:::bucket"],
        "detail": {"orderId": "2"},
    }
    jobs = [
        make_job(target, json.dumps(entry), key="a"),
        make_job(target, json.dumps(delivered), key="b"),
    ]

    deliveries = submit(make_settings, bus_target, target, jobs)

    assert all(d.accepted for d in deliveries)
    events = sorted(spy_events(world, spy), key=lambda event: event["detail"]["orderId"])
    assert [event["detail"] for event in events] == [{"orderId": "1"}, {"orderId": "2"}]
    assert {event["detail-type"] for event in events} == {"OrderPlaced"}
    assert events[1]["resources"] == ["arn:aws:s3:::bucket"]


def test_event_bus_packs_23_events_into_3_calls(
    world: World, make_settings: SettingsFactory
) -> None:
    """23 events go out in 3 PutEvents calls (10, 10, 3) and all are delivered."""
    bus_arn, spy = world.create_bus_with_spy("bulk-bus", source=BUS_SOURCE)
    target = Target.from_arn(bus_arn)
    world.record()
    jobs = [
        make_job(
            target,
            json.dumps({"Source": BUS_SOURCE, "DetailType": "T", "Detail": json.dumps({"n": n})}),
            key=f"k{n}",
        )
        for n in range(23)
    ]

    deliveries = submit(make_settings, bus_target, target, jobs)

    assert all(d.accepted for d in deliveries)
    calls = recorded_calls(world, "PutEvents", bus_arn)
    assert [len(json.loads(body)["Entries"]) for body in calls] == [10, 10, 3]
    assert sorted(event["detail"]["n"] for event in spy_events(world, spy)) == list(range(23))


def test_event_bus_throttling_fails_every_job_of_the_call(
    world: World, make_settings: SettingsFactory
) -> None:
    """A whole-call ThrottlingException is the same transient error for each job in it."""
    bus_arn, _ = world.create_bus_with_spy("orders-bus", source=BUS_SOURCE)
    target = Target.from_arn(bus_arn)
    fault = world.faults.add(Fault("events", "PutEvents", code="ThrottlingException"))
    body = json.dumps({"Source": BUS_SOURCE, "DetailType": "T", "Detail": "{}"})

    deliveries = submit(
        make_settings, bus_target, target, [make_job(target, body, key=f"k{n}") for n in range(3)]
    )

    assert [d.error for d in deliveries] == [
        SendError(ErrorClass.TRANSIENT, "ThrottlingException", "injected fault")
    ] * 3
    # Throttling is about the bus, not an entry: no entry is tried again on its own.
    assert fault.hits == 1


def test_event_bus_permanent_whole_call_failure_is_narrowed_to_its_entry(
    world: World, make_settings: SettingsFactory
) -> None:
    """A call refused as a whole is resent entry by entry: only the poisoned entry fails."""
    bus_arn, spy = world.create_bus_with_spy("orders-bus", source=BUS_SOURCE)
    target = Target.from_arn(bus_arn)
    fault = world.faults.add(
        Fault("events", "PutEvents", code="ValidationException", contains="poison-marker", times=2)
    )
    details = [{"n": 0}, {"n": 1, "p": "poison-marker"}, {"n": 2}]
    jobs = [
        make_job(
            target,
            json.dumps({"Source": BUS_SOURCE, "DetailType": "T", "Detail": detail}),
            key=f"k{n}",
        )
        for n, detail in enumerate(details)
    ]

    deliveries = submit(make_settings, bus_target, target, jobs)

    assert codes(deliveries) == [None, "ValidationException", None]
    assert permanent(deliveries[1])
    assert fault.hits == 2
    assert sorted(event["detail"]["n"] for event in spy_events(world, spy)) == [0, 2]


def test_event_bus_refuses_bad_bodies_without_calling_aws(
    world: World, make_settings: SettingsFactory
) -> None:
    """Bodies that are not JSON, lack Source/DetailType/Detail, or are too big never reach AWS."""
    bus_arn, _ = world.create_bus_with_spy("orders-bus", source=BUS_SOURCE)
    target = Target.from_arn(bus_arn)
    world.record()
    huge = {"Source": BUS_SOURCE, "DetailType": "T", "Detail": {"x": "y" * PUT_EVENTS_MAX_BYTES}}
    bodies = [
        "not json",
        json.dumps({"Source": BUS_SOURCE, "DetailType": "T"}),
        json.dumps({"DetailType": "T", "Detail": {}}),
        json.dumps({"Source": BUS_SOURCE, "DetailType": "T", "Detail": "[1, 2]"}),
        json.dumps(huge),
    ]

    deliveries = submit(
        make_settings, bus_target, target, [make_job(target, b, key=b[:9]) for b in bodies]
    )

    assert codes(deliveries) == [Refusal.INVALID_PAYLOAD] * 4 + [Refusal.PAYLOAD_TOO_LARGE]
    assert recorded_calls(world, "PutEvents", bus_arn) == []


def test_event_bus_unpreparable_bodies_fail_those_jobs_alone(
    world: World, make_settings: SettingsFactory
) -> None:
    """Deep JSON and a Time with no UTC form are permanent invalid payloads; the rest are put."""
    bus_arn, spy = world.create_bus_with_spy("orders-bus", source=BUS_SOURCE)
    target = Target.from_arn(bus_arn)
    good = [
        json.dumps({"Source": BUS_SOURCE, "DetailType": "T", "Detail": {"n": n}}) for n in range(3)
    ]
    bodies = [good[0], DEEP_JSON, good[1], YEAR_ONE_EVENT, good[2]]

    deliveries = submit(
        make_settings,
        bus_target,
        target,
        [make_job(target, b, key=f"k{n}") for n, b in enumerate(bodies)],
    )

    assert codes(deliveries) == [None, Refusal.INVALID_PAYLOAD, None, Refusal.INVALID_PAYLOAD, None]
    assert "RecursionError" in permanent(deliveries[1]).message
    assert "OverflowError" in permanent(deliveries[3]).message
    assert "0001" not in permanent(deliveries[3]).message
    assert sorted(event["detail"]["n"] for event in spy_events(world, spy)) == [0, 1, 2]


class _BrokenOnMarkerEvents:
    """An events client whose PutEvents breaks with a non-AWS error on a marked entry."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    async def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803 - botocore's keyword
        self.calls.append(len(Entries))
        if any("poison-marker" in entry["Detail"] for entry in Entries):
            raise ValueError("cannot serialize")
        return {"FailedEntryCount": 0, "Entries": [{"EventId": "e"} for _ in Entries]}


def test_event_bus_non_aws_whole_call_failure_is_narrowed_to_its_entry() -> None:
    """A call broken by a non-AWS exception is resent entry by entry, so good entries still go."""
    target = Target.from_arn(f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/b")
    details = [{"n": 0}, {"p": "poison-marker"}, {"n": 2}]
    jobs = [
        make_job(
            target,
            json.dumps({"Source": "s", "DetailType": "T", "Detail": detail}),
            key=f"k{n}",
        )
        for n, detail in enumerate(details)
    ]
    client = _BrokenOnMarkerEvents()

    deliveries = anyio.run(EventBusTarget(client).submit, target, jobs)

    assert codes(deliveries) == [None, "ValueError", None]
    assert client.calls == [3, 1, 1, 1]


class _PartialFailureEvents:
    """An events client answering PutEvents in AWS's documented partial-failure shape."""

    def __init__(self) -> None:
        self.calls: list[list[dict[str, Any]]] = []

    async def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803 - botocore's keyword
        self.calls.append(Entries)
        results: list[dict[str, Any]] = [
            {"ErrorCode": "InternalFailure", "ErrorMessage": "try again"}
            if json.loads(entry["Detail"]).get("fail")
            else {"EventId": f"e{n}"}
            for n, entry in enumerate(Entries)
        ]
        return {"FailedEntryCount": sum("ErrorCode" in r for r in results), "Entries": results}


def test_event_bus_maps_failed_entries_back_to_their_jobs() -> None:
    """Per-entry ErrorCodes land on the jobs in request order, across batches and refusals."""
    target = Target.from_arn(f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/b")
    failing = {3, 11, 12}
    jobs = [
        make_job(
            target,
            json.dumps(
                {"Source": "s", "DetailType": "T", "Detail": {"n": n, "fail": n in failing}}
            ),
            key=f"k{n}",
        )
        for n in range(14)
    ]
    jobs.insert(5, make_job(target, "oops", key="bad"))
    client = _PartialFailureEvents()

    deliveries = anyio.run(EventBusTarget(client).submit, target, jobs)

    assert [d.job for d in deliveries] == jobs
    assert [len(call) for call in client.calls] == [10, 4]
    by_key = {d.job.key: d.error for d in deliveries}
    assert codes([d for d in deliveries if d.job.key == "bad"]) == [Refusal.INVALID_PAYLOAD]
    for n in range(14):
        error = by_key[f"k{n}"]
        if n in failing:
            assert error == SendError(ErrorClass.TRANSIENT, "InternalFailure", "try again")
        else:
            assert error is None
    assert all(entry["EventBusName"] == target.arn for call in client.calls for entry in call)


def test_to_entry_converts_a_delivered_event() -> None:
    """A delivered event becomes an entry; fields EventBridge assigns itself are dropped."""
    entry = to_entry(
        json.dumps(
            {
                "id": "x",
                "account": ACCOUNT,
                "source": "s",
                "detail-type": "T",
                "detail": {"a": 1},
                "time": "2024-05-01T12:00:00Z",
                "resources": ["r"],
            }
        ),
        "arn:bus",
    )
    assert set(entry) == {"Source", "DetailType", "Detail", "Resources", "Time", "EventBusName"}
    assert entry["Detail"] == '{"a":1}'
    assert entry["Time"].isoformat() == "2024-05-01T12:00:00+00:00"
    assert entry["EventBusName"] == "arn:bus"
    assert entry_size_bytes(entry) == 14 + len("s") + len("T") + len('{"a":1}') + len("r")


@given(sizes=st.lists(st.integers(1, PUT_EVENTS_MAX_BYTES - 1), max_size=60))
def test_plan_batches_respects_both_limits_in_order(sizes: list[int]) -> None:
    """Batches keep order, cover every entry once, and stay within 10 entries and 256 KiB."""
    batches = pack_batches(range(len(sizes)), sizes.__getitem__, PUT_EVENTS_LIMIT_BYTES)
    assert [index for batch in batches for index in batch] == list(range(len(sizes)))
    for batch in batches:
        assert 1 <= len(batch) <= PUT_EVENTS_MAX_ENTRIES
        assert len(batch) == 1 or sum(sizes[i] for i in batch) < PUT_EVENTS_MAX_BYTES


@pytest.mark.parametrize(
    "reply",
    ['{"Entries": "ok"}', '{"Entries": [null, null]}', "<html>502 Bad Gateway</html>"],
    ids=["entries-not-a-list", "null-results", "html-page"],
)
def test_event_bus_malformed_answer_is_one_transient_verdict(
    world: World, make_settings: SettingsFactory, reply: str
) -> None:
    """A PutEvents 200 without readable results is transient for each job, with no resends."""
    bus_arn, _ = world.create_bus_with_spy("orders-bus", source=BUS_SOURCE)
    target = Target.from_arn(bus_arn)
    fault = world.faults.add(Fault("events", "PutEvents", answer=reply))
    body = json.dumps({"Source": BUS_SOURCE, "DetailType": "T", "Detail": "{}"})

    deliveries = submit(
        make_settings, bus_target, target, [make_job(target, body, key=f"k{n}") for n in range(2)]
    )

    for delivery in deliveries:
        assert delivery.error is not None
        assert delivery.error.error_class is ErrorClass.TRANSIENT
    # The events may have been put: sending them again one by one would only add copies.
    assert fault.hits == 1
