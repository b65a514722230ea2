"""What a source tried before its DLQ is shown, but never spends retryd's guards.max_attempts."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from retryd.admission.backoff import Backoff
from retryd.admission.guards import Guards
from retryd.admission.verdicts import Defer, Go, Park, Verdict
from retryd.ledger import MemoryLedger
from retryd.ledger.base import Claim
from retryd.models import DeadLetter, Job, MessageAttribute, QueueRef, Target
from retryd.resolve.eventbridge_dlq import EventBridgeDlqResolver
from retryd.resolve.keys import hashed_key
from retryd.resolve.lambda_destination import LambdaDestinationResolver
from retryd.resolve.static_route import StaticRouteResolver
from retryd.settings import BackoffSettings, GuardSettings
from tests.native_helpers import letter, load_letter, with_attributes

NOW_S = 1_750_000_000.0
QUEUE = QueueRef(
    "retry-events",
    "https://sqs.us-east-1.amazonaws.com/123456789012/retry-events",
    "arn:aws:sqs:us-east-1:123456789012:retry-events",
)
CHARGE = Target.from_arn("arn:aws:lambda:us-east-1:123456789012:function:charge")
RULE_LETTER = load_letter("eventbridge_rule_dlq")
# Up to int64's range, like RETRY_ATTEMPTS itself; EventBridge's default is 185.
source_counts = st.integers(min_value=1, max_value=2**63 - 1)


def job(attempt: int, source_attempts: int, message_limit: int | None) -> Job:
    letter_ = DeadLetter(
        QUEUE, "m-1", "rh-1", "{}", {"SentTimestamp": str(int((NOW_S - 60) * 1000))}
    )
    return Job(
        letter_,
        CHARGE,
        "{}",
        hashed_key(CHARGE.arn, "{}"),
        attempt=attempt,
        max_attempts=message_limit,
        source_attempts=source_attempts,
    )


async def verdict_for(item: Job, max_attempts: int, ledger_attempts: int) -> Verdict:
    """Guards.assess's one verdict on `item` after `ledger_attempts` committed resubmissions."""
    ledger = MemoryLedger(claim_s=300, ttl_s=86_400, owner="me", clock=lambda: NOW_S)
    for attempt in range(1, ledger_attempts + 1):
        claim = Claim(item.key, f"m-earlier-{attempt}", attempt, None)
        await ledger.begin([claim])
        await ledger.commit([claim], NOW_S - 30)
    guards = Guards(
        GuardSettings(allow_any_target=True, max_attempts=max_attempts),
        backoff=Backoff(BackoffSettings(base_s=1, max_s=10)),
        ledger=ledger,
        clock_s=lambda: NOW_S,
    )
    (verdict,) = await guards.assess([item], dry_run=True)
    return verdict


def outcome(verdict: Verdict) -> tuple[Any, ...]:
    """Everything a verdict decides, without the job it carries."""
    if isinstance(verdict, Park):
        return ("park", verdict.reason, verdict.detail, verdict.attempt)
    if isinstance(verdict, Defer):
        return ("defer", verdict.reason, verdict.delay_s, verdict.detail, verdict.attempt)
    if isinstance(verdict, Go):
        return ("go", verdict.attempt)
    return (type(verdict).__name__,)


@settings(max_examples=150, deadline=None)
@given(
    attempt=st.integers(min_value=0, max_value=8),
    ledger_attempts=st.integers(min_value=0, max_value=8),
    max_attempts=st.integers(min_value=1, max_value=8),
    message_limit=st.none() | st.integers(min_value=1, max_value=8),
    source_attempts=source_counts,
)
def test_the_source_count_never_changes_a_verdict(
    attempt: int,
    ledger_attempts: int,
    max_attempts: int,
    message_limit: int | None,
    source_attempts: int,
) -> None:
    """Go, park or defer, as which attempt and why: the same whatever the source tried."""

    async def both() -> tuple[Verdict, Verdict]:
        counted = job(attempt, source_attempts, message_limit)
        without = replace(counted, source_attempts=0)
        return (
            await verdict_for(counted, max_attempts, ledger_attempts),
            await verdict_for(without, max_attempts, ledger_attempts),
        )

    with_source, without_source = anyio.run(both)
    assert outcome(with_source) == outcome(without_source)


@given(max_attempts=st.integers(min_value=1, max_value=1000), source_attempts=source_counts)
def test_a_fresh_message_goes_as_attempt_one_whatever_the_source_tried(
    max_attempts: int, source_attempts: int
) -> None:
    """No stamp, no ledger record: retryd's first resubmission, for any max_attempts >= 1."""
    verdict = anyio.run(verdict_for, job(0, source_attempts, None), max_attempts, 0)
    assert outcome(verdict) == ("go", 1)


@given(retries=st.integers(min_value=0, max_value=10**18 - 1))
def test_retry_attempts_changes_nothing_but_the_source_count(retries: int) -> None:
    """Two EventBridge DLQ messages differing only in RETRY_ATTEMPTS resolve to the same job."""
    resolver = EventBridgeDlqResolver(StaticRouteResolver([]))
    base = resolver.resolve(with_attributes(RULE_LETTER, RETRY_ATTEMPTS="0"))
    resolved = resolver.resolve(with_attributes(RULE_LETTER, RETRY_ATTEMPTS=str(retries)))
    assert isinstance(base, Job)
    assert isinstance(resolved, Job)
    assert resolved.source_attempts == retries
    # The letters differ in that one attribute; everything decided from them must not.
    assert replace(resolved, source_attempts=0, letter=base.letter) == base


@given(count=st.integers(min_value=1, max_value=10**6), stamp=st.none() | st.integers(0, 50))
def test_invoke_count_changes_nothing_but_the_source_count(count: int, stamp: int | None) -> None:
    """A destination record's approximateInvokeCount is its source count, never its attempt."""
    record: dict[str, Any] = {
        "requestContext": {
            "functionArn": CHARGE.arn,
            "condition": "RetriesExhausted",
            "approximateInvokeCount": count,
        },
        "requestPayload": {"orderId": "42"},
    }
    stamps = {} if stamp is None else {"retryd.attempt": MessageAttribute.number(stamp)}
    resolved = LambdaDestinationResolver().resolve(letter(record, stamps))
    assert isinstance(resolved, Job)
    assert (resolved.attempt, resolved.source_attempts) == (stamp or 0, count)
