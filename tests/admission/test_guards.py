"""Stateless guards: the ARN allowlist (field by field) and the attempts limit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retryd.admission.allowlist import Allowlist
from retryd.admission.attempts import attempts_exhausted, effective_limit
from retryd.admission.guards import Guards
from retryd.models import DeadLetter, Job, ParkReason, QueueRef, Target
from retryd.resolve.keys import hashed_key
from retryd.settings import GuardSettings

ACCOUNT = "123456789012"
OTHER_ACCOUNT = "999999999999"
LAMBDA_GLOB = f"arn:aws:lambda:*:{ACCOUNT}:function:*"
QUEUE = QueueRef(
    "retry-orders",
    f"https://sqs.eu-west-1.amazonaws.com/{ACCOUNT}/retry-orders",
    f"arn:aws:sqs:eu-west-1:{ACCOUNT}:retry-orders",
)


def job_for(arn: str, attempt: int = 0, max_attempts: int | None = None) -> Job:
    letter = DeadLetter(QUEUE, "m-1", "rh-1", "{}")
    return Job(
        letter=letter,
        target=Target.from_arn(arn),
        body="{}",
        key=hashed_key(arn, "{}"),
        attempt=attempt,
        max_attempts=max_attempts,
    )


# -- allowlist -------------------------------------------------------------------------


def test_region_wildcard_cannot_swallow_the_account() -> None:
    """A `*` in the region field matches a region, never a region plus someone else's account."""
    allowlist = Allowlist([LAMBDA_GLOB], allow_any=False)
    assert allowlist.allows(f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:x")
    assert not allowlist.allows(f"arn:aws:lambda:eu-west-1:{OTHER_ACCOUNT}:function:x")


def test_resource_cannot_smuggle_an_allowed_account() -> None:
    """An ARN whose resource repeats an allowed account is still judged by its own account field."""
    allowlist = Allowlist([LAMBDA_GLOB], allow_any=False)
    smuggled = f"arn:aws:lambda:eu-west-1:{OTHER_ACCOUNT}:function:x:{ACCOUNT}:function:y"
    assert not allowlist.allows(smuggled)


def test_service_must_match_its_own_field() -> None:
    """A Lambda ARN is not allowed by a glob for SQS in the same account."""
    allowlist = Allowlist([f"arn:aws:sqs:*:{ACCOUNT}:*"], allow_any=False)
    assert not allowlist.allows(f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:x")
    assert allowlist.allows(f"arn:aws:sqs:eu-west-1:{ACCOUNT}:orders")


def test_resource_glob_spans_qualifiers() -> None:
    """The resource field keeps its colons, so `function:*` covers a qualified function."""
    allowlist = Allowlist([LAMBDA_GLOB], allow_any=False)
    assert allowlist.allows(f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:charge:prod")


def test_globs_are_case_sensitive_with_character_classes() -> None:
    """Names match case-sensitively and `[...]` classes work per field."""
    allowlist = Allowlist([f"arn:aws:sqs:eu-west-[12]:{ACCOUNT}:orders-*"], allow_any=False)
    assert allowlist.allows(f"arn:aws:sqs:eu-west-2:{ACCOUNT}:orders-eu")
    assert not allowlist.allows(f"arn:aws:sqs:eu-west-3:{ACCOUNT}:orders-eu")
    assert not allowlist.allows(f"arn:aws:sqs:eu-west-1:{ACCOUNT}:Orders-eu")


@pytest.mark.parametrize("allow_any", [True, False])
@pytest.mark.parametrize(
    "arn", ["", "charge", "arn:aws:lambda", "arn:aws::eu-west-1:1:x", "x:a:b:c:d:e"]
)
def test_unparsable_arn_is_never_allowed(arn: str, allow_any: bool) -> None:
    """Something that is not an ARN is refused, even when any target is allowed."""
    assert not Allowlist(["arn:*:*:*:*:*"], allow_any=allow_any).allows(arn)


def test_allow_any_allows_every_valid_arn() -> None:
    """With allow_any and no globs, every well-formed ARN passes."""
    assert Allowlist([], allow_any=True).allows(f"arn:aws:sns:eu-west-1:{OTHER_ACCOUNT}:t")


def test_no_globs_and_no_allow_any_allows_nothing() -> None:
    """An empty allowlist refuses everything."""
    assert not Allowlist([], allow_any=False).allows(
        f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:x"
    )


def test_malformed_glob_is_rejected_at_construction() -> None:
    """A pattern with fewer than six fields is a configuration error, not a silent non-match."""
    with pytest.raises(ValueError, match="not an ARN glob"):
        Allowlist(["arn:aws:lambda:*"], allow_any=False)


# Field values without glob metacharacters, so a literal glob field matches only itself.
plain_field = st.text(alphabet="abc019-", min_size=1, max_size=4)
resource_field = st.text(alphabet="abc019-:/", min_size=1, max_size=6)
arn_fields = st.tuples(plain_field, plain_field, plain_field, plain_field, resource_field)


@st.composite
def glob_fields(draw: st.DrawFn, near: tuple[str, ...]) -> tuple[str, ...]:
    """A glob per field: `*`, the ARN's own value, or another literal."""
    chosen = []
    for value in near:
        options = ["*", value, draw(resource_field if ":" in value else plain_field)]
        chosen.append(draw(st.sampled_from(options)))
    return tuple(chosen)


@given(data=st.data(), arn=arn_fields)
def test_allowed_only_if_some_glob_matches_every_field(
    data: st.DataObject, arn: tuple[str, ...]
) -> None:
    """An ARN is allowed exactly when one glob's fields are each `*` or equal to the ARN's."""
    globs = data.draw(st.lists(glob_fields(arn), max_size=3))
    text = "arn:" + ":".join(arn)
    expected = any(all(g in ("*", v) for g, v in zip(glob, arn, strict=True)) for glob in globs)
    allowlist = Allowlist(["arn:" + ":".join(glob) for glob in globs], allow_any=False)
    assert allowlist.allows(text) == expected


# -- attempts --------------------------------------------------------------------------

LAMBDA_ARN = f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:charge"


def test_attempts_left_means_no_objection() -> None:
    """Below the limit the guard has nothing to say."""
    assert attempts_exhausted(job_for(LAMBDA_ARN, attempt=4), max_attempts=5) is None


def test_limit_reached_is_explained() -> None:
    """At the limit the detail gives the count and the limit."""
    detail = attempts_exhausted(job_for(LAMBDA_ARN, attempt=5), max_attempts=5)
    assert detail == "attempt 5 of at most 5 already made"


def test_envelope_can_lower_the_limit() -> None:
    """A message's own lower limit applies, and the detail says it was lowered."""
    detail = attempts_exhausted(job_for(LAMBDA_ARN, attempt=2, max_attempts=2), max_attempts=5)
    assert detail == "attempt 2 of at most 2 already made (the message lowered the limit from 5)"


def test_envelope_cannot_raise_the_limit() -> None:
    """A message asking for more attempts than configured still stops at the configured limit."""
    assert attempts_exhausted(job_for(LAMBDA_ARN, attempt=5, max_attempts=50), max_attempts=5)


@given(
    configured=st.integers(1, 1000),
    declared=st.none() | st.integers(1, 10_000),
    attempt=st.integers(0, 20_000),
)
def test_message_limit_only_ever_lowers(
    configured: int, declared: int | None, attempt: int
) -> None:
    """Whatever the message declares, it stops no later than the configured limit alone would."""
    plain = job_for(LAMBDA_ARN, attempt=attempt)
    declaring = job_for(LAMBDA_ARN, attempt=attempt, max_attempts=declared)
    assert effective_limit(declaring, configured) <= configured
    if attempts_exhausted(plain, configured) is not None:
        assert attempts_exhausted(declaring, configured) is not None
    assert (attempts_exhausted(declaring, configured) is None) == (
        attempt < min(configured, declared or configured)
    )


# -- guards in order -------------------------------------------------------------------


def test_guards_refuse_a_target_outside_the_allowlist_first() -> None:
    """A disallowed target is parked as such, even when its attempts are also used up."""
    guards = Guards(GuardSettings(max_attempts=3, allow_targets=[LAMBDA_GLOB]))
    outsider = f"arn:aws:lambda:eu-west-1:{OTHER_ACCOUNT}:function:x"
    refusal = guards.check(job_for(outsider, attempt=9))
    assert refusal is not None
    assert refusal.reason is ParkReason.TARGET_NOT_ALLOWED
    assert outsider in refusal.detail


def test_guards_park_exhausted_jobs() -> None:
    """An allowed target whose attempts are used up is parked as attempts-exhausted."""
    guards = Guards(GuardSettings(max_attempts=3, allow_targets=[LAMBDA_GLOB]))
    refusal = guards.check(job_for(LAMBDA_ARN, attempt=3))
    assert refusal is not None
    assert refusal.reason is ParkReason.ATTEMPTS_EXHAUSTED
    assert refusal.detail == "attempt 3 of at most 3 already made"


def test_guards_pass_an_allowed_job_with_attempts_left() -> None:
    """An allowed job below the limit goes on."""
    guards = Guards(GuardSettings(max_attempts=3, allow_targets=[LAMBDA_GLOB]))
    assert guards.check(job_for(LAMBDA_ARN, attempt=2)) is None


# -- loop guard ------------------------------------------------------------------------

SQS_GLOB = f"arn:aws:sqs:*:{ACCOUNT}:*"


def _loop_guards() -> Guards:
    guards = Guards(GuardSettings(max_attempts=3, allow_targets=[SQS_GLOB]))
    guards.protect_queues([QUEUE.arn, f"arn:aws:sqs:eu-west-1:{ACCOUNT}:retryd-parking"])
    return guards


@pytest.mark.parametrize(
    "arn",
    [
        QUEUE.arn,
        # Another partition's spelling of the same region still reaches the same queue.
        f"arn:aws-cn:sqs:eu-west-1:{ACCOUNT}:retry-orders",
        # No region names no other queue: SQS would look the name up where retryd sends.
        f"arn:aws:sqs::{ACCOUNT}:retry-orders",
        f"arn:aws:sqs::{ACCOUNT}:retryd-parking",
        # No account names no other account: SQS would look the name up in the caller's.
        "arn:aws:sqs:eu-west-1::retry-orders",
        "arn:aws:sqs:::retryd-parking",
    ],
)
def test_the_loop_guard_refuses_a_drained_dlq_or_the_parking_queue(arn: str) -> None:
    """A target that is the DLQ itself (any partition, or no region) or parking is refused."""
    refusal = _loop_guards().check(job_for(arn))
    assert refusal is not None
    assert refusal.reason is ParkReason.TARGET_NOT_ALLOWED
    assert "would loop" in refusal.detail


@pytest.mark.parametrize(
    "arn",
    [
        f"arn:aws:sqs:us-east-1:{ACCOUNT}:retry-orders",
        f"arn:aws:sqs:eu-central-1:{ACCOUNT}:retryd-parking",
    ],
)
def test_the_loop_guard_lets_a_same_named_queue_in_another_region_through(arn: str) -> None:
    """A queue sharing a drained DLQ's (or parking's) name in another region is another queue."""
    assert _loop_guards().check(job_for(arn)) is None


@given(
    region=st.sampled_from(["eu-west-1", "us-east-1", "ap-south-1", ""]),
    account=st.sampled_from([ACCOUNT, OTHER_ACCOUNT, ""]),
    name=st.sampled_from(["retry-orders", "retryd-parking", "orders"]),
)
def test_the_loop_guard_refuses_exactly_the_protected_queues(
    region: str, account: str, name: str
) -> None:
    """Refused exactly when the name matches a protected queue and the account and region
    are its own or none."""
    guards = Guards(GuardSettings(max_attempts=3, allow_any_target=True))
    guards.protect_queues([QUEUE.arn, f"arn:aws:sqs:eu-west-1:{ACCOUNT}:retryd-parking"])
    refusal = guards.check(job_for(f"arn:aws:sqs:{region}:{account}:{name}"))
    protected = account in (ACCOUNT, "") and name != "orders" and region in ("eu-west-1", "")
    assert (refusal is not None) == protected
