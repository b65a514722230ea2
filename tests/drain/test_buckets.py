"""The S3 listing marker and the S3 sources a place drains: pure rules, no AWS."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from retryd.discovery.feeds import FeedMap
from retryd.drain.buckets import Walk
from retryd.drain.setup import s3_sources
from retryd.metrics import Metrics
from retryd.models import DeadLetter, SourceKind
from retryd.s3_objects import Listed, bucket_and_prefix, source_ref
from retryd.stamps import SOURCE_OBJECT, stamp_for_parking
from tests.conftest import quiet_settings

NOW_S = 1_000_000.0
LAG_S = 300.0

objects = st.lists(st.tuples(st.booleans(), st.booleans()), max_size=30)


@given(objects)
def test_the_marker_never_passes_an_object_left_behind_or_too_young(
    shapes: list[tuple[bool, bool]],
) -> None:
    """The marker ends on the last of the leading run of settled, old objects, and no further."""
    walk = Walk("start", NOW_S - LAG_S)
    listed = [
        Listed(f"k{n:03d}", NOW_S - (LAG_S * 2 if old else 1), 1)
        for n, (_, old) in enumerate(shapes)
    ]
    for item, (settled, _) in zip(listed, shapes, strict=True):
        walk.passed(item, settled)
    run = 0
    while run < len(shapes) and all(shapes[run]):
        run += 1
    assert walk.after == (listed[run - 1].key if run else "start")
    assert walk.blocked == (run < len(shapes))


def test_an_s3_source_names_its_bucket_and_prefix() -> None:
    """A source's name, url and ARN give back its bucket and prefix; its kind is S3."""
    source = source_ref("failures", "aws/lambda/async/charge/")
    assert bucket_and_prefix(source) == ("failures", "aws/lambda/async/charge/")
    assert source.name == "failures/aws/lambda/async/charge/"
    assert source.arn == "arn:aws:s3:::failures/aws/lambda/async/charge/"
    assert source.kind is SourceKind.S3
    assert not source.is_fifo


def test_sources_come_from_settings_and_from_destinations_once_each() -> None:
    """Named sources, plus one per function whose destination is a bucket (when enabled)."""
    settings = quiet_settings(
        discovery={
            "s3_sources": ["s3://failures/aws/lambda/async/charge/"],
            "s3_from_destinations": True,
        }
    )
    feeds = FeedMap(
        s3_destinations=(
            ("arn:aws:s3:::failures", "arn:aws:lambda:us-east-1:123456789012:function:charge"),
            ("arn:aws:s3:::other", "arn:aws:lambda:us-east-1:123456789012:function:bill:live"),
        )
    )
    names = [source.name for source in s3_sources(settings, feeds)]
    assert names == ["failures/aws/lambda/async/charge/", "other/aws/lambda/async/bill/"]
    quiet = quiet_settings(discovery={"s3_sources": ["failures/x/"]})
    assert [s.name for s in s3_sources(quiet, feeds)] == ["failures/x/"]


def test_a_bucket_name_too_short_is_refused() -> None:
    """An s3_sources entry whose bucket cannot exist is a settings error."""
    with pytest.raises(ValidationError, match="bucket/prefix"):
        quiet_settings(discovery={"s3_sources": ["ab/prefix"]})


def test_s3_sources_alone_are_something_to_find() -> None:
    """A configuration with only S3 sources is valid (no queue prefix needed)."""
    settings = quiet_settings(discovery={"queue_prefixes": [], "s3_sources": ["failures/"]})
    assert settings.discovery.s3_sources == ["failures/"]


def test_a_parked_object_names_its_bucket_and_key() -> None:
    """The parking stamps of a letter read from S3 carry s3://bucket/key."""
    source = source_ref("failures", "p/")
    letter = DeadLetter(source, "p/obj-1", "p/obj-1", "{}", {"S3Bucket": "failures"})
    stamps = stamp_for_parking(letter, "unresolvable", "why", 0, 1024)
    assert stamps[SOURCE_OBJECT].string_value == "s3://failures/p/obj-1"


def test_decisions_on_s3_objects_are_counted_under_source_s3() -> None:
    """retryd_messages_total tells an S3 source's messages from an SQS DLQ's by `source`."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.record_decision(source_ref("failures", "p/"), "resubmitted", "", "lambda", 2)
    labels = {
        "queue": "failures/p/",
        "account": "none",
        "region": "none",
        "source": "s3",
        "outcome": "resubmitted",
        "reason": "none",
        "target_type": "lambda",
    }
    assert registry.get_sample_value("retryd_messages_total", labels) == 2
