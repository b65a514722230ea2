"""The member account's policy from `retryd iam-policy` allows what retryd calls there.

test_iam_coverage.py's method, in a member account: a world is built in account
222222222222 of the moto server (moto gives assumed-role credentials the role's account),
and `retryd inspect`, `plan` and `once` run there with that account's credentials, as
the runtime works in a member place with the clients of the role it assumed. Every call
is judged against the member document `organisation_policies` prints for the same
[[accounts]] configuration, and every grant of that document must be used.
"""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import anyio
import boto3
import pytest

import retryd.places
from retryd.aws import AwsClients
from retryd.drain.cycle import CycleReport
from retryd.iam.policy import organisation_policies
from retryd.models import Outcome
from retryd.sandbox.emulator import MotoServer
from retryd.settings import AwsSettings, Settings
from tests.conftest import world_in
from tests.e2e.helpers import org_settings as shared_org_settings
from tests.faults import FaultInjector
from tests.iam_helpers import (
    ApiCall,
    CallLog,
    IamRequest,
    action_matches,
    allowing,
    granted_pairs,
    iam_requests,
    inspect_plan_once,
    recording_clients,
    statements,
)
from tests.world import REGION, World

MEMBER = "222222222222"
MEMBER_ROLE = f"arn:aws:iam::{MEMBER}:role/retryd-member"
TAG = {"team": "shop"}
ORDERS = f"arn:aws:sqs:{REGION}:{MEMBER}:orders"
NOTIFY = f"arn:aws:sns:{REGION}:{MEMBER}:notify"
# Not allowlisted: messages for it are parked.
ELSEWHERE = f"arn:aws:sns:{REGION}:{MEMBER}:elsewhere"
MAX_MESSAGES = 50
# A DLQ listed by name, outside the prefix.
NAMED_DLQ = "legacy-dlq"


def org_settings() -> Settings:
    """Home plus one member; the member's own targets; queues found by prefix and tag."""
    return shared_org_settings(
        regions=[REGION],
        member=MEMBER,
        member_role=MEMBER_ROLE,
        allow_targets=[ORDERS, NOTIFY],
        discovery={"queue_tags": TAG, "queues": [NAMED_DLQ]},
    )


def member_credentials(world: World) -> dict[str, str]:
    """One AssumeRole into the member role, as retryd does for a member place."""
    credentials = world.client("sts").assume_role(RoleArn=MEMBER_ROLE, RoleSessionName="retryd")[
        "Credentials"
    ]
    return {
        "AWS_ACCESS_KEY_ID": credentials["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": credentials["SecretAccessKey"],
        "AWS_SESSION_TOKEN": credentials["SessionToken"],
    }


def build_member_world(world: World, credentials: dict[str, str]) -> None:
    """In the member account: a queue with a redrive DLQ, an envelope DLQ, a topic, parking."""

    def client(service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=world.url,
            region_name=REGION,
            aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=credentials["AWS_SESSION_TOKEN"],
        )

    sqs, sns = client("sqs"), client("sns")
    sqs.create_queue(QueueName="retryd-parking")
    dlq = sqs.create_queue(QueueName="retry-orders", tags=TAG)["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    assert dlq_arn == f"arn:aws:sqs:{REGION}:{MEMBER}:retry-orders", "moto gave no member account"
    sqs.create_queue(
        QueueName="orders",
        Attributes={
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3})
        },
    )
    envelopes = sqs.create_queue(QueueName="retry-envelopes", tags=TAG)["QueueUrl"]
    topic = sns.create_topic(Name="notify")["TopicArn"]
    # An SNS subscription whose undeliverable messages go to a DLQ of their own.
    named = sqs.create_queue(QueueName=NAMED_DLQ, tags=TAG)["QueueUrl"]
    named_arn = sqs.get_queue_attributes(QueueUrl=named, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=ORDERS,
        Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": named_arn})},
    )
    for n in range(3):
        sqs.send_message(QueueUrl=dlq, MessageBody=json.dumps({"order": n}))
    for target, arn in (("sns", NOTIFY), ("sns", ELSEWHERE)):
        body = {"envelope": "retryd/v1", "target": {"type": target, "arn": arn}, "payload": 1}
        sqs.send_message(QueueUrl=envelopes, MessageBody=json.dumps(body))


@dataclass(frozen=True)
class MemberRecording:
    calls: list[ApiCall]
    report: CycleReport

    def requests(self) -> list[IamRequest]:
        return [request for call in self.calls for request in iam_requests(call, MEMBER)]


async def _record(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> MemberRecording:
    log = CallLog()

    def observed(aws: AwsSettings) -> AbstractAsyncContextManager[AwsClients]:
        return recording_clients(aws, log)

    monkeypatch.setattr(retryd.places, "open_clients", observed)
    report = await inspect_plan_once(settings, log, max_messages=MAX_MESSAGES)
    return MemberRecording(log.calls, report)


@pytest.fixture(scope="module")
def member_recording(moto_server: MotoServer, fault_injector: FaultInjector) -> MemberRecording:
    """inspect, plan and once in the member account, with its role's credentials.

    Once for the module: every test reads the same recording, none touches the world.
    """
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        world_in(moto_server, fault_injector, monkeypatch) as world,
    ):
        credentials = member_credentials(world)
        build_member_world(world, credentials)
        for name, value in credentials.items():
            monkeypatch.setenv(name, value)
        # The runtime drains a member place with that place's clients alone: the same as a
        # one-account run with the member role's credentials.
        runtime = org_settings().model_copy(update={"accounts": []})
        return anyio.run(_record, runtime, monkeypatch)


def member_document() -> dict[str, Any]:
    [member] = [
        policy
        for policy in organisation_policies(org_settings(), account=None, region=None)
        if policy.account_id == MEMBER
    ]
    return member.policy


def test_member_policy_allows_every_call_retryd_makes_there(
    member_recording: MemberRecording,
) -> None:
    """Each call of inspect, plan and once in the member account is allowed by its policy,
    and each names the member account (or is an unscopable List call)."""
    document = member_document()
    denied = sorted(
        {
            f"{request.action} on {request.resource}"
            for request in member_recording.requests()
            if not allowing(document, request)
        }
    )
    assert not denied, "calls the member policy does not allow:\n" + "\n".join(denied)
    for request in member_recording.requests():
        assert request.resource == "*" or f":{MEMBER}:" in request.resource, request


def test_every_member_grant_is_used(member_recording: MemberRecording) -> None:
    """Each (statement, action) of the member policy is used by some call: nothing extra."""
    document = member_document()
    by_sid = {s["Sid"]: s for s in statements(document)}
    used: set[tuple[str, str]] = set()
    for request in member_recording.requests():
        for sid in allowing(document, request):
            used |= {
                (sid, pattern)
                for pattern in by_sid[sid]["Action"]
                if action_matches(pattern, request.action)
            }
    assert granted_pairs(document) - used == set()


def test_the_member_world_was_drained(member_recording: MemberRecording) -> None:
    """Not vacuous: redriven to the queue, published to the topic, one message parked."""
    report = member_recording.report
    assert report.outcomes[Outcome.RESUBMITTED.value] == 4
    assert report.outcomes[Outcome.PARKED.value] == 1
    actions = {request.action for request in member_recording.requests()}
    assert {"sqs:SendMessage", "sns:Publish", "sqs:ListQueueTags"} <= actions


def test_every_member_statement_is_needed(member_recording: MemberRecording) -> None:
    """Without any one statement of the member policy, some recorded call is denied."""
    document = member_document()
    for statement in statements(document):
        others = {**document, "Statement": [s for s in statements(document) if s is not statement]}
        denied = [r for r in member_recording.requests() if not allowing(others, r)]
        assert denied, f"{statement['Sid']} allows nothing retryd calls"
