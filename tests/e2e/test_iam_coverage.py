"""The policy `retryd iam-policy` prints allows every AWS call retryd makes, and little else.

The sandbox's demo world (every target type, every DLQ shape) is built on the
moto server, the DynamoDB ledger table is created the way an operator does it,
and then `retryd inspect`, `plan` and `once` run against it with their own
clients observed (tests/iam_helpers.py). Every call is mapped to the IAM action
and resource it needs and judged against `policy_document` for the same
settings: a call no statement allows is an AccessDenied an operator would meet.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

import retryd.commands.audit
import retryd.commands.pause
import retryd.commands.redrive
import retryd.places
from retryd.aws import AwsClients, open_clients
from retryd.commands.audit import run_audit
from retryd.commands.pause import run_pause, run_resume
from retryd.commands.redrive import RedriveRequest, run_jobs, run_redrive
from retryd.drain.cycle import CycleReport
from retryd.iam.policy import policy_document
from retryd.ledger import create_table
from retryd.models import Outcome, TargetType
from retryd.sandbox.world import ACCOUNT, REGION, DemoWorld, build_world, sandbox_settings
from retryd.service.lifecycle import run_once
from retryd.settings import (
    AwsSettings,
    DiscoverySettings,
    LedgerSettings,
    ParkingSettings,
    Settings,
)
from tests.e2e.helpers import one_decision_each
from tests.faults import Fault
from tests.iam_helpers import (
    UNSCOPED,
    ApiCall,
    CallLog,
    IamRequest,
    UnmappedCallError,
    action_matches,
    allowing,
    granted_pairs,
    iam_requests,
    inspect_plan_once,
    lambda_function_arn,
    queue_arn_from_url,
    recording_clients,
    resource_matches,
    statements,
)
from tests.stepfunctions_front import fail_execution
from tests.world import World

LEDGER_TABLE = "retryd-ledger"
MAX_MESSAGES = 50
# Explicitly listed DLQs outside the discovery prefix: one named, one given by URL.
NAMED_DLQ = "orders-dlq"
URL_DLQ = "legacy-dlq"
TAG = {"team": "shop"}
ALIAS = "live"
# Every demo target but the function: Lambda envelopes are then parked, not invoked.
NO_LAMBDA_TARGETS = [
    f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:fulfil",
    f"arn:aws:sqs:{REGION}:{ACCOUNT}:*",
    f"arn:aws:sns:{REGION}:{ACCOUNT}:notify",
    f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/billing",
]
# The demo's targets that the explicit scenario's DLQs resubmit to, each named exactly.
EXACT_TARGETS = [
    f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:charge",
    f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:charge:*",
    f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:fulfil",
    f"arn:aws:sqs:{REGION}:{ACCOUNT}:invoices",
    f"arn:aws:sns:{REGION}:{ACCOUNT}:notify",
    f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/billing",
    # The streams whose failed batches are read back (and only these).
    f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/clicks",
    f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/carts/stream/*",
]

# Grants no scenario here exercises, each with the path that needs it and why it
# cannot be driven here (the name clash and the lost ledger race are driven by
# injected faults). An entry that starts being used, or stops being granted, fails
# the test: keep it current.
RARE_GRANTS: dict[tuple[str, str], str] = {
    ("AttemptLedger", "dynamodb:GetItem"): (
        "retryd 0.1 re-read a lost conditional write with GetItem; this one re-reads "
        "with BatchGetItem. Kept while replicas of both share one role in a rolling upgrade."
    ),
}
# The only actions AWS cannot scope to a resource (no resource type in the Service
# Authorization Reference), so the only ones a policy may grant on "*".
UNSCOPABLE_ACTIONS = frozenset(
    {
        "sqs:ListQueues",
        "lambda:ListFunctions",
        "sns:ListSubscriptions",
        "sns:GetSubscriptionAttributes",
    }
)


@dataclass(frozen=True)
class Recording:
    """One scenario: the settings it ran with, the calls retryd made, and what the cycle did."""

    settings: Settings
    calls: list[ApiCall]
    report: CycleReport
    role: str = "daemon"

    def document(self) -> dict[str, Any]:
        return policy_document(self.settings, account=ACCOUNT, region=REGION, role=self.role)

    def requests(self) -> list[tuple[ApiCall, IamRequest]]:
        return [(call, request) for call in self.calls for request in iam_requests(call, ACCOUNT)]


def ledger_settings() -> Settings:
    """The sandbox's settings with the DynamoDB ledger (the backend that makes AWS calls)."""
    return sandbox_settings().model_copy(
        update={"ledger": LedgerSettings(backend="dynamodb", table=LEDGER_TABLE)}
    )


async def _prepare(extra: Callable[[AwsClients, DemoWorld], Awaitable[None]] | None) -> DemoWorld:
    """The operator's and the sandbox's part, made with clients nobody records."""
    settings = ledger_settings()
    # `retryd ledger create-table` is run once by an operator, with their own rights.
    await create_table(settings)
    async with open_clients(settings.aws) as clients:
        demo = await build_world(clients, 1)
        if extra is not None:
            await extra(clients, demo)
    return demo


async def _run_phases(
    settings: Settings, log: CallLog, monkeypatch: pytest.MonkeyPatch, inspect: list[str]
) -> CycleReport:
    """`retryd inspect`, `plan` and `once`, each through its own entry point, observed."""

    def observed(aws: AwsSettings) -> AbstractAsyncContextManager[AwsClients]:
        return recording_clients(aws, log)

    # The entry points open their clients through this name (retryd.places, for the one
    # place of a run without [[accounts]]): the same clients, with an observer on each.
    monkeypatch.setattr(retryd.places, "open_clients", observed)
    report = await inspect_plan_once(settings, log, inspect=inspect, max_messages=MAX_MESSAGES)
    assert report.fatal is None
    phases = {call.phase for call in log.calls}
    # A phase with no calls means its entry point no longer opens clients through the
    # patched name, and what it calls went unseen.
    assert phases == {"inspect", "plan", "once"}, phases
    return report


async def _record_demo(world: World, monkeypatch: pytest.MonkeyPatch) -> Recording:
    """The sandbox's demo as it ships: queues found by prefix, parking queue by name."""
    await _prepare(None)
    settings = ledger_settings()
    log = CallLog()
    report = await _run_phases(settings, log, monkeypatch, inspect=[])
    return Recording(settings, log.calls, report)


async def _record_no_lambda(world: World, monkeypatch: pytest.MonkeyPatch) -> Recording:
    """The demo with no Lambda among the targets: the policy then grants no Lambda call."""
    await _prepare(None)
    base = ledger_settings()
    settings = base.model_copy(
        update={"guards": base.guards.model_copy(update={"allow_targets": NO_LAMBDA_TARGETS})}
    )
    log = CallLog()
    report = await _run_phases(settings, log, monkeypatch, inspect=[])
    return Recording(settings, log.calls, report)


async def _add_explicit_dlqs(clients: AwsClients, demo: DemoWorld) -> None:
    """Two DLQs outside the prefix (listed by name and by URL), and tags on some prefixed ones."""
    invoices = f"arn:aws:sqs:{REGION}:{ACCOUNT}:invoices"
    for name in (NAMED_DLQ, URL_DLQ):
        url = (await clients.sqs.create_queue(QueueName=name))["QueueUrl"]
        demo.queue_urls[name] = url
        # Distinct payloads: one idempotency key in two DLQs drained at once would race
        # on the ledger, and make the calls recorded depend on timing.
        body = {
            "envelope": "retryd/v1",
            "target": {"type": "sqs", "arn": invoices},
            "payload": name,
        }
        await clients.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))
    for name in ("retry-payments", "retry-lambda-failures"):
        await clients.sqs.tag_queue(QueueUrl=demo.queue_urls[name], Tags=TAG)
    # A destination record of an alias: Lambda names the qualified ARN, and retryd
    # invokes that qualifier (only `$LATEST`, the demo's, is dropped).
    version = (await clients.lambda_.publish_version(FunctionName="charge"))["Version"]
    await clients.lambda_.create_alias(FunctionName="charge", Name=ALIAS, FunctionVersion=version)
    record = {
        "version": "1.0",
        "requestContext": {
            "functionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:charge:{ALIAS}",
            "condition": "RetriesExhausted",
            "approximateInvokeCount": 3,
        },
        "requestPayload": {"orderId": "alias-1"},
    }
    await clients.sqs.send_message(
        QueueUrl=demo.queue_urls[NAMED_DLQ], MessageBody=json.dumps(record)
    )
    # A failed execution of the state machine, as its EventBridge status change: redriven
    # (DescribeExecution, then RedriveExecution, which tests/stepfunctions_front.py answers).
    execution = (
        await clients.stepfunctions.start_execution(
            stateMachineArn=demo.state_machine_arn, name="failed-1", input="{}"
        )
    )["executionArn"]
    fail_execution(execution)
    event = {
        "source": "aws.states",
        "detail-type": "Step Functions Execution Status Change",
        "detail": {
            "executionArn": execution,
            "stateMachineArn": demo.state_machine_arn,
            "status": "FAILED",
            "input": "{}",
            "redriveCount": 0,
        },
    }
    await clients.sqs.send_message(
        QueueUrl=demo.queue_urls[NAMED_DLQ], MessageBody=json.dumps(event)
    )
    for batch in await _stream_batches(clients):
        await clients.sqs.send_message(
            QueueUrl=demo.queue_urls[NAMED_DLQ], MessageBody=json.dumps(batch)
        )


async def _stream_batches(clients: AwsClients) -> list[dict[str, Any]]:
    """A failed batch of a Kinesis stream and of a DynamoDB stream, as the event source
    mappings of `charge` write them: read back (GetShardIterator, GetRecords) and replayed."""
    charge = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:charge"
    await clients.kinesis.create_stream(StreamName="clicks", ShardCount=1)
    described = (await clients.kinesis.describe_stream(StreamName="clicks"))["StreamDescription"]
    first = await clients.kinesis.put_record(StreamName="clicks", Data=b"1", PartitionKey="p")
    kinesis = {
        "streamArn": described["StreamARN"],
        "shardId": described["Shards"][0]["ShardId"],
        "startSequenceNumber": first["SequenceNumber"],
        "endSequenceNumber": first["SequenceNumber"],
        "batchSize": 1,
    }
    table = await clients.dynamodb.create_table(
        TableName="carts",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
    )
    stream = table["TableDescription"]["LatestStreamArn"]
    await clients.dynamodb.put_item(TableName="carts", Item={"id": {"S": "1"}})
    shards = (await clients.dynamodbstreams.describe_stream(StreamArn=stream))["StreamDescription"]
    iterator = await clients.dynamodbstreams.get_shard_iterator(
        StreamArn=stream, ShardId=shards["Shards"][0]["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )
    (record,) = (
        await clients.dynamodbstreams.get_records(ShardIterator=iterator["ShardIterator"])
    )["Records"]
    dynamodb = {
        "streamArn": stream,
        "shardId": shards["Shards"][0]["ShardId"],
        "startSequenceNumber": record["dynamodb"]["SequenceNumber"],
        "endSequenceNumber": record["dynamodb"]["SequenceNumber"],
        "batchSize": 1,
    }
    context = {"functionArn": charge, "condition": "RetryAttemptsExhausted"}
    return [
        {"requestContext": context, "KinesisBatchInfo": kinesis},
        {"requestContext": context, "DDBStreamBatchInfo": dynamodb},
    ]


async def _record_explicit(world: World, monkeypatch: pytest.MonkeyPatch) -> Recording:
    """Queues by tags, name and URL; parking by URL; exact targets; two races.

    The allowlist names each target as an operator would, with the function's
    qualified ARNs, which a Lambda destination record names. The faults stand in
    for what only timing causes on AWS: another writer changing a ledger item
    between retryd's read and its conditional write (retryd re-reads it with
    BatchGetItem), and an execution name already taken (retryd describes it).
    """
    demo = await _prepare(_add_explicit_dlqs)
    faults = [
        world.faults.add(
            Fault("dynamodb", "TransactWriteItems", code="TransactionCanceledException", times=1)
        ),
        world.faults.add(Fault("states", "StartExecution", code="ExecutionAlreadyExists", times=1)),
    ]
    base = ledger_settings()
    settings = base.model_copy(
        update={
            "discovery": DiscoverySettings(
                queue_prefixes=["retry-"],
                queue_tags=TAG,
                queues=[NAMED_DLQ, demo.queue_urls[URL_DLQ]],
            ),
            "parking": ParkingSettings(queue=demo.queue_urls["retryd-parking"]),
            "guards": base.guards.model_copy(update={"allow_targets": EXACT_TARGETS}),
        }
    )
    log = CallLog()
    # `retryd inspect NAME...` looks each queue up by name (or URL) itself.
    names = [NAMED_DLQ, demo.queue_urls[URL_DLQ], "retry-payments"]
    report = await _run_phases(settings, log, monkeypatch, inspect=names)
    assert [fault.hits for fault in faults] == [1, 1]
    return Recording(settings, log.calls, report)


async def _record_operator(world: World, monkeypatch: pytest.MonkeyPatch) -> Recording:
    """An incident: a cycle parks, an operator pauses a target, plans and executes redrives
    (from a DLQ and from parking, one parked copy coming back), resumes, lists jobs and the
    audit; judged against `--role operator`."""
    demo = await _prepare(None)
    settings = ledger_settings()
    orders = f"arn:aws:sqs:{REGION}:{ACCOUNT}:orders"
    log = CallLog()

    def observed(aws: AwsSettings) -> AbstractAsyncContextManager[AwsClients]:
        return recording_clients(aws, log)

    for module in (
        retryd.places,
        retryd.commands.pause,
        retryd.commands.redrive,
        retryd.commands.audit,
    ):
        monkeypatch.setattr(module, "open_clients", observed)
    log.phase = "once"
    report = one_decision_each(await run_once(settings, collect=True))
    assert report.ok, report.errors
    async with open_clients(settings.aws) as clients:
        # A parked copy whose target works now: the redrive takes it out of parking.
        await clients.sqs.send_message(
            QueueUrl=demo.queue_urls["retryd-parking"],
            MessageBody=json.dumps(
                {"envelope": "retryd/v1", "target": {"type": "sqs", "arn": orders}, "payload": 1}
            ),
            MessageAttributes={
                "retryd.reason": {"DataType": "String", "StringValue": "target-rejected"},
                "retryd.source-queue": {"DataType": "String", "StringValue": "retry-orders"},
            },
        )
        # And a DLQ message to plan a redrive of.
        await clients.sqs.send_message(
            QueueUrl=demo.queue_urls["retry-orders"], MessageBody=json.dumps({"order": 7})
        )
    log.phase = "pause"
    pause = partial(run_pause, settings, every=False, reason="migration", until_text=None)
    assert await pause(pattern=f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:*", for_text="1h") == 0
    log.phase = "redrive-plan"
    assert await run_redrive(settings, RedriveRequest(sources=["retry-orders"])) == 0
    log.phase = "redrive-execute"
    request = RedriveRequest(
        sources=["parking"], reasons=["target-rejected"], execute=True, ramp="none"
    )
    assert await run_redrive(settings, request) == 0
    log.phase = "resume"
    assert await run_resume(settings, selectors=[], every=True) == 0
    log.phase = "jobs"
    assert await run_jobs(settings, output="json") == 0
    log.phase = "audit"
    assert await run_audit(settings, limit=5, output="json") == 0
    phases = {call.phase for call in log.calls}
    assert phases == {
        "once",
        "pause",
        "redrive-plan",
        "redrive-execute",
        "resume",
        "jobs",
        "audit",
    }, phases
    return Recording(settings, log.calls, report, role="operator")


SCENARIOS = {
    "demo": _record_demo,
    "explicit": _record_explicit,
    "no-lambda": _record_no_lambda,
    "operator": _record_operator,
}
Recorded = Callable[[str], Recording]
_RECORDINGS = pytest.StashKey[dict[str, Recording]]()


@pytest.fixture
def recorded(
    request: pytest.FixtureRequest, world: World, monkeypatch: pytest.MonkeyPatch
) -> Recorded:
    """A scenario's recording, made once per session: each builds a world, and calls are data."""
    cache = request.session.stash.setdefault(_RECORDINGS, {})

    def get(name: str) -> Recording:
        if name not in cache:
            # Each scenario starts from an empty AWS, as the `world` fixture leaves it.
            world.server.reset()
            world.faults.clear()
            cache[name] = anyio.run(SCENARIOS[name], world, monkeypatch)
        return cache[name]

    return get


def uncovered(recording: Recording, document: dict[str, Any]) -> list[str]:
    """Each distinct call the document does not allow, described; unmapped calls raise."""
    found = {
        f"[{call.phase}] {call.service}.{call.operation}: {request.action} on {request.resource}"
        for call, request in recording.requests()
        if not allowing(document, request)
    }
    return sorted(found)


# -- Every call is allowed ---------------------------------------------------------------


@pytest.mark.parametrize(
    "scenario",
    [
        "demo",
        "explicit",
        "no-lambda",
        "operator",
    ],
)
def test_policy_allows_every_call_retryd_makes(recorded: Recorded, scenario: str) -> None:
    """Each call of inspect, plan and once is allowed by the printed policy, on its resource."""
    recording = recorded(scenario)
    unmapped = []
    for call in recording.calls:
        try:
            iam_requests(call, ACCOUNT)
        except UnmappedCallError as exc:
            unmapped.append(f"[{call.phase}] {exc}")
    assert not unmapped, "calls with no known IAM permission:\n" + "\n".join(unmapped)
    missing = uncovered(recording, recording.document())
    assert not missing, "calls the policy does not allow:\n" + "\n".join(missing)


def test_every_statement_is_needed(recorded: Recorded) -> None:
    """Without any one statement, some recorded call is denied: the check can fail, and does."""
    needed: dict[str, list[str]] = {}
    for recording in map(recorded, SCENARIOS):
        document = recording.document()
        for statement in statements(document):
            others = [s for s in document["Statement"] if s is not statement]
            denied = uncovered(recording, {**document, "Statement": others})
            needed.setdefault(statement["Sid"], []).extend(denied)
    assert needed
    assert not [sid for sid, denied in needed.items() if not denied], needed


def test_the_demo_exercises_every_target_and_the_ledger(
    recorded: Recorded,
) -> None:
    """The coverage check is not vacuous: all five targets, parking and the ledger were called."""
    recording = recorded("demo")
    assert recording.report.decisions is not None
    resubmitted = {
        d.target.type
        for d in recording.report.decisions
        if d.outcome is Outcome.RESUBMITTED and d.target
    }
    assert resubmitted == set(TargetType)
    assert recording.report.outcomes[Outcome.PARKED.value] > 0
    actions = {request.action for _, request in recording.requests()}
    assert {
        "lambda:InvokeFunction",
        "states:StartExecution",
        "sqs:SendMessage",
        "sns:Publish",
        "events:PutEvents",
        "sqs:ListDeadLetterSourceQueues",
        "lambda:ListFunctionEventInvokeConfigs",
        "dynamodb:BatchGetItem",
        "dynamodb:PutItem",
    } <= actions
    parking = queue_arn_from_url(recording_queue_url(recording, "retryd-parking"), REGION)
    assert IamRequest("sqs:SendMessage", parking) in {r for _, r in recording.requests()}


def test_exact_allowlist_reaches_every_target_and_the_qualified_function(
    recorded: Recorded,
) -> None:
    """With exact target ARNs, a destination record of an alias invokes `charge:ALIAS`."""
    recording = recorded("explicit")
    requests = {request for _, request in recording.requests()}
    charge = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:charge"
    assert IamRequest("lambda:InvokeFunction", charge) in requests
    assert IamRequest("lambda:InvokeFunction", f"{charge}:{ALIAS}") in requests
    assert recording.report.decisions is not None
    resubmitted = {
        d.target.type
        for d in recording.report.decisions
        if d.outcome is Outcome.RESUBMITTED and d.target
    }
    assert resubmitted == set(TargetType)
    # One Step Functions resubmission, the redriven execution: the one start met the
    # injected name clash.
    machines = [
        d
        for d in recording.report.decisions
        if d.outcome is Outcome.RESUBMITTED
        and d.target
        and d.target.type is TargetType.STEPFUNCTIONS
    ]
    assert len(machines) == 1


def recording_queue_url(recording: Recording, name: str) -> str:
    """The URL retryd used for queue `name` (from its own calls)."""
    for call in recording.calls:
        url = call.params.get("QueueUrl")
        if isinstance(url, str) and url.rstrip("/").endswith(f"/{name}"):
            return url
    raise AssertionError(f"retryd never called queue {name}")


# -- And little else ----------------------------------------------------------------------


def test_every_granted_action_is_used_or_listed_as_rare(
    recorded: Recorded,
) -> None:
    """Each (statement, action) granted is used by some recorded call, or is in RARE_GRANTS."""
    granted: set[tuple[str, str]] = set()
    used: set[tuple[str, str]] = set()
    for recording in map(recorded, SCENARIOS):
        document = recording.document()
        granted |= granted_pairs(document)
        by_sid = {s["Sid"]: s for s in statements(document)}
        for _, request in recording.requests():
            for sid in allowing(document, request):
                used |= {
                    (sid, pattern)
                    for pattern in by_sid[sid]["Action"]
                    if action_matches(pattern, request.action)
                }
    unused = granted - used - set(RARE_GRANTS)
    assert not unused, f"granted but never used: {sorted(unused)}"
    stale = {pair for pair in RARE_GRANTS if pair in used or pair not in granted}
    assert not stale, f"RARE_GRANTS entries now used or no longer granted: {sorted(stale)}"


def test_no_write_is_granted_on_every_resource(recorded: Recorded) -> None:
    """Only unscopable List calls get "*"; other grants name their service, account and region."""
    for recording in map(recorded, SCENARIOS):
        for statement in statements(recording.document()):
            for resource in statement["Resource"]:
                if resource == "*":
                    assert set(statement["Action"]) <= UNSCOPABLE_ACTIONS, statement
                    continue
                _, _, service, region, account, _ = resource.split(":", 5)
                prefixes = {action.split(":")[0] for action in statement["Action"]}
                assert prefixes == {service}, statement
                assert (region, account) == (REGION, ACCOUNT), statement


def test_the_recorded_actions(recorded: Recorded) -> None:
    """The distinct actions retryd used, per scenario: a change here is a change to review."""
    used = {
        name: sorted({request.action for _, request in recording.requests()})
        for name, recording in zip(SCENARIOS, map(recorded, SCENARIOS), strict=True)
    }
    assert used["demo"] == [
        "dynamodb:BatchGetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "events:PutEvents",
        "lambda:InvokeFunction",
        "lambda:ListFunctionEventInvokeConfigs",
        "lambda:ListFunctions",
        "sns:GetSubscriptionAttributes",
        "sns:ListSubscriptions",
        "sns:Publish",
        "sqs:ChangeMessageVisibility",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
        "sqs:GetQueueUrl",
        "sqs:ListDeadLetterSourceQueues",
        "sqs:ListQueues",
        "sqs:ReceiveMessage",
        "sqs:SendMessage",
        "states:StartExecution",
    ]
    assert set(used["explicit"]) - set(used["demo"]) == {
        "dynamodb:GetRecords",
        "dynamodb:GetShardIterator",
        "kinesis:GetRecords",
        "kinesis:GetShardIterator",
        "sqs:ListQueueTags",
        "states:DescribeExecution",
        "states:RedriveExecution",
    }
    # The operator's commands call nothing the daemon does not; on the parking queue,
    # they also receive, hide and delete (RedriveParkedMessages).
    assert set(used["operator"]) <= set(used["demo"]) | set(used["explicit"])
    operator = recorded("operator")
    parking = queue_arn_from_url(recording_queue_url(operator, "retryd-parking"), REGION)
    on_parking = {r.action for _, r in operator.requests() if r.resource == parking}
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"} <= on_parking
    daemon_parking = {
        r.action
        for _, r in recorded("demo").requests()
        if r.resource
        == queue_arn_from_url(recording_queue_url(recorded("demo"), "retryd-parking"), REGION)
    }
    assert daemon_parking <= {"sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:SendMessage"}


# -- The judge itself --------------------------------------------------------------------


def test_resource_wildcards_follow_iam() -> None:
    """A `*` ending an ARN part crosses colons; inside a part it does not; `?` is one character."""
    base = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:"
    assert resource_matches(base + "*", base + "charge:$LATEST")
    assert resource_matches(f"arn:aws:lambda:*:{ACCOUNT}:function:*", base + "charge")
    assert not resource_matches(base + "ch*e", base + "ch:x:e")
    assert resource_matches(base + "ch*e", base + "charge")
    assert resource_matches(base + "charg?", base + "charge")
    assert not resource_matches(base + "charg?", base + "charg:")
    assert not resource_matches(base + "charge", base + "charge:1")
    assert not resource_matches(base + "Charge", base + "charge")
    assert resource_matches("*", UNSCOPED)
    assert not resource_matches(base + "*", UNSCOPED)


def test_action_wildcards_ignore_case() -> None:
    """IAM action names match case-insensitively, with `*` and `?`."""
    assert action_matches("sqs:*", "sqs:SendMessage")
    assert action_matches("SQS:sendmessage", "sqs:SendMessage")
    assert action_matches("sqs:Send?essage", "sqs:SendMessage")
    assert not action_matches("sqs:Send*", "sns:SendMessage")
    assert not action_matches("sqs:SendMessage", "sqs:SendMessageBatch")


def test_deny_wins_and_not_elements_are_refused() -> None:
    """A matching Deny grants nothing; NotAction/NotResource are not judged at all."""
    request = IamRequest("sqs:SendMessage", f"arn:aws:sqs:{REGION}:{ACCOUNT}:q")
    allow = {"Sid": "A", "Effect": "Allow", "Action": "sqs:*", "Resource": "*"}
    deny = {"Sid": "D", "Effect": "Deny", "Action": ["sqs:SendMessage"], "Resource": ["*"]}
    assert allowing({"Statement": [allow]}, request) == ["A"]
    assert allowing({"Statement": [allow, deny]}, request) == []
    with pytest.raises(ValueError, match="NotAction"):
        allowing({"Statement": [{"Sid": "N", "Effect": "Allow", "NotAction": "x:y"}]}, request)


def test_call_mapping_names_the_right_resources() -> None:
    """Batch calls need their single form's action; names, URLs and ARNs become the same ARN."""
    queue = f"arn:aws:sqs:{REGION}:{ACCOUNT}:dlq"

    def mapped(service: str, operation: str, **params: Any) -> list[IamRequest]:
        return iam_requests(ApiCall("t", service, operation, REGION, params), ACCOUNT)

    url = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/dlq"
    assert mapped("sqs", "DeleteMessageBatch", QueueUrl=url) == [
        IamRequest("sqs:DeleteMessage", queue)
    ]
    assert mapped("sqs", "GetQueueUrl", QueueName="dlq") == [IamRequest("sqs:GetQueueUrl", queue)]
    assert queue_arn_from_url(f"http://localhost:4566/{ACCOUNT}/dlq", REGION) == queue
    assert queue_arn_from_url(f"https://sqs.eu-west-1.amazonaws.com/{ACCOUNT}/dlq", REGION) == (
        f"arn:aws:sqs:eu-west-1:{ACCOUNT}:dlq"
    )
    function = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:charge"
    assert mapped("lambda", "Invoke", FunctionName="charge", Qualifier="live") == [
        IamRequest("lambda:InvokeFunction", function + ":live")
    ]
    assert mapped("events", "PutEvents", Entries=[{"Source": "s"}]) == [
        IamRequest("events:PutEvents", f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/default")
    ]
    assert mapped("sns", "PublishBatch", TopicArn="arn:t") == [IamRequest("sns:Publish", "arn:t")]
    with pytest.raises(UnmappedCallError):
        mapped("sqs", "PurgeQueue", QueueUrl=url)


_FUNCTION_NAMES = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)


@given(name=_FUNCTION_NAMES, qualifier=st.one_of(st.none(), _FUNCTION_NAMES))
def test_every_function_name_spelling_is_one_arn(name: str, qualifier: str | None) -> None:
    """Lambda's name, partial ARN and full ARN spellings map to the same (qualified) ARN."""
    arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
    expected = f"{arn}:{qualifier}" if qualifier else arn
    for spelling in (name, f"{ACCOUNT}:function:{name}", arn):
        assert lambda_function_arn(spelling, qualifier, REGION, ACCOUNT) == expected
    assert (
        lambda_function_arn(f"{name}:{qualifier}" if qualifier else name, None, REGION, ACCOUNT)
        == expected
    )
