"""`plan`, `once` and `redrive --execute` decide the same world the same way (one engine)."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from retryd.admission.breaker import Breakers, BreakerState
from retryd.admission.ratelimit import RateLimits
from retryd.admission.verdicts import DeferReason
from retryd.aws import open_clients
from retryd.cluster.dynamodb import DynamoDbCluster
from retryd.commands.cli import main
from retryd.commands.plan import ACTION_OF
from retryd.drain.redrive_spec import PLAN_ACTION
from retryd.ledger import create_table, open_ledger
from retryd.ledger.base import Claim, ParkCopy
from retryd.models import FailReason, Outcome, ParkReason, Target
from retryd.settings import load_settings
from retryd.settle import outcome
from tests.e2e.helpers import string
from tests.e2e.test_failed_executions import failed_execution, status_change
from tests.e2e.test_stream_batches import kinesis_stream, pointer
from tests.faults import Fault
from tests.native_helpers import fixture
from tests.operator_helpers import CONFIG, PARKING
from tests.world import ACCOUNT, REGION, World, envelope

# Each world is built on the moto server and read by two or three commands.
pytestmark = [pytest.mark.usefixtures("keep_logging_config"), pytest.mark.slow]

DLQ = "retry-orders"
FOREIGN = f"arn:aws:sqs:{REGION}:999999999999:foreign"
# The plan's words for the outcomes, as `plan --output json` prints them.
PLAN_WORDS = {"resubmit": "resubmitted", "park": "parked", "defer": "deferred", "hold": "failed"}


def config(tmp_path: Path) -> str:
    """The operator tests' config with a SQLite ledger, shared by the commands of one test."""
    path = tmp_path / "retryd.toml"
    ledger = f'backend = "sqlite"\npath = "{tmp_path / "ledger.sqlite3"}"'
    path.write_text(CONFIG.replace('backend = "memory"', ledger))
    return str(path)


def documents(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, Any]]]:
    """Run one command with --output json; its exit code and every JSON document it printed."""
    code = main([*args, "--output", "json"])
    out = capsys.readouterr().out
    found, index, decoder = [], 0, json.JSONDecoder()
    while index < len(out):
        if out[index].isspace():
            index += 1
            continue
        document, index = decoder.raw_decode(out, index)
        found.append(document)
    return code, found


def build(world: World, cfg: str) -> None:
    """Two messages to resubmit, one outside the allowlist, one unresolvable, one paused target."""
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    world.create_queue("dest")
    world.create_queue("held-dest")
    dest = world.queue_arn("dest")
    world.send(DLQ, envelope("sqs", dest, {"n": 1}))
    world.send(DLQ, envelope("sqs", dest, {"n": 2}))
    world.send(DLQ, envelope("sqs", FOREIGN, {"n": 3}))
    world.send(DLQ, "not json at all")
    world.send(DLQ, envelope("sqs", world.queue_arn("held-dest"), {"n": 5}))
    assert (
        main(["pause", world.queue_arn("held-dest"), "--reason", "migration", "--config", cfg]) == 0
    )


def planned(capsys: pytest.CaptureFixture[str], cfg: str) -> Counter[tuple[str, str]]:
    """`plan`'s predictions, by (outcome, reason)."""
    code, [plan] = documents(capsys, "plan", "--config", cfg)
    assert code == 0, plan
    return Counter(
        (PLAN_WORDS[m["action"]], m["reason"] or "")
        for queue in plan["queues"]
        for m in queue["messages"]
    )


def test_plan_predicts_what_once_does(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every (outcome, reason) `plan` predicts is what `once` then decides, message for message."""
    cfg = config(tmp_path)
    build(world, cfg)
    capsys.readouterr()
    predicted = planned(capsys, cfg)
    code, [report] = documents(capsys, "once", "--config", cfg)
    assert code == 0, report
    done = Counter({o: n for o, n in report["outcomes"].items() if n})
    by_outcome: Counter[str] = Counter()
    for (outcome_value, _), count in predicted.items():
        by_outcome[outcome_value] += count
    assert by_outcome == done
    reasons = Counter({(r["outcome"], r["reason"]): r["count"] for r in report["reasons"]})
    assert reasons == Counter({key: n for key, n in predicted.items() if key[1]})
    assert predicted == Counter(
        {
            ("resubmitted", ""): 2,
            ("parked", "target-not-allowed"): 1,
            ("parked", "unresolvable"): 1,
            ("deferred", "paused"): 1,
        }
    )


def test_redrive_plan_is_what_the_job_reports(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On the same world, `redrive`'s plan equals the job's counts; guard parks are refused."""
    cfg = config(tmp_path)
    build(world, cfg)
    capsys.readouterr()
    predicted = planned(capsys, cfg)
    code, docs = documents(
        capsys, "redrive", "--config", cfg, "--from", DLQ, "--execute", "--ramp", "none"
    )
    plan, job = docs[0]["plan"], docs[1]["job"]
    # The job ended with refused messages: it did less than asked, so it exits 1 (issue 22).
    assert (code, job["state"]) == (1, "done"), docs
    assert plan["groups"] == job["groups"]
    executed = Counter({(g["action"], g["reason"] or ""): g["count"] for g in job["groups"]})
    # The documented override: what the daemon would park on a guard's word, a redrive refuses.
    operator: Counter[tuple[str, str]] = Counter()
    for (outcome_value, reason), count in predicted.items():
        if outcome_value == Outcome.PARKED.value:
            operator[("refuse", reason)] += count
        else:
            operator[(PLAN_ACTION[Outcome(outcome_value)], reason)] += count
    assert executed == operator
    assert len(world.drain("dest")) == 2
    # Refused and deferred messages were handed back where they were.
    assert world.depth(DLQ) == 3


def test_every_plan_word_names_an_outcome() -> None:
    """The plan's actions and the redrive's words are views of the one Outcome vocabulary."""
    assert set(ACTION_OF) == set(Outcome) == set(PLAN_ACTION)
    assert outcome.ALREADY_RESUBMITTED == "already-resubmitted"


def test_a_target_refusal_is_parked_alike_by_the_cycle_and_a_redrive(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A body too large for its target is parked payload-too-large by `once` and by a redrive.

    Before one engine, a redrive parked every permanent refusal as target-rejected.
    """
    cfg = config(tmp_path)
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    world.create_queue("small", MaximumMessageSize="1024")
    small = world.queue_arn("small")
    world.send(DLQ, envelope("sqs", small, {"blob": "x" * 2000}))
    code, [report] = documents(capsys, "once", "--config", cfg)
    assert code == 0, report
    assert report["reasons"] == [{"outcome": "parked", "reason": "payload-too-large", "count": 1}]
    world.send(DLQ, envelope("sqs", small, {"blob": "y" * 2000}))
    code, docs = documents(
        capsys, "redrive", "--config", cfg, "--from", DLQ, "--execute", "--ramp", "none"
    )
    assert code == 0, docs
    groups = {(g["action"], g["reason"]): g["count"] for g in docs[1]["job"]["groups"]}
    assert groups == {("park", "payload-too-large"): 1}
    assert world.depth(DLQ) == 0
    assert world.depth(PARKING) == 2


# -- Every outcome and every reason, on each path ------------------------------------------------
#
# One message per case, in a world built so that each case ends in its own (outcome, reason).
# For each case the table says what plan predicts, what `once` decides and what a
# `redrive --execute` decides; where they differ, DIFFERENCES says why, by design.

Said = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Case:
    """One message of the world, and what each path decides for it: (outcome, reason)."""

    plan: Said
    once: Said
    redrive: Said

    @property
    def paths(self) -> tuple[Said, Said, Said]:
        return (self.plan, self.once, self.redrive)


RESUBMITTED: Said = (Outcome.RESUBMITTED.value, "")
# A path that is not run for a case (DIFFERENCES says why).
NOT_RUN: Said = ("", "")


def park(reason: str) -> Said:
    return (Outcome.PARKED.value, reason)


def defer(reason: str) -> Said:
    return (Outcome.DEFERRED.value, reason)


def fail(reason: str) -> Said:
    return (Outcome.FAILED.value, reason)


def refuse(reason: str) -> Said:
    return (Outcome.REFUSED.value, reason)


TABLE = "retryd-ledger-agree"
SHORT = "retry-short-lived"
METERED = "retry-metered"
NATIVE = "retry-native"
SHARED = "retry-shared"
# One DLQ per hook (a hook applies to a whole DLQ) and per ledger fault (a ledger read
# covers a whole batch).
SCHEMA_DLQ, RAISES_DLQ, PARKS_DLQ = (
    "retry-schema",
    "retry-transform-raises",
    "retry-transform-parks",
)
LEDGER_DOWN, LEDGER_GONE = "retry-ledger-down", "retry-ledger-gone"
# A world's message keys that the ledger (or another replica) knows something about.
DONE_KEY, PARKED_KEY, BUSY_KEY = "k-done", "k-parked", "k-busy"
DOWN_KEY, GONE_KEY = "k-ledger-down", "k-ledger-gone"


def world_config(tmp_path: Path, world: World) -> str:
    """CONFIG on a DynamoDB ledger (whose item also carries the cluster's breakers), with a
    slow-backoff target, a rate-limited one, and a route with a hook for each hook DLQ."""
    schema = tmp_path / "order.json"
    schema.write_text(json.dumps({"type": "object", "required": ["customerId"]}))
    dest = world.queue_arn("dest")
    hooks = {
        SCHEMA_DLQ: f'schema_path = "{schema}"',
        RAISES_DLQ: 'transform = "tests.hook_transforms:raises"',
        PARKS_DLQ: 'transform = "tests.hook_transforms:parks"',
    }
    routed = "".join(
        f'\n[[routes]]\nqueue = "{dlq}"\ntarget = "{dest}"\n\n[[hooks]]\nqueue = "{dlq}"\n{hook}\n'
        for dlq, hook in hooks.items()
    )
    rules = f"""
[[backoff.targets]]
pattern = "{world.queue_arn("later")}"
base_s = 3600
max_s = 3600

[[rate_limit.targets]]
pattern = "{world.queue_arn("metered")}"
per_s = 0.001
burst = 1
"""
    path = tmp_path / "retryd.toml"
    ledger = f'backend = "dynamodb"\ntable = "{TABLE}"'
    path.write_text(CONFIG.replace('backend = "memory"', ledger) + rules + routed)
    return str(path)


def seed(cfg: str, world: World, sent: dict[str, str]) -> None:
    """What the ledger and the cluster know already: a committed copy, a parked copy, a live
    claim of another replica, and a breaker another replica opened."""
    settings = load_settings(Path(cfg))

    async def remember() -> None:
        await create_table(settings)
        async with open_clients(settings.aws) as clients:
            async with open_ledger(settings.ledger, clients, owner="replica-a") as ledger:
                done = Claim(DONE_KEY, sent["already-resubmitted"], 1, None)
                await ledger.begin([done])
                await ledger.commit([done], time.time())
                parked = Claim(PARKED_KEY, sent["already-parked"], 0, None)
                await ledger.begin_park([parked])
                await ledger.commit_park([ParkCopy(parked, "parking-copy-1")])
                await ledger.begin([Claim(BUSY_KEY, "another-message", 1, None)])
            breakers = Breakers(settings.breaker, anyio.current_time)
            replica = DynamoDbCluster(
                clients.dynamodb,
                TABLE,
                breakers=breakers,
                rates=RateLimits(settings.rate_limit, anyio.current_time),
                cooldown_s=settings.breaker.cooldown_s,
                member_ttl_s=600,
                me="replica-a",
            )
            await replica.sync()
            breaker = breakers.for_target(Target.from_arn(world.queue_arn("broken")))
            while breaker.state is BreakerState.CLOSED:
                breaker.record(success=False)
            await replica.flush()

    anyio.run(remember)


def with_redrive(world: World, source: str, dlq: str) -> None:
    """A source queue whose redrive policy moves a message to `dlq` after one receive."""
    policy = json.dumps({"deadLetterTargetArn": world.queue_arn(dlq), "maxReceiveCount": "1"})
    world.create_queue(source, RedrivePolicy=policy)


def redriven(world: World, source: str, dlq: str, body: str) -> str:
    """Send `body` to `source` and receive it until SQS moves it to `dlq`: its message id."""
    message_id = world.send(source, body)
    sqs = world.client("sqs")
    for _ in range(5):
        sqs.receive_message(
            QueueUrl=world.queue_url(source), VisibilityTimeout=0, WaitTimeSeconds=0
        )
        if world.depth(dlq) == 1:
            return message_id
    raise AssertionError(f"the redrive policy never moved the message to {dlq}")


def kafka_pointer() -> dict[str, Any]:
    """An on-failure record of a Kafka event source mapping: a pointer retryd cannot read."""
    record: dict[str, Any] = json.loads(fixture("lambda_stream_kinesis")["Body"])
    del record["KinesisBatchInfo"]
    record["KafkaBatchInfo"] = {
        "batchSize": 1,
        "bootstrapServers": "b-1.orders.kafka.us-east-1.amazonaws.com:9098",
        "partition": 0,
        "topic": "orders",
        "startOffset": 7,
        "endOffset": 7,
        "streamArn": f"arn:aws:kafka:{REGION}:{ACCOUNT}:cluster/orders/abc-1",
    }
    return record


def gone_batch(world: World) -> dict[str, Any]:
    """A Kinesis batch pointer, on an allowlisted stream, to a range the stream no longer holds."""
    stream, shard, sequences = kinesis_stream(world, "orders", 2)
    consumer = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:consumer"
    return pointer(
        "KinesisBatchInfo",
        consumer,
        stream=stream,
        shard=shard,
        first="0",
        last=sequences[1],
        size=2,
    )


def unredrivable(world: World) -> dict[str, Any]:
    """The failed-execution event of an execution Step Functions will not redrive."""
    machine = world.create_state_machine("orders")
    execution = failed_execution(world, machine, "too-long", not_redrivable="history too long")
    return status_change(execution, machine)


def native(world: World) -> dict[str, str]:
    """Dead letters as AWS writes them, each ending in a reason of its own resolver or target."""
    scheduled = fixture("scheduler_dlq")
    attributes = {
        name: {"DataType": value["DataType"], "StringValue": value["StringValue"]}
        for name, value in scheduled["MessageAttributes"].items()
    }
    universal = {**attributes, "ERROR_CODE": string("ThrottlingException")}
    truncated = {
        **universal,
        "IS_PAYLOAD_TRUNCATED": string("true"),
        "TARGET_ARN": string(world.queue_arn("dest")),
    }
    rule_dlq = {
        "RULE_ARN": string(f"arn:aws:events:{REGION}:{ACCOUNT}:rule/orders-rule"),
        "TARGET_ARN": string(world.queue_arn("dest")),
        "ERROR_CODE": string("NO_PERMISSIONS"),
        "ERROR_MESSAGE": string("denied"),
        "EXHAUSTED_RETRY_CONDITION": string("MaximumRetryAttempts"),
        "RETRY_ATTEMPTS": string("2"),
    }
    event = {
        "version": "0",
        "id": "e-1",
        "detail-type": "OrderPlaced",
        "source": "shop",
        "account": ACCOUNT,
        "time": "2026-12-07T00:00:00Z",
        "region": REGION,
        "resources": [],
        "detail": {"orderId": "42"},
    }
    with_redrive(world, "left", SHARED)
    with_redrive(world, "right", SHARED)
    return {
        "unsupported-target": world.send(NATIVE, scheduled["Body"], attributes=universal),
        "payload-truncated": world.send(NATIVE, '{"report": "da', attributes=truncated),
        "source-error-permanent": world.send(NATIVE, event, attributes=rule_dlq),
        "not-replayable": world.send(NATIVE, kafka_pointer()),
        "source-expired": world.send(NATIVE, gone_batch(world)),
        "not-redrivable": world.send(NATIVE, unredrivable(world)),
        "ambiguous-target": redriven(world, "left", SHARED, "from the left"),
    }


def build_every_case(world: World, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """The world of CASES, one message each: its config file, and each case's message id."""
    queues = (PARKING, DLQ, "dest", "held-dest", "later", "metered", "broken", "flaky")
    dlqs = (METERED, NATIVE, SHARED, SCHEMA_DLQ, RAISES_DLQ, PARKS_DLQ, LEDGER_DOWN, LEDGER_GONE)
    for name in (*queues, *dlqs):
        world.create_queue(name)
    world.create_queue(SHORT, MessageRetentionPeriod="60")
    world.create_queue("small", MaximumMessageSize="1024")
    cfg = world_config(tmp_path, world)
    arn = world.queue_arn
    enveloped: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {
        "resubmitted": (DLQ, arn("dest"), {"n": 1}, {}),
        "target-not-allowed": (DLQ, FOREIGN, {"n": 2}, {}),
        "paused": (DLQ, arn("held-dest"), {"n": 3}, {}),
        "attempts-exhausted": (DLQ, arn("dest"), {"n": 4}, {"attempt": 5, "maxAttempts": 5}),
        "too-old": (DLQ, arn("dest"), {"n": 5}, {"firstFailedAt": "2020-01-01T00:00:00Z"}),
        "backoff": (DLQ, arn("later"), {"n": 6}, {}),
        "breaker-open": (DLQ, arn("broken"), {"n": 7}, {}),
        "transient-error": (DLQ, arn("flaky"), {"n": 8}, {}),
        "payload-too-large": (DLQ, arn("small"), {"blob": "x" * 2000}, {}),
        "target-rejected": (DLQ, arn("missing"), {"n": 16}, {}),
        "already-resubmitted": (DLQ, arn("dest"), {"n": 9}, {"idempotencyKey": DONE_KEY}),
        "already-parked": (DLQ, arn("dest"), {"n": 10}, {"idempotencyKey": PARKED_KEY}),
        "claimed-elsewhere": (DLQ, arn("dest"), {"n": 11}, {"idempotencyKey": BUSY_KEY}),
        "retention-expiring": (SHORT, arn("dest"), {"n": 12}, {}),
        "rate-limited": (METERED, arn("metered"), {"n": 13}, {}),
        "ledger-unavailable": (LEDGER_DOWN, arn("dest"), {"n": 14}, {"idempotencyKey": DOWN_KEY}),
        "ledger-misconfigured": (LEDGER_GONE, arn("dest"), {"n": 15}, {"idempotencyKey": GONE_KEY}),
    }
    sent = {
        name: world.send(dlq, envelope("sqs", target, payload, **fields))
        for name, (dlq, target, payload, fields) in enveloped.items()
    }
    sent["unresolvable"] = world.send(DLQ, "not json at all")
    sent["invalid-envelope"] = world.send(
        DLQ, {"envelope": "retryd/v1", "target": {"type": "sqs"}, "payload": 1}
    )
    sent["invalid-payload"] = world.send(SCHEMA_DLQ, {"customer_id": "c2"})
    sent["transform-failed"] = world.send(RAISES_DLQ, {"customerId": "c3"})
    sent["transform-parked"] = world.send(PARKS_DLQ, {"customerId": "c4"})
    sent |= native(world)
    seed(cfg, world, sent)
    assert main(["pause", arn("held-dest"), "--reason", "migration", "--config", cfg]) == 0
    # Each fault touches its own case only: flaky's sends, and the ledger reads of one key.
    for fault in (
        Fault("sqs", "SendMessageBatch", code="InternalError", status=500, contains="/flaky"),
        Fault(
            "dynamodb", "BatchGetItem", code="InternalServerError", status=500, contains=DOWN_KEY
        ),
        Fault("dynamodb", "BatchGetItem", code="ResourceNotFoundException", contains=GONE_KEY),
    ):
        world.faults.add(fault)
    return cfg, sent


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, Any]]]:
    """Run one command with --output json: its exit code and every JSON document or log line
    it printed on either stream."""
    code = main([*args, "--output", "json"])
    captured = capsys.readouterr()
    found: list[dict[str, Any]] = []
    decoder = json.JSONDecoder()
    for out in (captured.out, captured.err):
        index = 0
        while index < len(out):
            if out[index].isspace():
                index += 1
                continue
            try:
                document, index = decoder.raw_decode(out, index)
            except json.JSONDecodeError:
                index = out.find("\n", index) + 1 or len(out)
                continue
            found.append(document)
    return code, found


def each_message(found: list[dict[str, Any]], events: frozenset[str]) -> dict[str, Said]:
    """(outcome, reason) of each message id, from a run's decision log lines (the last wins)."""
    return {
        line["message_id"]: (line["outcome"], line["reason"] or "")
        for line in found
        if line.get("event") in events and "message_id" in line
    }


REDRIVE_SOURCES = tuple(
    arg
    for dlq in (
        DLQ,
        SHORT,
        NATIVE,
        SHARED,
        SCHEMA_DLQ,
        RAISES_DLQ,
        PARKS_DLQ,
        LEDGER_DOWN,
        LEDGER_GONE,
    )
    for arg in ("--from", dlq)
)
CYCLE_EVENTS = frozenset(outcome_value.value for outcome_value in Outcome)
REDRIVE_EVENTS = frozenset(f"redrive-{outcome_value.value}" for outcome_value in Outcome)


# What each path decides for each message of build_every_case's world.
CASES: dict[str, Case] = {
    "resubmitted": Case(RESUBMITTED, RESUBMITTED, RESUBMITTED),
    "already-resubmitted": Case(*[(Outcome.RESUBMITTED.value, outcome.ALREADY_RESUBMITTED)] * 3),
    "already-parked": Case(*[park(outcome.ALREADY_PARKED)] * 3),
    "target-not-allowed": Case(
        park("target-not-allowed"), park("target-not-allowed"), refuse("target-not-allowed")
    ),
    "unresolvable": Case(park("unresolvable"), park("unresolvable"), refuse("unresolvable")),
    "invalid-envelope": Case(
        park("invalid-envelope"), park("invalid-envelope"), refuse("invalid-envelope")
    ),
    "unsupported-target": Case(
        park("unsupported-target"), park("unsupported-target"), refuse("unsupported-target")
    ),
    "payload-truncated": Case(
        park("payload-truncated"), park("payload-truncated"), refuse("payload-truncated")
    ),
    "source-error-permanent": Case(
        park("source-error-permanent"),
        park("source-error-permanent"),
        refuse("source-error-permanent"),
    ),
    "not-replayable": Case(
        park("not-replayable"), park("not-replayable"), refuse("not-replayable")
    ),
    "ambiguous-target": Case(
        park("ambiguous-target"), park("ambiguous-target"), refuse("ambiguous-target")
    ),
    "invalid-payload": Case(
        park("invalid-payload"), park("invalid-payload"), refuse("invalid-payload")
    ),
    "transform-failed": Case(
        park("transform-failed"), park("transform-failed"), refuse("transform-failed")
    ),
    "transform-parked": Case(
        park("transform-parked"), park("transform-parked"), refuse("transform-parked")
    ),
    "attempts-exhausted": Case(park("attempts-exhausted"), park("attempts-exhausted"), RESUBMITTED),
    "too-old": Case(park("too-old"), park("too-old"), RESUBMITTED),
    "retention-expiring": Case(park("retention-expiring"), park("retention-expiring"), RESUBMITTED),
    "paused": Case(*[defer("paused")] * 3),
    "backoff": Case(defer("backoff"), defer("backoff"), RESUBMITTED),
    "breaker-open": Case(*[defer("breaker-open")] * 3),
    "claimed-elsewhere": Case(*[defer("claimed-elsewhere")] * 3),
    "rate-limited": Case(RESUBMITTED, defer("rate-limited"), NOT_RUN),
    "transient-error": Case(RESUBMITTED, fail("transient-error"), fail("transient-error")),
    "payload-too-large": Case(RESUBMITTED, park("payload-too-large"), park("payload-too-large")),
    "target-rejected": Case(RESUBMITTED, park("target-rejected"), park("target-rejected")),
    "source-expired": Case(RESUBMITTED, park("source-expired"), park("source-expired")),
    "not-redrivable": Case(RESUBMITTED, park("not-redrivable"), park("not-redrivable")),
    "ledger-unavailable": Case(*[fail("ledger-unavailable")] * 3),
    "ledger-misconfigured": Case(*[fail("ledger-misconfigured")] * 3),
}

# Where the paths differ by design, and why; every other case is decided alike by all three.
DIFFERENCES: dict[str, str] = {
    "target-not-allowed": "a redrive never parks on a guard's word: it refuses (hands back)",
    "unresolvable": "a redrive refuses what a guard would park",
    "invalid-envelope": "a redrive refuses what a guard would park",
    "unsupported-target": "a redrive refuses what a guard would park",
    "payload-truncated": "a redrive refuses what a guard would park",
    "source-error-permanent": "a redrive refuses what a guard would park",
    "not-replayable": "a redrive refuses what a guard would park",
    "ambiguous-target": "a redrive refuses what a guard would park",
    "invalid-payload": "a redrive refuses what a hook would park",
    "transform-failed": "a redrive refuses what a hook would park",
    "transform-parked": "a redrive refuses what a hook would park",
    "attempts-exhausted": "a redrive is one attempt beyond the budget (operator_now)",
    "too-old": "a redrive has no age limit (operator_now)",
    "retention-expiring": "a redrive has no retention limit (operator_now)",
    "backoff": "a redrive does not wait for backoff (operator_now)",
    "rate-limited": "plan takes no token; a redrive waits for tokens, a rate-limited message "
    "is no result of a step (operator_pipeline.Step.account) and a later step takes it, so "
    "its queue is left out of the redrive here",
    "transient-error": "plan sends nothing, so it cannot see the target's answer",
    "payload-too-large": "plan sends nothing: the target's size limit is met at the send",
    "target-rejected": "plan sends nothing, so it cannot see the target's refusal",
    "source-expired": "plan sends nothing and reads no source beyond the DLQ: the stream's "
    "range is read only at the send",
    "not-redrivable": "plan sends nothing and reads no source beyond the DLQ: Step Functions "
    "says the execution cannot be redriven only at the redrive",
}


# Reasons no world here reaches, and why: each is exercised on its path by the tests named.
UNREACHED: dict[str, str] = {
    FailReason.INTERNAL_ERROR: "a bug in retryd: no world reaches it without one "
    "(tests/drain/test_claims_released.py)",
}


def vocabulary() -> set[str]:
    """Every outcome and every reason retryd can decide, read from the code."""
    reasons = {
        *ParkReason,
        *FailReason,
        *DeferReason,
        outcome.ALREADY_RESUBMITTED,
        outcome.ALREADY_PARKED,
    }
    return {*(o.value for o in Outcome), *(str(reason) for reason in reasons)}


def all_cases() -> dict[str, Case]:
    return {**CASES, **PARKING_DOWN_CASES}


def test_the_worlds_cover_every_outcome_and_reason() -> None:
    """Each outcome and reason in the code is decided in a world here, or UNREACHED says why."""
    said = {part for case in all_cases().values() for path in case.paths for part in path if part}
    assert vocabulary() - said - set(UNREACHED) == set()
    assert set(UNREACHED) <= vocabulary()
    assert set(UNREACHED).isdisjoint(said)


def test_the_paths_differ_only_where_documented() -> None:
    """A case's three paths decide alike unless DIFFERENCES names it, and then they differ."""
    differences = {**DIFFERENCES, **PARKING_DOWN_DIFFERENCES}
    for name, case in all_cases().items():
        alike = case.plan == case.once == case.redrive
        assert alike == (name not in differences), name
    assert set(differences) <= set(all_cases())


def by_name(sent: dict[str, str], decided: dict[str, Said]) -> dict[str, Said]:
    """Each case's (outcome, reason), from what a path decided by message id."""
    return {name: decided[message_id] for name, message_id in sent.items() if message_id in decided}


def plan_by_id(document: dict[str, Any]) -> dict[str, Said]:
    """(outcome, reason) of each message a plan document predicts."""
    return {
        m["message_id"]: (PLAN_WORDS[m["action"]], m["reason"] or "")
        for queue in document["queues"]
        for m in queue["messages"]
    }


def test_plan_and_once_decide_every_case_as_the_table_says(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """For every message of the world, plan's prediction and once's decision are CASES'."""
    cfg, sent = build_every_case(world, tmp_path)
    capsys.readouterr()
    code, [plan] = documents(capsys, "plan", "--config", cfg)
    assert code == 0, plan
    assert by_name(sent, plan_by_id(plan)) == {n: c.plan for n, c in CASES.items()}
    code, found = run(capsys, "once", "--config", cfg)
    # A misconfigured ledger is a reason another cycle will not cure: exit 2.
    assert code == 2
    assert by_name(sent, each_message(found, CYCLE_EVENTS)) == {n: c.once for n, c in CASES.items()}


def test_a_redrive_decides_every_case_as_the_table_says(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """For every message of the world (but the rate-limited one), a redrive decides CASES'."""
    cfg, sent = build_every_case(world, tmp_path)
    capsys.readouterr()
    code, found = run(
        capsys, "redrive", "--config", cfg, *REDRIVE_SOURCES, "--execute", "--ramp", "none"
    )
    assert code == 1
    assert by_name(sent, each_message(found, REDRIVE_EVENTS)) == {
        n: c.redrive for n, c in CASES.items() if c.redrive != NOT_RUN
    }


# -- The parking queue down, a target that hangs past the lease cap -----------------------------

HUNG_DLQ = "retry-hung"
PARKING_DOWN_CASES: dict[str, Case] = {
    "parking-failed (a guard's park)": Case(
        park("target-not-allowed"), fail("parking-failed"), refuse("target-not-allowed")
    ),
    "parking-failed (a target's refusal)": Case(
        RESUBMITTED, fail("parking-failed"), fail("parking-failed")
    ),
    "lease-expired": Case(RESUBMITTED, fail("lease-expired"), fail("lease-expired")),
}
PARKING_DOWN_DIFFERENCES: dict[str, str] = {
    "parking-failed (a guard's park)": "plan writes no copy, so it cannot see the parking "
    "queue's answer; a redrive refuses what a guard would park",
    "parking-failed (a target's refusal)": "plan sends nothing, so it sees neither the "
    "target's refusal nor the parking queue's answer",
    "lease-expired": "plan sends nothing, so nothing of it is in flight when a lease ends",
}


def build_parking_down(world: World, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A guard's park and a target's refusal, with every write to the parking queue failing;
    in a DLQ of its own, a message whose target answers only after the lease cap."""
    cfg = config(tmp_path)
    # The shortest lease and cap there are: the hung call is cut off at 5 s.
    text = Path(cfg).read_text()
    Path(cfg).write_text(
        text.replace(
            "receive_wait_s = 0", "receive_wait_s = 0\nvisibility_timeout_s = 5\nmax_lease_s = 5"
        )
    )
    for name in (PARKING, DLQ, HUNG_DLQ, "hung"):
        world.create_queue(name)
    world.create_queue("small", MaximumMessageSize="1024")
    sent = {
        "lease-expired": world.send(HUNG_DLQ, envelope("sqs", world.queue_arn("hung"), {"n": 3})),
        "parking-failed (a guard's park)": world.send(DLQ, envelope("sqs", FOREIGN, {"n": 1})),
        "parking-failed (a target's refusal)": world.send(
            DLQ, envelope("sqs", world.queue_arn("small"), {"blob": "x" * 2000})
        ),
    }
    for operation in ("SendMessage", "SendMessageBatch"):
        world.faults.add(
            Fault("sqs", operation, code="InternalError", status=500, contains=PARKING)
        )
    world.faults.add(Fault("sqs", "SendMessageBatch", code=None, delay_s=8, contains="/hung"))
    return cfg, sent


def test_with_the_parking_queue_down_each_path_decides_as_the_table_says(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Parking fails: plan, once and a redrive decide PARKING_DOWN_CASES (fresh world each)."""
    cfg, sent = build_parking_down(world, tmp_path)
    capsys.readouterr()
    code, [plan] = documents(capsys, "plan", "--config", cfg)
    assert code == 0, plan
    assert by_name(sent, plan_by_id(plan)) == {n: c.plan for n, c in PARKING_DOWN_CASES.items()}
    code, found = run(capsys, "once", "--config", cfg)
    assert code == 1
    assert by_name(sent, each_message(found, CYCLE_EVENTS)) == {
        n: c.once for n, c in PARKING_DOWN_CASES.items()
    }
    # The failed are back in their DLQs only when their leases end (and the hung one's
    # claim is still live): a redrive reads the same messages in a fresh world and ledger.
    world.server.reset()
    world.faults.clear()
    again = tmp_path / "again"
    again.mkdir()
    cfg, sent = build_parking_down(world, again)
    code, found = run(
        capsys,
        "redrive",
        "--config",
        cfg,
        "--from",
        DLQ,
        "--from",
        HUNG_DLQ,
        "--execute",
        "--ramp",
        "none",
    )
    assert code == 1
    assert by_name(sent, each_message(found, REDRIVE_EVENTS)) == {
        n: c.redrive for n, c in PARKING_DOWN_CASES.items()
    }
