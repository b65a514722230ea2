"""Lambda's S3 failure destinations drained as DLQs, beside SQS DLQs, on the moto server."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import anyio
import pytest
from moto.s3.models import s3_backends

from retryd.aws import open_clients
from retryd.commands.inspect import run_inspect
from retryd.commands.plan import run_plan
from retryd.control.factory import control_store
from retryd.control.memory import MemoryControlStore, MemoryDocs
from retryd.control.readmodel import read_dlqs, read_parked
from retryd.drain.buckets import Markers, walk_source
from retryd.ledger import open_ledger
from retryd.models import Outcome
from retryd.s3_objects import Listed, source_ref
from retryd.service.lifecycle import run_once
from retryd.settle.objects import Objects
from tests.conftest import SettingsFactory
from tests.e2e.helpers import cycle
from tests.faults import Fault
from tests.reliability.badinput import Generator
from tests.world import ACCOUNT, REGION, World, envelope

# moto keeps S3 (a global service) under this one partition key.
S3_PARTITION = "aws"

PARKING = "retryd-parking"
BUCKET = "lambda-failures"
PREFIX = "aws/lambda/async/charge/"


def record(function_arn: str, payload: Any) -> dict[str, Any]:
    """An on-failure invocation record as Lambda writes it (the SQS destination's shape)."""
    return {
        "version": "1.0",
        "timestamp": "2026-12-07T03:00:00.000Z",
        "requestContext": {
            "requestId": "r-1",
            "functionArn": function_arn,
            "condition": "RetriesExhausted",
            "approximateInvokeCount": 3,
        },
        "requestPayload": payload,
        "responseContext": {"statusCode": 200, "functionError": "Unhandled"},
    }


def key(n: int) -> str:
    """A key in Lambda's naming: function, date, time, a unique suffix."""
    return f"{PREFIX}2026/12/07/2026-12-07T03.00.{n // 1000:02d}-{n:08d}"


def put(world: World, name: str, body: str | dict[str, Any]) -> None:
    text = body if isinstance(body, str) else json.dumps(body)
    world.client("s3").put_object(Bucket=BUCKET, Key=name, Body=text.encode())


def keys(world: World) -> list[str]:
    found: list[str] = []
    for page in world.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        found.extend(item["Key"] for item in page.get("Contents", []))
    return found


def s3_settings(make_settings: SettingsFactory, **discovery: Any) -> Any:
    return make_settings(
        discovery={"queue_prefixes": ["retry-"], "s3_sources": [f"{BUCKET}/{PREFIX}"], **discovery}
    )


def world_with_bucket(world: World) -> str:
    world.create_queue(PARKING)
    world.client("s3").create_bucket(Bucket=BUCKET)
    return world.create_function("charge")


def test_each_s3_record_is_resubmitted_once_beside_an_sqs_dlq_and_its_object_removed(
    world: World, make_settings: SettingsFactory
) -> None:
    """Records in S3 and an envelope in an SQS DLQ each reach their function once; all leave."""
    function_arn = world_with_bucket(world)
    world.create_queue("retry-work")
    world.send("retry-work", envelope("lambda", function_arn, {"order": "sqs"}))
    for n in range(3):
        put(world, key(n), record(function_arn, {"order": n}))
    world.record()

    report = cycle(s3_settings(make_settings))

    assert report.outcomes == {"resubmitted": 4}
    payloads = sorted(json.dumps(json.loads(c["payload"])) for c in world.invocations("charge"))
    assert payloads == sorted(json.dumps({"order": o}) for o in (0, 1, 2, "sqs"))
    assert keys(world) == []
    assert world.depth("retry-work") == 0
    # A second cycle finds nothing to send again.
    again = cycle(s3_settings(make_settings))
    assert again.received == 0
    assert len(world.invocations("charge")) == 4


def test_a_malformed_object_is_parked_with_its_bucket_and_key(
    world: World, make_settings: SettingsFactory
) -> None:
    """An object that is no invocation record is parked (reason, source object) and removed."""
    world_with_bucket(world)
    put(world, key(1), "not json at all")

    report = cycle(s3_settings(make_settings))

    assert report.outcomes == {"parked": 1}
    (copy,) = world.drain(PARKING)
    attributes = copy["MessageAttributes"]
    assert attributes["retryd.reason"]["StringValue"] == "unresolvable"
    assert attributes["retryd.source-object"]["StringValue"] == f"s3://{BUCKET}/{key(1)}"
    assert attributes["retryd.source-queue"]["StringValue"] == f"{BUCKET}/{PREFIX}"
    assert copy["Body"] == "not json at all"
    assert keys(world) == []


def test_an_s3_outage_leaves_every_object_where_it_was(
    world: World, make_settings: SettingsFactory
) -> None:
    """A bucket that cannot be listed is the cycle's error; nothing is sent or removed."""
    function_arn = world_with_bucket(world)
    put(world, key(1), record(function_arn, {"order": 1}))
    settings = make_settings(
        discovery={"queue_prefixes": ["retry-"], "s3_sources": ["no-such-bucket/x/"]}
    )

    report = cycle(settings)

    assert report.received == 0
    assert any("no-such-bucket" in error for error in report.errors)
    assert keys(world) == [key(1)]


def test_tag_mode_keeps_settled_objects_and_tags_them(
    world: World, make_settings: SettingsFactory
) -> None:
    """With s3_settle = "tag" a resubmitted object stays, tagged, and is not sent again."""
    function_arn = world_with_bucket(world)
    put(world, key(1), record(function_arn, {"order": 1}))
    world.record()
    settings = s3_settings(make_settings, s3_settle="tag", s3_marker_lag_s=0)

    assert cycle(settings).outcomes == {"resubmitted": 1}
    assert cycle(settings).received == 0

    assert keys(world) == [key(1)]
    tags = world.client("s3").get_object_tagging(Bucket=BUCKET, Key=key(1))["TagSet"]
    assert tags == [{"Key": "retryd-settled", "Value": "safe"}]
    assert len(world.invocations("charge")) == 1


def _list_calls(world: World) -> list[str]:
    """The ListObjectsV2 requests the moto server saw since recording started (their URLs)."""
    return [
        entry["url"]
        for entry in world.server.recording()
        if f"/{BUCKET}" in entry.get("url", "") and "list-type=2" in entry.get("url", "")
    ]


def test_the_next_cycle_lists_from_the_marker(world: World, make_settings: SettingsFactory) -> None:
    """Settled objects kept (tag mode) are not listed again: the next cycle starts after them."""
    function_arn = world_with_bucket(world)
    for n in range(3):
        put(world, key(n), record(function_arn, {"order": n}))
    settings = s3_settings(make_settings, s3_settle="tag", s3_marker_lag_s=0)
    assert cycle(settings).outcomes == {"resubmitted": 3}
    put(world, key(3), record(function_arn, {"order": 3}))
    world.record()

    second = cycle(settings)

    assert second.outcomes == {"resubmitted": 1}
    (url,) = _list_calls(world)
    assert "start-after=" in url


@pytest.mark.slow
def test_ten_thousand_objects_are_listed_once_and_the_next_pass_lists_only_new_ones(
    world: World, make_settings: SettingsFactory
) -> None:
    """10,000 objects: one pass lists each once (10 pages); the next lists the 3 new ones only."""
    world_with_bucket(world)
    total = 10_000
    # Written straight into the emulator's store (it runs in this process): 10,000 PUTs
    # over HTTP took a minute, several on a loaded CI machine. What is tested, the
    # listing, still goes over the wire.
    bucket_store = s3_backends[ACCOUNT][S3_PARTITION]
    for n in range(total):
        bucket_store.put_object(BUCKET, key(n), b"x")
    settings = s3_settings(make_settings, s3_marker_lag_s=0)
    markers = Markers(MemoryControlStore(MemoryDocs()))
    source = source_ref(BUCKET, PREFIX)
    seen: list[str] = []

    async def settle_all(chunk: Sequence[Listed]) -> set[str]:
        seen.extend(listed.key for listed in chunk)
        return {listed.key for listed in chunk}

    async def one_pass() -> None:
        async with open_clients(settings.aws) as clients:
            await walk_source(
                clients.s3,
                markers,
                source,
                settings,
                limit=100_000,
                may_go_on=lambda: True,
                settle=settle_all,
            )

    world.record()
    anyio.run(one_pass)
    assert sorted(seen) == sorted(key(n) for n in range(total))
    assert len(_list_calls(world)) == total // 1000

    for n in range(total, total + 3):
        put(world, key(n), "x")
    seen.clear()
    world.record()
    anyio.run(one_pass)

    assert seen == [key(n) for n in range(total, total + 3)]
    assert len(_list_calls(world)) == 1


def test_objects_leased_by_a_live_replica_are_left_and_a_killed_ones_taken_over(
    world: World, make_settings: SettingsFactory, tmp_path: Any
) -> None:
    """A live replica's leased objects are left alone; a killed one's lapsed leases are taken."""
    function_arn = world_with_bucket(world)
    for n in range(4):
        put(world, key(n), record(function_arn, {"order": n}))
    world.record()
    settings = make_settings(
        discovery={"queue_prefixes": ["retry-"], "s3_sources": [f"{BUCKET}/{PREFIX}"]},
        ledger={"backend": "sqlite", "path": str(tmp_path / "ledger.sqlite3")},
    )
    source = source_ref(BUCKET, PREFIX)

    async def lease_as(owner: str, keys: list[str], clock_offset_s: float) -> None:
        # The replica's clock decides its claims' expiry: an hour ahead is a live replica's
        # lease, an hour behind one whose holder died and never renewed it.
        async with open_ledger(
            settings.ledger, None, owner=owner, clock=lambda: time.time() + clock_offset_s
        ) as ledger:
            assert await Objects(None, ledger).lease(source, keys) == keys

    anyio.run(lease_as, "live-replica", [key(0), key(1)], 3_600.0)
    anyio.run(lease_as, "killed-replica", [key(2), key(3)], -3_600.0)

    report = cycle(settings)

    assert report.outcomes == {"resubmitted": 2}
    assert keys(world) == [key(0), key(1)]
    invoked = sorted(json.loads(call["payload"])["order"] for call in world.invocations("charge"))
    assert invoked == [2, 3]


def test_s3_source_with_replicas_does_not_send_an_object_twice(
    world: World, make_settings: SettingsFactory, tmp_path: Any
) -> None:
    """Two replicas over one bucket, side by side: every record reaches its function once."""
    function_arn = world_with_bucket(world)
    for n in range(30):
        put(world, key(n), record(function_arn, {"order": n}))
    world.record()
    settings = make_settings(
        discovery={"queue_prefixes": ["retry-"], "s3_sources": [f"{BUCKET}/{PREFIX}"]},
        ledger={"backend": "sqlite", "path": str(tmp_path / "ledger.sqlite3")},
    )

    async def both() -> list[Any]:
        results: list[Any] = [None, None]

        async def one(index: int) -> None:
            results[index] = await run_once(settings, collect=True)

        async with anyio.create_task_group() as group:
            group.start_soon(one, 0)
            group.start_soon(one, 1)
        return results

    reports = anyio.run(both)

    sent = sum(report.outcomes.get(Outcome.RESUBMITTED.value, 0) for report in reports)
    invoked = [json.loads(call["payload"])["order"] for call in world.invocations("charge")]
    assert sorted(invoked) == list(range(30))
    assert sent == 30
    assert keys(world) == []


def test_a_bucket_named_by_a_functions_on_failure_destination_is_drained(
    world: World, make_settings: SettingsFactory
) -> None:
    """With s3_from_destinations, the bucket an EventInvokeConfig names is a source per function."""
    function_arn = world_with_bucket(world)
    world.client("lambda").put_function_event_invoke_config(
        FunctionName="charge",
        DestinationConfig={"OnFailure": {"Destination": f"arn:aws:s3:::{BUCKET}"}},
    )
    put(world, key(1), record(function_arn, {"order": 1}))
    # Another function's prefix is not this function's source.
    put(world, "aws/lambda/async/other/2026/12/07/x", record(function_arn, {"order": 2}))
    world.record()
    settings = make_settings(discovery={"queue_prefixes": ["retry-"], "s3_from_destinations": True})

    report = cycle(settings)

    assert report.outcomes == {"resubmitted": 1}
    assert [json.loads(c["payload"]) for c in world.invocations("charge")] == [{"order": 1}]
    assert keys(world) == ["aws/lambda/async/other/2026/12/07/x"]


def test_plan_shows_each_object_as_a_message_and_changes_nothing(
    world: World, make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """`retryd plan` reads an S3 source's objects, says what once would do, and leaves them."""
    function_arn = world_with_bucket(world)
    put(world, key(1), record(function_arn, {"order": 1}))
    put(world, key(2), "not json")
    settings = s3_settings(make_settings)

    code = anyio.run(lambda: run_plan(settings, output="json", max_messages=10))

    assert code == 0
    out = capsys.readouterr().out
    # The log lines go to stdout here (no CLI set logging up); the document follows them.
    document = json.loads(out[out.index("{\n") :])
    (source,) = [q for q in document["queues"] if q["name"] == f"{BUCKET}/{PREFIX}"]
    actions = {m["message_id"]: (m["action"], m["reason"]) for m in source["messages"]}
    assert actions == {key(1): ("resubmit", None), key(2): ("park", "unresolvable")}
    assert keys(world) == [key(1), key(2)]
    assert cycle(settings).outcomes == {"resubmitted": 1, "parked": 1}


@pytest.mark.parametrize("named", [False, True])
def test_inspect_groups_an_s3_sources_objects(
    world: World,
    make_settings: SettingsFactory,
    capsys: pytest.CaptureFixture[str],
    named: bool,
) -> None:
    """`retryd inspect` (every source, or the one named bucket/prefix) groups its objects."""
    function_arn = world_with_bucket(world)
    put(world, key(1), record(function_arn, {"order": 1}))
    put(world, key(2), record(function_arn, {"order": 2}))
    settings = s3_settings(make_settings)
    names = [f"{BUCKET}/{PREFIX}"] if named else []

    code = anyio.run(lambda: run_inspect(settings, queues=names, output="json", max_messages=10))

    assert code == 0
    out = capsys.readouterr().out
    document = json.loads(out[out.index("{\n") :])
    (source,) = [q for q in document["queues"] if q["name"] == f"{BUCKET}/{PREFIX}"]
    assert source["sampled"] == 2
    assert sum(group["count"] for group in source["groups"]) == 2
    assert keys(world) == [key(1), key(2)]


def test_hostile_objects_are_parked_or_sent_only_inside_the_allowlist(
    world: World, make_settings: SettingsFactory
) -> None:
    """Hostile bodies and forged destination records in S3: each object ends parked or sent to
    the one allowed function, and nothing reaches any other resource."""
    function_arn = world_with_bucket(world)
    world.create_function("other")
    generator = Generator(2500, f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:none")
    bodies: list[str] = []
    while len(bodies) < 40:
        hostile = generator.draw(f"u{len(bodies)}")
        if hostile.family != "huge":
            bodies.append(hostile.body)
    forged: list[Any] = [
        f"arn:aws:lambda:{REGION}:999999999999:function:charge",
        f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:charge",
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:other",
        f"arn:aws:sqs:{REGION}:{ACCOUNT}:{PARKING}",
        f"arn:aws:s3:::{BUCKET}",
        "charge",
        "",
        None,
        42,
        [function_arn],
    ]
    bodies += [json.dumps(record(arn, {"forged": n})) for n, arn in enumerate(forged)]
    bodies.append(json.dumps(record(function_arn, {"genuine": True})))
    for n, body in enumerate(bodies):
        put(world, key(n), body)
    world.record()
    settings = make_settings(
        discovery={"queue_prefixes": ["retry-"], "s3_sources": [f"{BUCKET}/{PREFIX}"]},
        guards={"allow_targets": [function_arn]},
    )

    report = cycle(settings)

    assert report.ok, report.errors
    assert set(report.outcomes) <= {"resubmitted", "parked"}
    assert sum(report.outcomes.values()) == len(bodies)
    assert keys(world) == []
    assert world.invocations("other") == []
    sent = [json.loads(call["payload"]) for call in world.invocations("charge")]
    # Only the genuine record names the allowed function of this account and region.
    assert sent == [{"genuine": True}]
    assert len(world.drain(PARKING)) == report.outcomes["parked"]


def test_the_console_read_model_records_each_s3_source(
    world: World, make_settings: SettingsFactory
) -> None:
    """After a cycle the console's read model holds a view of each S3 source, one per prefix."""
    function_arn = world_with_bucket(world)
    other = "aws/lambda/async/bill/"
    put(world, key(1), record(function_arn, {"order": 1}))
    settings = make_settings(
        discovery={
            "queue_prefixes": ["retry-"],
            "s3_sources": [f"{BUCKET}/{PREFIX}", f"{BUCKET}/{other}"],
        }
    )

    assert cycle(settings).outcomes == {"resubmitted": 1}

    views = anyio.run(read_dlqs, MemoryControlStore())
    s3_views = {view.name: view.arn for view in views if view.url.startswith("s3://")}
    assert s3_views == {
        f"{BUCKET}/{PREFIX}": f"arn:aws:s3:::{BUCKET}/{PREFIX}",
        f"{BUCKET}/{other}": f"arn:aws:s3:::{BUCKET}/{other}",
    }


def test_an_object_that_cannot_be_read_is_left_and_the_rest_are_drained(
    world: World, make_settings: SettingsFactory
) -> None:
    """A GetObject refused for one object leaves it (the cycle's error); the others are sent."""
    function_arn = world_with_bucket(world)
    for n in range(3):
        put(world, key(n), record(function_arn, {"order": n}))
    world.record()
    world.faults.add(Fault("s3", "GET", "AccessDenied", 403, contains=key(1).rsplit("/", 1)[1]))

    report = cycle(s3_settings(make_settings))

    assert report.outcomes == {"resubmitted": 2}
    assert any("AccessDenied" in error for error in report.errors)
    assert keys(world) == [key(1)]
    invoked = sorted(json.loads(call["payload"])["order"] for call in world.invocations("charge"))
    assert invoked == [0, 2]


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_the_console_read_model_shows_s3_messages_by_source_and_key(
    world: World, make_settings: SettingsFactory, tmp_path: Any, backend: str
) -> None:
    """What a cycle left in an S3 source (a failure group) and what it parked from one are in
    the console's read model under the source's bucket/prefix, each by its object key."""
    function_arn = world_with_bucket(world)
    put(world, key(1), record(function_arn, {"order": 1}))
    put(world, key(2), "not json at all")
    world.faults.add(Fault("lambda", "Invoke", "ServiceException", 500, contains="charge"))
    ledger = {"backend": "sqlite", "path": str(tmp_path / "ledger.sqlite3")}
    settings = make_settings(
        discovery={"queue_prefixes": ["retry-"], "s3_sources": [f"{BUCKET}/{PREFIX}"]},
        ledger=ledger if backend == "sqlite" else {"backend": "memory"},
    )

    report = cycle(settings)

    assert report.outcomes.get("parked") == 1
    assert keys(world) == [key(1)]
    store = control_store(settings.ledger, None)
    (view,) = [v for v in anyio.run(read_dlqs, store) if v.name == f"{BUCKET}/{PREFIX}"]
    assert (view.url, view.arn) == (f"s3://{BUCKET}/{PREFIX}", f"arn:aws:s3:::{BUCKET}/{PREFIX}")
    (group,) = view.groups
    assert (group["target"], group["example_message_id"], group["count"]) == (
        function_arn,
        key(1),
        1,
    )
    parked = anyio.run(lambda: read_parked(store, ttl_s=3_600.0)).copies
    assert [(copy.source_queue, copy.message_id, copy.reason) for copy in parked] == [
        (f"{BUCKET}/{PREFIX}", key(2), "unresolvable")
    ]
