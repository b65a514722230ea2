"""`retryd plan` against the moto server: it says what `once` would do and changes nothing."""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from rich.console import Console

from retryd.admission.verdicts import Defer, DeferReason, Go, Park
from retryd.aws import open_clients
from retryd.commands import progress
from retryd.commands.cli import main
from retryd.commands.plan import Action, PlannedMessage
from retryd.discovery.survey import Peek, peek
from retryd.models import DeadLetter, Job, ParkReason, QueueRef, Target, queue_ref_from_url
from retryd.service.lifecycle import run_once
from tests.conftest import SettingsFactory
from tests.faults import Fault
from tests.native_helpers import fixture
from tests.operator_helpers import (
    CONFIG,
    PARKING,
    config_file,
    depth,
    visible_ids,
)
from tests.world import ACCOUNT, REGION, World, envelope

FOREIGN = f"arn:aws:lambda:{REGION}:999999999999:function:charge"


pytestmark = pytest.mark.usefixtures("keep_logging_config")


def mixed_dlq(world: World) -> dict[str, str]:
    """A DLQ holding one message of each kind; label -> message id."""
    world.create_queue(PARKING)
    world.create_queue("retry-mixed")
    function_arn = world.create_function("charge")
    return {
        "good": world.send("retry-mixed", envelope("lambda", function_arn, {"n": 1}, attempt=1)),
        "invalid": world.send(
            "retry-mixed", {"envelope": "retryd/v1", "target": {"type": "lambda"}, "payload": 1}
        ),
        "foreign": world.send("retry-mixed", envelope("lambda", FOREIGN, {"n": 2})),
        "exhausted": world.send(
            "retry-mixed", envelope("lambda", function_arn, {"n": 3}, attempt=5)
        ),
        "unresolvable": world.send("retry-mixed", "not json, no route"),
    }


def plan_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["plan", "--output", "json", *args])
    return code, json.loads(capsys.readouterr().out)


def by_id(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["message_id"]: m for q in document["queues"] for m in q["messages"]}


def test_plan_prints_each_decision_and_leaves_every_message_in_place(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One line per message with the right decision; afterwards all are visible, none sent."""
    ids = mixed_dlq(world)
    world.record()

    assert main(["plan", "--config", config_file(tmp_path)]) == 0

    out = capsys.readouterr().out
    lines = {
        label: next(line for line in out.splitlines() if message_id in line)
        for label, message_id in ids.items()
    }
    assert "resubmit as attempt 2" in lines["good"]
    assert "function:charge" in lines["good"]
    assert "envelope" in lines["good"]
    assert "park invalid-envelope" in lines["invalid"]
    assert "park target-not-allowed" in lines["foreign"]
    assert FOREIGN in lines["foreign"]
    assert "park attempts-exhausted" in lines["exhausted"]
    assert "attempt 5 of at most 5" in lines["exhausted"]
    assert "park unresolvable" in lines["unresolvable"]
    assert all(line.startswith("retry-mixed ") for line in lines.values())
    assert "1 queue(s), 5 message(s) examined: 1 resubmit, 4 park, 0 defer, 0 hold" in out
    # The leases were handed back: every message is visible at once, nothing in flight.
    assert depth(world, "retry-mixed") == (5, 0)
    assert visible_ids(world, "retry-mixed") == set(ids.values())
    assert world.invocations() == []
    assert world.depth(PARKING) == 0


def test_plan_json_is_one_document_with_every_field(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--output json`: per queue its messages and counts, and a summary that adds up."""
    ids = mixed_dlq(world)
    world.create_queue("retry-empty")

    code, document = plan_json(capsys, "--config", config_file(tmp_path))

    assert code == 0
    assert document["version"] == 1
    assert [q["name"] for q in document["queues"]] == ["retry-empty", "retry-mixed"]
    empty, mixed = document["queues"]
    assert empty["messages"] == []
    assert empty["depth"]["visible"] == 0
    assert mixed["depth"] == {"visible": 5, "in_flight": 0, "delayed": 0}
    assert mixed["examined"] == 5
    assert mixed["truncated"] is False
    assert mixed["errors"] == []
    messages = by_id(document)
    good = messages[ids["good"]]
    assert good == {
        "message_id": ids["good"],
        "action": "resubmit",
        "reason": None,
        "attempt": 2,
        "source_attempts": 0,
        "delay_s": None,
        "resolver": "envelope",
        "target": {"type": "lambda", "arn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:charge"},
        "detail": "",
        "resumes": None,
    }
    assert messages[ids["unresolvable"]]["target"] is None
    assert messages[ids["unresolvable"]]["resolver"] is None
    assert "target.arn" in messages[ids["invalid"]]["detail"]
    summary = document["summary"]
    assert summary["messages"] == 5
    assert summary["actions"] == {"resubmit": 1, "park": 4, "defer": 0, "hold": 0}
    assert {(g["action"], g["reason"], g["count"]) for g in summary["groups"]} == {
        ("resubmit", None, 1),
        ("park", "invalid-envelope", 1),
        ("park", "target-not-allowed", 1),
        ("park", "attempts-exhausted", 1),
        ("park", "unresolvable", 1),
    }
    assert summary["failed_queues"] == []
    assert capsys.readouterr().err == ""


def test_plan_agrees_with_what_once_then_does(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make_settings: SettingsFactory,
) -> None:
    """For every message, `once` does exactly what the plan said: outcome, reason, attempt."""
    ids = mixed_dlq(world)
    world.create_queue("retry-routed")
    world.create_queue("orders")
    ids["routed"] = world.send("retry-routed", "order 7")
    # A target that is one of the DLQs themselves would loop: refused as not allowed.
    ids["loop"] = world.send(
        "retry-mixed", envelope("sqs", world.queue_arn("retry-routed"), "back")
    )
    route = f'\n[[routes]]\nqueue = "retry-routed"\ntarget = "{world.queue_arn("orders")}"\n'

    code, document = plan_json(capsys, "--config", config_file(tmp_path, route))
    assert code == 0
    planned = by_id(document)
    assert planned.keys() == set(ids.values())
    assert planned[ids["loop"]]["reason"] == "target-not-allowed"
    assert planned[ids["routed"]]["resolver"] == "static-route"

    settings = make_settings(
        routes=[{"queue": "retry-routed", "target": world.queue_arn("orders")}]
    )
    report = anyio.run(lambda: run_once(settings, collect=True))

    assert report.decisions is not None
    done = {d.letter.message_id: d for d in report.decisions}
    assert done.keys() == planned.keys()
    outcome_of = {
        "resubmit": "resubmitted",
        "park": "parked",
        "defer": "deferred",
        "hold": "failed",
    }
    for message_id, plan in planned.items():
        decision = done[message_id]
        assert decision.outcome.value == outcome_of[plan["action"]], message_id
        assert (decision.reason or None) == plan["reason"], message_id
        assert decision.attempt == plan["attempt"], message_id
        target = decision.target.arn if decision.target else None
        assert target == (plan["target"]["arn"] if plan["target"] else None), message_id


def test_an_unreadable_queue_is_named_and_exits_1_while_the_others_are_planned(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ReceiveMessage refused on one DLQ: exit 1, stderr names it, the other DLQ is planned."""
    world.create_queue(PARKING)
    world.create_queue("retry-a")
    world.create_queue("retry-b")
    world.send("retry-a", "a")
    world.send("retry-b", "b")
    world.faults.add(
        Fault("sqs", "ReceiveMessage", code="AccessDenied", status=403, contains="retry-b")
    )

    code = main(["plan", "--config", config_file(tmp_path)])

    captured = capsys.readouterr()
    assert code == 1
    assert "retryd plan: retry-b: receive failed: AccessDenied" in captured.err
    assert "retry-a" not in captured.err
    assert "park unresolvable" in captured.out
    assert "error: receive failed: AccessDenied" in captured.out


def test_leases_are_released_when_a_later_receive_fails(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ten messages leased, then the next receive fails: the ten are visible again at once."""
    world.create_queue(PARKING)
    world.create_queue("retry-a")
    sent = {world.send("retry-a", f"m{n}") for n in range(12)}
    # The second receive asks for the last 2 of --max-messages 12.
    world.faults.add(
        Fault(
            "sqs",
            "ReceiveMessage",
            code="InternalError",
            status=500,
            contains='"MaxNumberOfMessages": 2',
        )
    )

    code, document = plan_json(capsys, "--config", config_file(tmp_path), "--max-messages", "12")

    assert code == 1
    assert document["queues"][0]["examined"] == 10
    world.faults.clear()
    assert depth(world, "retry-a") == (12, 0)
    assert visible_ids(world, "retry-a") == sent


def test_max_messages_limits_the_plan_and_every_lease_is_released(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """25 messages, --max-messages 23: 23 examined (marked truncated), all 25 visible after."""
    world.create_queue(PARKING)
    world.create_queue("retry-a")
    for n in range(25):
        world.send("retry-a", f"m{n}")

    code, document = plan_json(capsys, "--config", config_file(tmp_path), "--max-messages", "23")

    assert code == 0
    [queue] = document["queues"]
    assert queue["examined"] == 23
    assert queue["truncated"] is True
    assert len({m["message_id"] for m in queue["messages"]}) == 23
    assert depth(world, "retry-a") == (25, 0)


def test_a_failed_release_is_reported(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ChangeMessageVisibilityBatch refused: exit 1 and stderr says the messages reappear later."""
    world.create_queue(PARKING)
    world.create_queue("retry-a")
    world.send("retry-a", "a")
    world.faults.add(Fault("sqs", "ChangeMessageVisibilityBatch", code="InternalError", status=500))

    code = main(["plan", "--config", config_file(tmp_path)])

    err = capsys.readouterr().err
    assert code == 1
    assert "1 message(s) not released: InternalError" in err
    assert "reappears by itself within 30s" in err


def test_a_missing_parking_queue_stops_the_plan_like_it_stops_a_cycle(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No parking queue: exit 4 with the reason, and nothing is read."""
    world.create_queue("retry-a")
    world.send("retry-a", "a")

    assert main(["plan", "--config", config_file(tmp_path)]) == 4

    assert "parking queue 'retryd-parking' not found" in capsys.readouterr().err
    assert depth(world, "retry-a") == (1, 0)


def test_max_messages_below_one_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--max-messages 0 is a usage error (exit 2), not an empty plan."""
    assert main(["plan", "--config", config_file(tmp_path), "--max-messages", "0"]) == 2
    assert "--max-messages must be at least 1" in capsys.readouterr().err


def _letter() -> DeadLetter:
    queue = QueueRef("retry-a", "https://sqs.us-east-1.amazonaws.com/1/retry-a", "arn:q")
    return DeadLetter(queue, "m-1", "r-1", "{}")


def test_every_verdict_kind_reads_as_a_decision() -> None:
    """Go, Park and Defer become resubmit/park/defer lines with attempt, reason and delay."""
    letter = _letter()
    target = Target.from_arn(f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:f")
    job = Job(letter, target, "{}", "k", attempt=2, resolver="envelope")
    go = PlannedMessage.from_verdict(Go(job, 3))
    park = PlannedMessage.from_verdict(Park(letter, ParkReason.TOO_OLD, "old", 2, job))
    defer = PlannedMessage.from_verdict(Defer(job, DeferReason.BACKOFF, 42.4, "due", 2))
    assert go.decision() == "resubmit as attempt 3"
    assert park.decision() == "park too-old"
    assert defer.decision() == "defer backoff for 42s"
    assert (defer.action, defer.delay_s, defer.attempt, defer.target) == (
        Action.DEFER,
        42.4,
        2,
        target,
    )
    assert defer.to_json()["delay_s"] == 42.4


def test_the_sources_own_tries_are_shown_beside_retryds_attempt() -> None:
    """A job whose source tried 185 times reads `resubmit as attempt 1 (source tried 185)`."""
    letter = _letter()
    target = Target.from_arn(f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:f")
    job = Job(letter, target, "{}", "k", source_attempts=185)
    go = PlannedMessage.from_verdict(Go(job, 1))
    park = PlannedMessage.from_verdict(Park(letter, ParkReason.TOO_OLD, "old", 0, job))
    assert go.decision() == "resubmit as attempt 1 (source tried 185)"
    assert park.decision() == "park too-old (source tried 185)"
    assert (go.to_json()["attempt"], go.to_json()["source_attempts"]) == (1, 185)


def test_plan_resubmits_an_eventbridge_message_its_default_policy_retried_185_times(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """RETRY_ATTEMPTS=185, max_attempts 5: the plan says resubmit as attempt 1, source tried 185."""
    world.create_queue(PARKING)
    world.create_queue("retry-events")
    function_arn = world.create_function("charge")
    failure = {
        "RULE_ARN": f"arn:aws:events:{REGION}:{ACCOUNT}:rule/orders",
        "TARGET_ARN": function_arn,
        "ERROR_CODE": "SDK_CLIENT_ERROR",
        "ERROR_MESSAGE": "Unable to invoke Lambda",
        "RETRY_ATTEMPTS": "185",
    }
    message_id = world.send(
        "retry-events",
        {"source": "shop", "detail-type": "OrderPlaced", "detail": {"n": 1}},
        attributes={k: {"DataType": "String", "StringValue": v} for k, v in failure.items()},
    )

    code, document = plan_json(capsys, "--config", config_file(tmp_path))
    assert main(["plan", "--config", config_file(tmp_path)]) == 0

    assert code == 0
    planned = by_id(document)[message_id]
    assert (planned["action"], planned["attempt"], planned["source_attempts"]) == (
        "resubmit",
        1,
        185,
    )
    line = next(line for line in capsys.readouterr().out.splitlines() if message_id in line)
    assert "resubmit as attempt 1 (source tried 185)" in line


def test_progress_is_drawn_only_when_wanted(capsys: pytest.CaptureFixture[str]) -> None:
    """A bar names the queue on a terminal; off, it writes nothing; JSON output never wants one."""
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    with progress.QueueProgress(enabled=True, console=console) as bars:
        bar = bars.add("retry-orders", 20)
        bars.advance(bar, 10)
        bars.finish(bar)
    assert "retry-orders" in screen.getvalue()
    with progress.QueueProgress(enabled=False) as quiet:
        quiet.advance(quiet.add("retry-orders", 20), 10)
    assert capsys.readouterr() == ("", "")
    assert progress.wanted("json") is False


def test_a_queue_that_comes_round_again_ends_the_read_without_duplicates(
    world: World, make_settings: SettingsFactory
) -> None:
    """Leases that run out bring messages back: the read stops there, each message once."""
    world.create_queue("retry-a")
    for n in range(15):
        world.send("retry-a", f"m{n}")
    settings = make_settings()
    queue = queue_ref_from_url(world.queue_url("retry-a"), REGION)

    async def read() -> Peek:
        async with open_clients(settings.aws) as clients:
            # A zero lease: every message is visible again at once, as if its lease ran out.
            reading = peek(clients.sqs, queue, max_messages=100, wait_s=0, lease_s=0)
            async with reading as seen:
                return seen

    seen = anyio.run(read)

    ids = [letter.message_id for letter in seen.letters]
    assert 0 < len(ids) < 100
    assert len(set(ids)) == len(ids)
    assert seen.truncated is False
    assert seen.handles.keys() == set(ids)


def test_plan_reads_the_sqlite_ledger_but_never_creates_it(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No ledger file yet: plan judges with an empty ledger and does not create the file.
    Once `once` has counted an attempt there, plan reads the count."""
    ids = mixed_dlq(world)
    ledger_path = tmp_path / "ledger.sqlite3"
    config = tmp_path / "sqlite.toml"
    config.write_text(
        CONFIG.replace('backend = "memory"', f'backend = "sqlite"\npath = "{ledger_path}"')
    )

    code, document = plan_json(capsys, "--config", str(config))
    assert code == 0
    assert by_id(document)[ids["good"]]["attempt"] == 2
    assert not ledger_path.exists()

    assert main(["once", "--config", str(config)]) == 0
    capsys.readouterr()
    function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:charge"
    # The same work failed again, and its message says nothing of the retry just made.
    again = world.send("retry-mixed", envelope("lambda", function_arn, {"n": 1}, attempt=1))
    code, document = plan_json(capsys, "--config", str(config))
    assert code == 0
    assert by_id(document)[again]["attempt"] == 3


def test_a_message_unresolvable_only_while_the_feed_map_is_incomplete_is_held(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What feeds the DLQ could not be learned (a 500): plan says hold, as once leaves it."""
    world.create_queue(PARKING)
    world.create_queue("retry-native")
    message_id = world.send("retry-native", "plain text a source queue redrove here")
    world.faults.add(Fault("sqs", "ListDeadLetterSourceQueues", code="InternalError", status=500))

    code, document = plan_json(capsys, "--config", config_file(tmp_path))

    planned = by_id(document)[message_id]
    assert code == 0
    assert (planned["action"], planned["reason"]) == ("hold", "transient-error")
    assert "could not all be learned" in planned["detail"]
    assert depth(world, "retry-native") == (1, 0)


def test_plan_defers_a_target_whose_breaker_the_cluster_holds_open_and_writes_nothing(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """DynamoDB ledger: a replica has the charge breaker open in the cluster item. The plan
    defers charge's messages (breaker-open, the rest of the cool-down), resubmits the other
    target's, reports the cluster, and neither joins nor writes to the table."""
    from retryd.admission.breaker import Breakers, BreakerState  # noqa: PLC0415
    from retryd.admission.ratelimit import RateLimits  # noqa: PLC0415
    from retryd.cluster.dynamodb import DynamoDbCluster  # noqa: PLC0415
    from retryd.ledger import create_table  # noqa: PLC0415
    from retryd.settings import load_settings  # noqa: PLC0415

    world.create_queue(PARKING)
    world.create_queue("retry-mixed")
    charge = Target.from_arn(world.create_function("charge"))
    refund = Target.from_arn(world.create_function("refund"))
    to_charge = world.send("retry-mixed", envelope("lambda", charge.arn, {"n": 1}))
    to_refund = world.send("retry-mixed", envelope("lambda", refund.arn, {"n": 2}))
    table = "retryd-ledger-plan"
    config_path = config_file(tmp_path)
    Path(config_path).write_text(
        CONFIG.replace('backend = "memory"', f'backend = "dynamodb"\ntable = "{table}"')
    )
    settings = load_settings(Path(config_path))
    dynamodb = world.client("dynamodb")

    async def a_replica_opens_charge() -> None:
        await create_table(settings)
        async with open_clients(settings.aws) as clients:
            breakers = Breakers(settings.breaker, anyio.current_time)
            replica = DynamoDbCluster(
                clients.dynamodb,
                table,
                breakers=breakers,
                rates=RateLimits(settings.rate_limit, anyio.current_time),
                cooldown_s=settings.breaker.cooldown_s,
                member_ttl_s=600,
                me="replica-a",
            )
            await replica.sync()
            breaker = breakers.for_target(charge)
            while breaker.state is BreakerState.CLOSED:
                breaker.record(success=False)
            await replica.flush()

    anyio.run(a_replica_opens_charge)
    capsys.readouterr()
    before = dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]

    code, document = plan_json(capsys, "--config", config_path)

    assert code == 0
    messages = by_id(document)
    assert messages[to_refund]["action"] == "resubmit"
    held = messages[to_charge]
    assert (held["action"], held["reason"]) == ("defer", "breaker-open")
    assert 0 < held["delay_s"] <= settings.breaker.cooldown_s
    assert document["cluster"] == {
        "live_replicas": 1,
        "breakers_open": [{"target": charge.arn, "canaries_held_by": None}],
    }
    # Read only: no heartbeat of its own, no claim, no ledger record.
    assert dynamodb.scan(TableName=table, ConsistentRead=True)["Items"] == before

    # The item cannot be read (access denied): the plan goes on, judged as before, and says so.
    world.faults.add(
        Fault("dynamodb", "BatchGetItem", code="AccessDeniedException", contains="retryd-cluster")
    )
    code, document = plan_json(capsys, "--config", config_path)
    world.faults.clear()
    assert code == 0
    assert document["cluster"] is None
    assert by_id(document)[to_charge]["action"] == "resubmit"

    assert main(["plan", "--config", config_path]) == 0
    text, err = capsys.readouterr()
    # Copied from the cluster, not opened by the plan: no `breaker` transition is logged.
    assert '"event": "breaker"' not in err
    assert "cluster: 1 live replica(s); 1 breaker(s) held open by the cluster" in text


def test_plan_names_a_failed_execution_and_a_stream_batch_by_their_shapes(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed execution's status change plans as a redrive on its state machine, a stream
    batch as a replay to its function: each named by its resolver, nothing read or sent."""
    world.create_queue(PARKING)
    world.create_queue("retry-mixed")
    function_arn = world.create_function("charge")
    machine = world.create_state_machine("orders")
    event = json.loads(fixture("stepfunctions_execution_failed")["Body"])
    event["detail"]["executionArn"] = machine.replace(":stateMachine:", ":execution:") + ":run-1"
    event["detail"]["stateMachineArn"] = machine
    # Failed now, not in the docs' 2019 (which max_age_s would park as too old).
    event["detail"]["stopDate"] = int(time.time() * 1000)
    pointer = json.loads(fixture("lambda_stream_kinesis")["Body"])
    pointer["requestContext"]["functionArn"] = function_arn
    pointer["timestamp"] = datetime.now(UTC).isoformat()
    pointer["KinesisBatchInfo"]["streamArn"] = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/s"
    execution = world.send("retry-mixed", event)
    batch = world.send("retry-mixed", pointer)

    code, document = plan_json(capsys, "--config", config_file(tmp_path))

    assert code == 0
    messages = by_id(document)
    assert (messages[execution]["action"], messages[execution]["resolver"]) == (
        "resubmit",
        "stepfunctions-execution",
    )
    assert (messages[batch]["action"], messages[batch]["resolver"]) == (
        "resubmit",
        "lambda-stream-batch",
    )
    assert world.executions(machine) == []
