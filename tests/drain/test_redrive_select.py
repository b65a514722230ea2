"""Redrive selectors and the parked copy seen as if in its source DLQ: pure logic."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retryd import stamps
from retryd.commands.timeparse import parse_duration_s, parse_time_s
from retryd.drain.redrive import Spec
from retryd.drain.redrive_select import Selector, SelectorError, as_if_in_source
from retryd.drain.redrive_spec import source_name
from retryd.models import DeadLetter, Job, MessageAttribute, QueueRef, Target
from retryd.s3_objects import source_ref
from tests.native_helpers import letter

CHARGE = "arn:aws:lambda:us-east-1:123456789012:function:charge"
PARKING = QueueRef("parking", "https://q/parking", "arn:aws:sqs:us-east-1:123456789012:parking")
SOURCE = QueueRef("retry-a", "https://q/retry-a", "arn:aws:sqs:us-east-1:123456789012:retry-a")


def job(received: DeadLetter) -> Job:
    return Job(received, Target.from_arn(CHARGE), received.body, "k")


@given(st.text(max_size=200))
def test_the_empty_selector_selects_everything(body: str) -> None:
    """No selector given: every message, whatever its body, is selected."""
    received = letter(body, on=PARKING)
    assert Selector().selects(received, job(received))


@pytest.mark.parametrize(
    ("body", "selected"),
    [
        ('{"payload": {"kind": "x"}}', True),
        ('{"payload": {"kind": "y"}}', False),
        ('{"payload": {"kind": 1}}', False),
        ("not json", False),
        ("[]", False),
    ],
)
def test_where_is_jmespath_over_the_json_body(body: str, selected: bool) -> None:
    """--where holds only where the body is JSON and the expression is true of it."""
    received = letter(body, on=PARKING)
    assert Selector(where="payload.kind == 'x'").selects(received, job(received)) is selected


def test_a_where_that_fails_on_one_shape_does_not_select_it() -> None:
    """A comparison JMESPath cannot make on this message's values: not selected, no error."""
    received = letter('{"n": "text"}', on=PARKING)
    assert not Selector(where="n > `2`").selects(received, job(received))


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ({"where": "payload.["}, "is not a JMESPath expression"),
        ({"targets": ("charge",)}, "--target"),
    ],
)
def test_bad_selectors_are_refused_naming_the_option(
    selector: dict[str, object], message: str
) -> None:
    """A broken expression or glob is an input error naming what is wrong."""
    with pytest.raises(SelectorError, match=message):
        Selector(**selector)  # type: ignore[arg-type]


def test_reason_matches_the_parking_stamp() -> None:
    """--reason selects parked copies by `retryd.reason`; a copy with another reason is not."""
    rejected = letter("{}", {stamps.REASON: "target-rejected"}, on=PARKING)
    other = letter("{}", {stamps.REASON: "unresolvable"}, on=PARKING)
    selector = Selector(reasons=("target-rejected",))
    assert selector.selects(rejected, job(rejected))
    assert not selector.selects(other, job(other))


def test_a_parked_copy_is_seen_in_its_source_with_its_original_attributes() -> None:
    """Source queue from the stamp, overflowed originals unpacked, parking's verdict dropped."""
    packed = stamps.pack_overflow({"tenant": MessageAttribute.string("acme")})
    parked = letter(
        json.dumps({"a": 1}),
        {
            stamps.SOURCE_QUEUE: "retry-a",
            stamps.REASON: "target-rejected",
            stamps.DETAIL: "boom",
            stamps.OVERFLOW: packed,
            "kept": "yes",
        },
        on=PARKING,
        message_id="m1",
        receipt_handle="rh",
    )
    seen = as_if_in_source(parked, {"retry-a": SOURCE})
    assert seen.queue == SOURCE
    assert (seen.message_id, seen.receipt_handle, seen.body) == ("m1", "rh", parked.body)
    assert seen.attribute_string("tenant") == "acme"
    assert seen.attribute_string("kept") == "yes"
    for gone in (stamps.REASON, stamps.DETAIL, stamps.OVERFLOW):
        assert gone not in seen.message_attributes


def test_times_and_durations() -> None:
    """Durations with units; times as ISO 8601 (UTC by default) or a duration ago."""
    assert parse_duration_s("90s") == 90
    assert parse_duration_s("2h") == 7_200
    assert parse_time_s("1h", now_s=10_000.0) == 6_400.0
    assert parse_time_s("1970-01-01T01:00:00", now_s=0.0) == 3_600.0
    assert parse_time_s("1970-01-01T01:00:00+01:00", now_s=0.0) == 0.0
    for bad in ("soon", "0s", "-5m"):
        with pytest.raises(ValueError, match=bad):
            parse_time_s(bad, now_s=0.0) if bad == "soon" else parse_duration_s(bad)


def test_a_jobs_transform_is_stored_with_it_for_resume() -> None:
    """The spec a job is stored with keeps its `--transform`, so `--resume` runs it too."""
    spec = Spec(sources=("retry-a",), transform="tests.hook_transforms:add_flag")
    assert Spec.from_json(spec.to_json()).transform == "tests.hook_transforms:add_flag"
    assert Spec.from_json(Spec(sources=("retry-a",)).to_json()).transform is None


@pytest.mark.parametrize(
    "spelling", ["bucket/aws/lambda/", "s3://bucket/aws/lambda/", "arn:aws:s3:::bucket/aws/lambda/"]
)
def test_an_s3_source_is_named_by_its_bucket_and_prefix_however_it_is_spelled(
    spelling: str,
) -> None:
    """`--from` takes an S3 source as bucket/prefix, its s3:// URL or its ARN: one name."""
    assert source_name(spelling) == "bucket/aws/lambda/"
    assert source_name(spelling) == source_ref("bucket", "aws/lambda/").name
