"""SNS subscriptions with a dead-letter queue: which subscriber each DLQ's messages belong to.

A subscription's `RedrivePolicy` attribute names the SQS queue SNS moves a
message to when it cannot deliver it to the subscriber
(https://docs.aws.amazon.com/sns/latest/dg/sns-dead-letter-queues.html). The
message does not name the subscription, so the feed map (retryd.discovery.feeds)
learns the link in bulk, at each refresh, never per message:

- sns:ListSubscriptions - every subscription of the account and region, 100 a
  page, paged with NextToken (SNS API reference, ListSubscriptions);
- sns:GetSubscriptionAttributes - one call per subscription, a bounded number at
  a time, for `RedrivePolicy` and `RawMessageDelivery`.

Subscriptions still pending confirmation have no ARN yet and deliver nothing;
they are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from botocore.exceptions import ClientError

from retryd.aws import Client

# What ListSubscriptions returns as the ARN of a subscription not yet confirmed.
PENDING_CONFIRMATION = "PendingConfirmation"
# Protocols whose subscriber retryd can call again (models.Target): the rest are parked.
SQS_PROTOCOL = "sqs"
LAMBDA_PROTOCOL = "lambda"

Failure = Callable[[str, str, Exception], None]


@dataclass(frozen=True, slots=True)
class Subscription:
    """One subscription whose undeliverable messages go to `dlq_arn`."""

    arn: str
    topic_arn: str
    # sqs, lambda, http, https, email, email-json, sms, application, firehose.
    protocol: str
    # The queue or function ARN, URL, address or number the protocol delivers to.
    endpoint: str
    dlq_arn: str
    # RawMessageDelivery: the subscriber receives the published message itself,
    # not the JSON notification that wraps it.
    raw: bool = False


async def read_subscriptions(
    client: Client, wanted: frozenset[str], limiter: anyio.CapacityLimiter, fail: Failure
) -> list[Subscription]:
    """The subscriptions whose DLQ is one of `wanted` (queue ARNs); failures go to `fail`.

    `fail(operation, resource, exc)` records a call that failed; what the other calls
    learned is still returned.
    """
    try:
        listed = await _list_subscriptions(client)
    except Exception as exc:  # noqa: BLE001 - recorded by the caller, the map goes on
        fail("ListSubscriptions", "", exc)
        return []
    found: list[Subscription] = []

    async def read(entry: dict[str, Any]) -> None:
        async with limiter:
            subscription = await _with_dlq(client, entry, fail)
        if subscription is not None and subscription.dlq_arn in wanted:
            found.append(subscription)

    async with anyio.create_task_group() as group:
        for entry in listed:
            arn = entry.get("SubscriptionArn")
            if isinstance(arn, str) and arn.startswith("arn:"):
                group.start_soon(read, entry)
    return sorted(found, key=lambda subscription: subscription.arn)


async def _list_subscriptions(client: Client) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    request: dict[str, Any] = {}
    while True:
        page = await client.list_subscriptions(**request)
        entries.extend(page.get("Subscriptions", []))
        token = page.get("NextToken")
        if not token:
            return entries
        request["NextToken"] = token


async def _with_dlq(client: Client, entry: dict[str, Any], fail: Failure) -> Subscription | None:
    arn = str(entry["SubscriptionArn"])
    try:
        response = await client.get_subscription_attributes(SubscriptionArn=arn)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NotFound":
            # Unsubscribed since ListSubscriptions: it feeds nothing any more.
            return None
        fail("GetSubscriptionAttributes", arn, exc)
        return None
    except Exception as exc:  # noqa: BLE001 - recorded by the caller, the map goes on
        fail("GetSubscriptionAttributes", arn, exc)
        return None
    attributes = response.get("Attributes") or {}
    dlq = dead_letter_target(attributes.get("RedrivePolicy"))
    if dlq is None:
        return None
    return Subscription(
        arn=arn,
        topic_arn=str(entry.get("TopicArn") or attributes.get("TopicArn") or ""),
        protocol=str(entry.get("Protocol") or attributes.get("Protocol") or "").lower(),
        endpoint=str(entry.get("Endpoint") or attributes.get("Endpoint") or ""),
        dlq_arn=dlq,
        raw=str(attributes.get("RawMessageDelivery", "false")).lower() == "true",
    )


def dead_letter_target(policy: object) -> str | None:
    """`deadLetterTargetArn` of a RedrivePolicy attribute (a JSON string); None if absent."""
    if not isinstance(policy, str) or not policy:
        return None
    try:
        document = json.loads(policy)
    except (ValueError, RecursionError):
        return None
    target = document.get("deadLetterTargetArn") if isinstance(document, dict) else None
    return target if isinstance(target, str) and target else None
