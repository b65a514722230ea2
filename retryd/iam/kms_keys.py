"""The KMS keys behind encrypted queues and topics, for `retryd iam-policy --kms`.

Receiving from an SSE-KMS queue needs `kms:Decrypt` on its key; sending to one, or
publishing to an SSE-KMS topic, needs `kms:GenerateDataKey` and `kms:Decrypt`
(https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-key-management.html,
https://docs.aws.amazon.com/sns/latest/dg/sns-key-management.html). A key policy
statement is evaluated against the key's ARN, never an alias
(https://docs.aws.amazon.com/kms/latest/developerguide/alias-authorization.html), so
a queue or topic that names its key by alias is resolved with kms:DescribeKey; an
alias that cannot be resolved is reported rather than guessed.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aioboto3
from botocore.exceptions import BotoCoreError, ClientError

from retryd.arns import Arn, parse_glob, partition_for_region
from retryd.aws import AwsClients, client_config, enter_clients, open_clients, open_session, opened
from retryd.classify import from_exception
from retryd.discovery.queues import discover_queues, find_queue_url
from retryd.discovery.survey import KMS_KEY_ATTRIBUTE
from retryd.iam.targets import target_arns
from retryd.models import queue_ref_from_url
from retryd.places import Place, Places
from retryd.settings import AccountSettings, Settings

_FAILURES = (BotoCoreError, ClientError)
_GLOB_CHARS = frozenset("*?[")


def is_alias(key: str) -> bool:
    """An alias name (`alias/...`) or alias ARN (`arn:...:alias/...`)."""
    return key.startswith("alias/") or (key.startswith("arn:") and ":alias/" in key)


def key_arn(key: str, resource_arn: str) -> str | None:
    """The key's ARN without a lookup: a key ARN as is, a bare key id in the resource's
    account and Region; None for an alias (it needs kms:DescribeKey)."""
    if is_alias(key):
        return None
    if key.startswith("arn:"):
        return key
    owner = Arn.parse(resource_arn)
    return f"arn:{owner.partition}:kms:{owner.region}:{owner.account}:key/{key}"


@dataclass
class KeyFindings:
    """Key ARNs to decrypt with (DLQs) and to encrypt with (targets, parking), and what
    could not be resolved."""

    decrypt: list[str] = field(default_factory=list)
    encrypt: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)

    def add(self, kind: list[str], arn: str) -> None:
        if arn not in kind:
            kind.append(arn)

    def merge(self, other: KeyFindings) -> None:
        """Add another place's findings (the same account's role covers both)."""
        for arn in other.decrypt:
            self.add(self.decrypt, arn)
        for arn in other.encrypt:
            self.add(self.encrypt, arn)
        self.unresolved.extend(other.unresolved)


def _literal_prefix(glob: str) -> str:
    return re.split(r"[*?\[]", glob, maxsplit=1)[0]


async def _queue_key(clients: AwsClients, url: str) -> str | None:
    response = await clients.sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=[KMS_KEY_ATTRIBUTE]
    )
    return response.get("Attributes", {}).get(KMS_KEY_ATTRIBUTE) or None


async def _target_queues(clients: AwsClients, globs: Iterable[str]) -> list[tuple[str, str]]:
    """(ARN, URL) of each queue in this account and Region that an SQS target glob matches."""
    region = clients.sqs.meta.region_name
    found: dict[str, str] = {}
    for glob in globs:
        name_glob = glob.rsplit(":", 1)[-1]
        kwargs: dict[str, Any] = {}
        if prefix := _literal_prefix(name_glob):
            kwargs["QueueNamePrefix"] = prefix
        async for page in clients.sqs.get_paginator("list_queues").paginate(**kwargs):
            for url in page.get("QueueUrls", []):
                arn = queue_ref_from_url(url, region).arn
                if fnmatch.fnmatchcase(arn, glob):
                    found[arn] = url
    return sorted(found.items())


async def _target_topics(clients: AwsClients, globs: Iterable[str]) -> list[str]:
    """ARNs of the topics in this account and Region that an SNS target glob matches."""
    globs = list(globs)
    found = set()
    sns = await opened(clients.sns)
    async for page in sns.get_paginator("list_topics").paginate():
        for topic in page.get("Topics", []):
            arn = topic["TopicArn"]
            if any(fnmatch.fnmatchcase(arn, glob) for glob in globs):
                found.add(arn)
    return sorted(found)


async def _resolve(kms: Any, key: str, resource: str, findings: KeyFindings) -> str | None:
    direct = key_arn(key, resource)
    if direct is not None:
        return direct
    try:
        metadata = (await kms.describe_key(KeyId=key))["KeyMetadata"]
    except _FAILURES as exc:
        findings.unresolved.append(
            f"{resource} is encrypted with {key}, which kms:DescribeKey could not resolve "
            f"({from_exception(exc)}): grant the KMS actions on its key ARN by hand"
        )
        return None
    arn: str = metadata["Arn"]
    return arn


async def find_keys(settings: Settings, clients: AwsClients, kms: Any) -> KeyFindings:
    """The keys of every DLQ discovery finds, the parking queue, and the SQS and SNS targets
    in this account and Region that allow_targets matches."""
    findings = KeyFindings()
    sqs_region = clients.sqs.meta.region_name
    dlqs = await discover_queues(clients.sqs, settings.discovery, settings.parking.queue)
    for queue in dlqs:
        key = await _queue_key(clients, queue.url)
        if key and (arn := await _resolve(kms, key, queue.arn, findings)):
            findings.add(findings.decrypt, arn)
    sends: list[tuple[str, str | None]] = []
    parking_url = await find_queue_url(clients.sqs, settings.parking.queue)
    if parking_url is not None:
        parking_arn = queue_ref_from_url(parking_url, sqs_region).arn
        sends.append((parking_arn, await _queue_key(clients, parking_url)))
    for resource, key in sends:
        if key and (arn := await _resolve(kms, key, resource, findings)):
            findings.add(findings.encrypt, arn)
    # DLQs and the parking queue are never targets (the loop guard refuses them).
    protected = {queue.arn for queue in dlqs} | {arn for arn, _ in sends}
    findings.merge(await find_target_keys(settings, clients, kms, protected=protected))
    return findings


async def find_target_keys(
    settings: Settings, clients: AwsClients, kms: Any, *, protected: Iterable[str] = ()
) -> KeyFindings:
    """The keys of the SQS queues and SNS topics in this account and Region that
    allow_targets matches (the `protected` queues left out)."""
    findings = KeyFindings()
    targets = target_arns(settings.guards.allow_targets)
    skip = set(protected)
    sends: list[tuple[str, str | None]] = []
    for arn, url in await _target_queues(clients, targets["sqs"]):
        if arn not in skip:
            sends.append((arn, await _queue_key(clients, url)))
    if targets["sns"]:
        for arn in await _target_topics(clients, targets["sns"]):
            attributes = (await clients.sns.get_topic_attributes(TopicArn=arn))["Attributes"]
            sends.append((arn, attributes.get(KMS_KEY_ATTRIBUTE) or None))
    for resource, key in sends:
        if key and (key_arn_found := await _resolve(kms, key, resource, findings)):
            findings.add(findings.encrypt, key_arn_found)
    return findings


async def look_up_keys(settings: Settings) -> KeyFindings:
    """find_keys with clients of its own (a KMS one besides)."""
    async with (
        open_clients(settings.aws) as clients,
        aioboto3.Session().client("kms", config=client_config(settings.aws)) as kms,
    ):
        return await find_keys(settings, clients, kms)


# -- The organisation set-up: keys looked up in each account and region ---------------------


@dataclass(frozen=True, slots=True)
class PlaceClients:
    """The clients of one place (account, region): the usual ones and a KMS one."""

    clients: AwsClients
    kms: Any


# Opens the clients of one [[accounts]] entry in one of its regions. The daemon's own
# clients per place can stand in for look_up_place_clients here.
OpenPlace = Callable[[AccountSettings, str], AbstractAsyncContextManager[PlaceClients]]


def target_places(settings: Settings) -> list[tuple[AccountSettings, str]]:
    """The places outside [[accounts]]'s own where an SQS or SNS target of a listed account
    may be: retryd sends there with that account's credentials (`Places.sending_place`).

    A pattern's region as written; a wildcard region stands for the regions [[accounts]]
    lists (of any account): every region AWS has would be a lookup in each, most of them
    for nothing. Name the region in the pattern to have another one looked at.
    """
    listed = {(entry.account_id, region) for entry in settings.accounts for region in entry.regions}
    every_region = list(dict.fromkeys(r for entry in settings.accounts for r in entry.regions))
    found: dict[tuple[str, str], AccountSettings] = {}
    for glob in settings.guards.allow_targets:
        partition, service, region, account, _ = parse_glob(glob)
        if not any(fnmatch.fnmatchcase(name, service) for name in ("sqs", "sns")):
            continue
        regions = (
            [r for r in every_region if fnmatch.fnmatchcase(r, region)]
            if _GLOB_CHARS.intersection(region)
            else [region]
        )
        for entry in settings.accounts:
            if not fnmatch.fnmatchcase(entry.account_id, account):
                continue
            for target_region in regions:
                if not fnmatch.fnmatchcase(partition_for_region(target_region), partition):
                    continue
                if (entry.account_id, target_region) not in listed:
                    found.setdefault((entry.account_id, target_region), entry)
    return [(entry, region) for (_, region), entry in found.items()]


async def find_keys_by_account(settings: Settings, open_place: OpenPlace) -> dict[str, KeyFindings]:
    """find_keys in every place of [[accounts]], merged per account: each account's role
    gets the keys of its own places, with its DLQs narrowed as the daemon narrows them
    (`Places.settings_for`). Then the target keys of each place outside those where a
    listed account's target may be (`target_places`), to that account. A place that
    cannot be looked at is reported in its account's `unresolved`, and the others are
    still looked at."""
    view = Places.listed(settings.accounts)
    by_account: dict[str, KeyFindings] = {}

    async def look(entry: AccountSettings, region: str, *, targets_only: bool) -> None:
        findings = by_account.setdefault(entry.account_id, KeyFindings())
        try:
            async with open_place(entry, region) as place:
                if targets_only:
                    found = await find_target_keys(settings, place.clients, place.kms)
                else:
                    narrowed = view.settings_for(settings, Place(entry.account_id, region))
                    found = await find_keys(narrowed, place.clients, place.kms)
                findings.merge(found)
        except _FAILURES as exc:
            findings.unresolved.append(
                f"account {entry.account_id} in {region}: keys not looked up "
                f"({from_exception(exc)}): its role's policy has no KMS statements for them"
            )

    for entry in settings.accounts:
        for region in entry.regions:
            await look(entry, region, targets_only=False)
    for entry, region in target_places(settings):
        await look(entry, region, targets_only=True)
    return by_account


@asynccontextmanager
async def look_up_place_clients(
    settings: Settings, entry: AccountSettings, region: str
) -> AsyncIterator[PlaceClients]:
    """Short-lived clients for one place: the AWS chain's credentials in the home account,
    a role session from one sts:AssumeRole in a member account (a lookup ends well within
    the session's lifetime, so nothing refreshes them)."""
    home = open_session()
    config = client_config(settings.aws)
    session = home
    if entry.role_arn is not None:
        kwargs: dict[str, Any] = {"RoleArn": entry.role_arn, "RoleSessionName": "retryd-iam-policy"}
        if entry.external_id is not None:
            kwargs["ExternalId"] = entry.external_id
        async with home.client("sts", region_name=region, config=config) as sts:
            credentials = (await sts.assume_role(**kwargs))["Credentials"]
        session = aioboto3.Session(
            aws_access_key_id=credentials["AccessKeyId"],
            aws_secret_access_key=credentials["SecretAccessKey"],
            aws_session_token=credentials["SessionToken"],
        )
    async with AsyncExitStack() as stack:
        clients = await enter_clients(stack, session, config, region)
        kms = await stack.enter_async_context(
            session.client("kms", region_name=region, config=config)
        )
        yield PlaceClients(clients, kms)


async def look_up_keys_by_account(settings: Settings) -> dict[str, KeyFindings]:
    """find_keys_by_account with clients of its own, per place."""

    def open_place(
        entry: AccountSettings, region: str
    ) -> AbstractAsyncContextManager[PlaceClients]:
        return look_up_place_clients(settings, entry, region)

    return await find_keys_by_account(settings, open_place)
