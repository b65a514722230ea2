"""Which place a target is sent from, and which regions outside the places a target may be in."""

from __future__ import annotations

import pytest
from botocore.session import Session as BotocoreSession
from hypothesis import given
from hypothesis import strategies as st

from retryd.places import Place, PlaceError, Places, target_regions
from retryd.settings import GuardSettings

HOME = "111111111111"
MEMBER = "222222222222"
STRANGER = "444444444444"
BOTOCORE = BotocoreSession()
AWS_REGIONS = frozenset(BOTOCORE.get_available_regions("sqs", "aws"))


def places(extra: frozenset[str] = frozenset()) -> Places:
    listed = (Place(HOME, "us-east-1"), Place(MEMBER, "us-east-1"))
    return Places(listed[0], listed, True, None, {}, None, None, _target_regions=extra)


def test_literal_regions_are_taken_as_written() -> None:
    """A pattern's literal region is a target region, even one botocore does not know yet."""
    guards = GuardSettings(
        allow_targets=["arn:aws:sqs:eu-west-1:*:*", "arn:aws:lambda:xx-new-1:*:function:*"]
    )
    assert target_regions(guards, BOTOCORE) == {"eu-west-1", "xx-new-1"}


def test_a_wildcard_region_is_the_regions_botocore_knows_in_its_partition() -> None:
    """`*` in the region stands for the partition's known regions, and no other partition's."""
    regions = target_regions(GuardSettings(allow_targets=["arn:aws:sqs:*:*:*"]), BOTOCORE)
    assert regions == AWS_REGIONS
    assert "cn-north-1" not in regions
    china = target_regions(GuardSettings(allow_targets=["arn:aws-cn:sqs:*:*:*"]), BOTOCORE)
    assert "cn-north-1" in china
    assert not china & AWS_REGIONS


def test_a_partial_wildcard_keeps_to_its_glob() -> None:
    """`eu-*` covers Europe's regions only."""
    regions = target_regions(GuardSettings(allow_targets=["arn:aws:sns:eu-*:*:*"]), BOTOCORE)
    assert "eu-west-1" in regions
    assert all(region.startswith("eu-") for region in regions)


def test_allow_any_target_covers_every_known_partition() -> None:
    """With allow_any_target, every region botocore knows in any partition."""
    regions = target_regions(GuardSettings(allow_any_target=True), BOTOCORE)
    assert regions >= AWS_REGIONS
    assert "cn-north-1" in regions
    assert "us-gov-west-1" in regions


@pytest.mark.parametrize(
    ("target", "queue", "expected"),
    [
        # The target's own place when it is listed.
        (
            f"arn:aws:sqs:us-east-1:{MEMBER}:dest",
            f"arn:aws:sqs:us-east-1:{HOME}:dlq",
            (MEMBER, "us-east-1"),
        ),
        # A listed account in another region: its credentials, the target's region.
        (
            f"arn:aws:sqs:eu-west-1:{MEMBER}:dest",
            f"arn:aws:sqs:us-east-1:{HOME}:dlq",
            (MEMBER, "eu-west-1"),
        ),
        (
            f"arn:aws:sqs:eu-west-1:{HOME}:dest",
            f"arn:aws:sqs:us-east-1:{MEMBER}:dlq",
            (HOME, "eu-west-1"),
        ),
        # An account retryd has no credentials for: the DLQ's account's, in the target's region.
        (
            f"arn:aws:sqs:eu-west-1:{STRANGER}:dest",
            f"arn:aws:sqs:us-east-1:{MEMBER}:dlq",
            (MEMBER, "eu-west-1"),
        ),
        (
            f"arn:aws:sqs:us-east-1:{STRANGER}:dest",
            f"arn:aws:sqs:us-east-1:{MEMBER}:dlq",
            (MEMBER, "us-east-1"),
        ),
        # No region name: left to the DLQ's place (whose resubmitter refuses it).
        (f"arn:aws:sqs::{MEMBER}:dest", f"arn:aws:sqs:us-east-1:{HOME}:dlq", (HOME, "us-east-1")),
    ],
)
def test_a_target_is_sent_from_its_own_region(
    target: str, queue: str, expected: tuple[str, str]
) -> None:
    """The sending place is in the target's region, with credentials retryd holds."""
    assert places(frozenset({"eu-west-1"})).sending_place(target, queue) == Place(*expected)


def test_a_region_outside_the_target_regions_is_a_place_error_naming_it() -> None:
    """No clients for a region neither listed nor allowed: a PlaceError saying so (CONFIG)."""
    with pytest.raises(PlaceError) as raised:
        places().sending_place(
            f"arn:aws:sqs:eu-west-1:{MEMBER}:dest", f"arn:aws:sqs:us-east-1:{HOME}:q"
        )
    assert raised.value.place == Place(MEMBER, "eu-west-1")
    assert raised.value.error_class == "config"
    assert "eu-west-1" in raised.value.why
    assert "allow_targets" in raised.value.why


@given(
    region=st.sampled_from(["us-east-1", "eu-west-1", "ap-south-1", "us-nowhere-7"]),
    account=st.sampled_from([HOME, MEMBER, STRANGER]),
)
def test_clients_are_only_ever_made_in_a_listed_or_allowed_region(
    region: str, account: str
) -> None:
    """Whatever region a target names, the place sent from is listed or in the target regions."""
    subject = places(frozenset({"eu-west-1"}))
    try:
        place = subject.sending_place(
            f"arn:aws:sqs:{region}:{account}:dest", f"arn:aws:sqs:us-east-1:{HOME}:q"
        )
    except PlaceError:
        assert region not in ("us-east-1", "eu-west-1")
        return
    assert place.region in ("us-east-1", "eu-west-1")
    assert place.account_id in (HOME, MEMBER)


def test_an_unlisted_home_account_is_sent_to_with_the_dlqs_role() -> None:
    """Home not listed (not drained): its targets are sent with the DLQ account's role, as
    `retryd iam-policy` grants a glob matching no listed account to every member role."""
    member = Place(MEMBER, "us-east-1")
    subject = Places(
        Place(HOME, "us-east-1"),
        (member,),
        True,
        None,
        {},
        None,
        None,
        _target_regions=frozenset({"eu-west-1"}),
    )
    target = f"arn:aws:sqs:eu-west-1:{HOME}:dest"
    assert subject.sending_place(target, f"arn:aws:sqs:us-east-1:{MEMBER}:q") == Place(
        MEMBER, "eu-west-1"
    )


def test_an_unlisted_home_accounts_own_region_is_sent_to_with_the_dlqs_role() -> None:
    """Home not listed: a target in the home region itself goes with the DLQ account's role
    too, never with the home chain, which `retryd iam-policy` grants no target."""
    member = Place(MEMBER, "us-east-1")
    subject = Places(Place(HOME, "us-east-1"), (member,), True, None, {}, None, None)
    target = f"arn:aws:sqs:us-east-1:{HOME}:dest"
    assert subject.sending_place(target, f"arn:aws:sqs:us-east-1:{MEMBER}:q") == member


def test_a_sovereign_cloud_target_is_sent_from_its_own_region() -> None:
    """A target in eusc-de-east-1 gets clients there, never the DLQ's (whose SQS
    resubmitter would refuse it as WrongRegion, a permanent error that parks it)."""
    target = f"arn:aws-eusc:sqs:eusc-de-east-1:{MEMBER}:dest"

    sending = places(frozenset({"eusc-de-east-1"})).sending_place(
        target, f"arn:aws:sqs:us-east-1:{HOME}:dlq"
    )

    assert sending == Place(MEMBER, "eusc-de-east-1")


@pytest.mark.parametrize(
    "source", ["bucket/prefix/", "s3://bucket/prefix/", "arn:aws:s3:::bucket/prefix/"]
)
def test_an_s3_source_names_no_place_so_a_redrive_of_it_runs_at_home(source: str) -> None:
    """An S3 source's ARN names no account or region: it does not pick a place (an SQS
    ARN beside it still does)."""
    member_queue = f"arn:aws:sqs:us-east-1:{MEMBER}:retry-orders"
    assert places().place_for_sources([source]) == Place(HOME, "us-east-1")
    assert places().place_for_sources([source, member_queue]) == Place(MEMBER, "us-east-1")
