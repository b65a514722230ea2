"""One home deployment over two accounts: each account's `retryd iam-policy` document
allows exactly what retryd calls there.

test_iam_coverage_member.py runs in the member account with the member role's own
credentials. Here one deployment works the way an organisation runs it: `[[accounts]]`
lists the home account and a member with its role, and `retryd inspect`, `plan` and
`once` run at home, reaching the member only through sts:AssumeRole (moto gives the
assumed-role credentials the role's account). Every call is recorded with the access
key that signed it; the account each key belongs to is asked of moto afterwards, and
each call is judged against the document `organisation_policies` prints for that
account. Both accounts are listed in two regions and the attempt ledger is the DynamoDB
table at home. Cross-account sends are in the world: a home DLQ holds a message for a
member queue, a member DLQ one for a home topic, and each account's second region one
for the member's queue in the first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aioboto3
import anyio
import boto3
import pytest
from aiobotocore.session import AioSession

import retryd.aws
import retryd.places
from retryd.drain.cycle import CycleReport
from retryd.iam.policy import AccountPolicy, organisation_policies
from retryd.ledger import create_table
from retryd.models import Outcome
from retryd.sandbox.emulator import MotoServer
from retryd.settings import Settings
from tests.conftest import world_in
from tests.e2e.helpers import org_settings as shared_org_settings
from tests.e2e.test_iam_coverage_member import (
    MEMBER,
    MEMBER_ROLE,
    NAMED_DLQ,
    NOTIFY,
    ORDERS,
    TAG,
    build_member_world,
    member_credentials,
)
from tests.faults import FaultInjector
from tests.iam_helpers import (
    UNSCOPED,
    ApiCall,
    IamRequest,
    SignedCallLog,
    action_matches,
    allowing,
    granted_pairs,
    iam_requests,
    inspect_plan_once,
    statements,
)
from tests.world import ACCOUNT, REGION, World, envelope

MAX_MESSAGES = 50
OTHER_REGION = "eu-west-1"
REGIONS = [REGION, OTHER_REGION]
LEDGER_TABLE = "retryd-ledger"
HOME_TOPIC = f"arn:aws:sns:{REGION}:{ACCOUNT}:home-notify"
HOME_ELSEWHERE = f"arn:aws:sns:{REGION}:{ACCOUNT}:elsewhere"
# Grants no scenario here exercises, per account, each with why (as in test_iam_coverage.py).
RARE_GRANTS: dict[str, dict[tuple[str, str], str]] = {
    ACCOUNT: {
        ("AttemptLedger", "dynamodb:GetItem"): (
            "retryd 0.1 re-read a lost conditional write with GetItem; this one re-reads "
            "with BatchGetItem. Kept while replicas of both share one role in a rolling upgrade."
        ),
    },
    MEMBER: {},
}


def org_settings() -> Settings:
    """One deployment at home: home and member listed; targets in both accounts."""
    return shared_org_settings(
        regions=REGIONS,
        member=MEMBER,
        member_role=MEMBER_ROLE,
        allow_targets=[ORDERS, NOTIFY, HOME_TOPIC],
        discovery={"queue_tags": TAG, "queues": [NAMED_DLQ]},
        ledger={"backend": "dynamodb", "table": LEDGER_TABLE},
    )


def sqs_in(world: World, credentials: dict[str, str] | None, region: str) -> Any:
    """An SQS client in `region`, with the member's credentials or (None) the home account's."""
    keys = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    if credentials is not None:
        keys = {
            "aws_access_key_id": credentials["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": credentials["AWS_SECRET_ACCESS_KEY"],
            "aws_session_token": credentials["AWS_SESSION_TOKEN"],
        }
    return boto3.client("sqs", endpoint_url=world.url, region_name=region, **keys)


def build_other_region(world: World, credentials: dict[str, str] | None) -> None:
    """An account's second region: parking, the named DLQ, and a DLQ whose message goes to
    the member's queue in the first region."""
    sqs = sqs_in(world, credentials, OTHER_REGION)
    sqs.create_queue(QueueName="retryd-parking")
    sqs.create_queue(QueueName=NAMED_DLQ, tags=TAG)
    dlq = sqs.create_queue(QueueName="retry-far", tags=TAG)["QueueUrl"]
    # A payload of its own: the same one twice would be one idempotency key, sent once.
    payload = {"far": "home" if credentials is None else "member"}
    sqs.send_message(QueueUrl=dlq, MessageBody=json.dumps(envelope("sqs", ORDERS, payload)))


def build_org_world(world: World) -> None:
    """The member's world (test_iam_coverage_member.py) plus the home account's part, and
    each account's second region; the ledger table, created by an operator."""
    credentials = member_credentials(world)
    build_member_world(world, credentials)
    build_other_region(world, credentials)
    build_other_region(world, None)
    # `retryd ledger create-table`: an operator's one-off, with their own rights.
    anyio.run(create_table, org_settings())
    member_sqs = sqs_in(world, credentials, REGION)
    # A member DLQ message for a home target: sent with the home account's credentials.
    envelopes = member_sqs.get_queue_url(QueueName="retry-envelopes")["QueueUrl"]
    member_sqs.send_message(
        QueueUrl=envelopes, MessageBody=json.dumps(envelope("sns", HOME_TOPIC, {"to": "home"}))
    )
    sqs, sns = world.client("sqs"), world.client("sns")
    topic = sns.create_topic(Name="home-notify")["TopicArn"]
    sqs.create_queue(QueueName="retryd-parking")
    # Listed by name: looked up in every place, so it is in the home account too, here
    # as the DLQ of a home SNS subscription.
    named = sqs.create_queue(QueueName=NAMED_DLQ, tags=TAG)["QueueUrl"]
    named_arn = sqs.get_queue_attributes(QueueUrl=named, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sqs.create_queue(QueueName="home-orders")
    sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=f"arn:aws:sqs:{REGION}:{ACCOUNT}:home-orders",
        Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": named_arn})},
    )
    home_dlq = sqs.create_queue(QueueName="retry-home", tags=TAG)["QueueUrl"]
    # A home DLQ message for the member's queue (sent with the member role's credentials),
    # one for a home topic, one for a topic nobody allowed (parked at home).
    for target_type, arn in (("sqs", ORDERS), ("sns", HOME_TOPIC), ("sns", HOME_ELSEWHERE)):
        body = envelope(target_type, arn, {"from": "home"})
        sqs.send_message(QueueUrl=home_dlq, MessageBody=json.dumps(body))


@dataclass(frozen=True)
class OrgRecording:
    """Every call of inspect, plan and once, each with the account whose credentials signed it."""

    calls: list[tuple[ApiCall, str]]
    report: CycleReport

    def requests(self, account: str) -> list[IamRequest]:
        return [
            request
            for call, made_in in self.calls
            if made_in == account
            for request in iam_requests(call, account)
        ]


def key_accounts(world: World, keys: set[str]) -> dict[str, str]:
    """The account moto takes each access key id for (its own record of assumed roles)."""
    accounts = {}
    for key in keys:
        sts = boto3.client(
            "sts",
            endpoint_url=world.url,
            region_name=REGION,
            aws_access_key_id=key,
            # moto does not check signatures: the key id alone says whose call it is.
            aws_secret_access_key="unchecked",
        )
        accounts[key] = str(sts.get_caller_identity()["Account"])
    return accounts


async def _record(settings: Settings, log: SignedCallLog) -> CycleReport:
    return await inspect_plan_once(settings, log, max_messages=MAX_MESSAGES)


@pytest.fixture(scope="module")
def org_recording(moto_server: MotoServer, fault_injector: FaultInjector) -> OrgRecording:
    """inspect, plan and once of one home deployment over home and member.

    Once for the module (about 10 s): every test reads the same recording, none touches
    the world.
    """
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        world_in(moto_server, fault_injector, monkeypatch) as world,
    ):
        return _org_recording(world, monkeypatch)


def _org_recording(world: World, monkeypatch: pytest.MonkeyPatch) -> OrgRecording:
    build_org_world(world)
    log = SignedCallLog()
    opened = retryd.aws.open_session

    def watched_session(*args: Any, **kwargs: Any) -> aioboto3.Session:
        session = opened(*args, **kwargs)
        log.watch(session._session)
        return session

    class WatchedSession(AioSession):
        """The sessions of AssumeRole's STS clients and of the member roles' clients."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            log.watch(self)

    monkeypatch.setattr(retryd.places, "open_session", watched_session)
    monkeypatch.setattr(retryd.places, "AioSession", WatchedSession)
    report = anyio.run(_record, org_settings(), log)
    signed = log.signed_with()
    unsigned = [call for call, key in signed if key is None]
    assert not unsigned, f"calls recorded but never signed: {unsigned}"
    accounts = key_accounts(world, {key for _, key in signed if key is not None})
    return OrgRecording([(call, accounts[str(key)]) for call, key in signed], report)


def policies() -> dict[str, AccountPolicy]:
    """What `retryd iam-policy` prints for the deployment, by account."""
    found = organisation_policies(org_settings(), account=None, region=None)
    return {policy.account_id: policy for policy in found}


def test_calls_are_made_in_the_listed_accounts_only(org_recording: OrgRecording) -> None:
    """Each call is signed by home's or the member role's credentials, and both are used."""
    assert {account for _, account in org_recording.calls} == {ACCOUNT, MEMBER}


@pytest.mark.parametrize("account", [ACCOUNT, MEMBER])
def test_each_account_policy_allows_every_call_made_there(
    org_recording: OrgRecording, account: str
) -> None:
    """Every call in an account is allowed by that account's document, on its own resources."""
    document = policies()[account].policy
    requests = org_recording.requests(account)
    denied = sorted({f"{r.action} on {r.resource}" for r in requests if not allowing(document, r)})
    assert not denied, f"calls the {account} policy does not allow:\n" + "\n".join(denied)
    for request in requests:
        if request.action == "sts:AssumeRole":
            continue
        assert request.resource == UNSCOPED or f":{account}:" in request.resource, request


def test_home_assumes_exactly_the_member_role(org_recording: OrgRecording) -> None:
    """The home credentials call sts:AssumeRole on the member role and nothing else; the
    member's never call it; the home policy grants it on exactly that role."""
    assumed = {r.resource for r in org_recording.requests(ACCOUNT) if r.action == "sts:AssumeRole"}
    assert assumed == {MEMBER_ROLE}
    assert not [r for r in org_recording.requests(MEMBER) if r.action.startswith("sts:")]
    home = policies()[ACCOUNT].policy
    granted = [s for s in statements(home) if "sts:AssumeRole" in s["Action"]]
    assert [s["Resource"] for s in granted] == [[MEMBER_ROLE]]


@pytest.mark.parametrize("account", [ACCOUNT, MEMBER])
def test_every_grant_of_each_account_is_used_or_listed_as_rare(
    org_recording: OrgRecording, account: str
) -> None:
    """Each (statement, action) of each account's document is used there, or is in RARE_GRANTS."""
    document = policies()[account].policy
    by_sid = {s["Sid"]: s for s in statements(document)}
    used: set[tuple[str, str]] = set()
    for request in org_recording.requests(account):
        for sid in allowing(document, request):
            used |= {
                (sid, pattern)
                for pattern in by_sid[sid]["Action"]
                if action_matches(pattern, request.action)
            }
    granted = granted_pairs(document)
    rare = RARE_GRANTS[account]
    assert granted - used - set(rare) == set()
    stale = {pair for pair in rare if pair in used or pair not in granted}
    assert not stale, f"RARE_GRANTS entries now used or no longer granted: {sorted(stale)}"


def test_the_organisation_was_drained_across_accounts(org_recording: OrgRecording) -> None:
    """Not vacuous: both accounts' DLQs drained, each way across the account line."""
    report = org_recording.report
    # Member: 3 redriven orders, the topic message, the home-topic message; home: 2;
    # one from each account's second region.
    assert report.outcomes[Outcome.RESUBMITTED.value] == 9
    # One not-allowlisted message in each account.
    assert report.outcomes[Outcome.PARKED.value] == 2
    sends = {
        (account, request.action, request.resource)
        for account in (ACCOUNT, MEMBER)
        for request in org_recording.requests(account)
    }
    assert (MEMBER, "sqs:SendMessage", ORDERS) in sends
    assert (ACCOUNT, "sns:Publish", HOME_TOPIC) in sends
    # Every place was surveyed with its own account's credentials.
    listed = {(account, call.region) for call, account in org_recording.calls}
    listed &= {(a, c.region) for c, a in org_recording.calls if c.operation == "ListQueues"}
    assert listed == {(account, region) for account in (ACCOUNT, MEMBER) for region in REGIONS}
