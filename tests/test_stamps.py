"""retryd's attribute stamps: what is added on resubmit and on parking, within 10 attributes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retryd import stamps
from retryd.models import Job, MessageAttribute, Target
from tests.native_helpers import letter, queue

FIRST_FAILED = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
SOURCE = queue("retry-a")


def job(
    attributes: dict[str, MessageAttribute] | None = None,
    attempt: int = 2,
    first_failed_at: datetime | None = FIRST_FAILED,
) -> Job:
    return Job(
        letter=letter("{}", attributes, on=SOURCE),
        target=Target.from_arn("arn:aws:sqs:us-east-1:123456789012:orders"),
        body="{}",
        key="order-42",
        attempt=attempt,
        first_failed_at=first_failed_at,
        forward_attributes=attributes or {},
    )


def user_attributes(count: int) -> dict[str, MessageAttribute]:
    return {f"user-{index}": MessageAttribute.string(f"v{index}") for index in range(count)}


names = st.text("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789-_", min_size=1, max_size=12)
attribute_values = st.one_of(
    st.text(min_size=1, max_size=20).map(MessageAttribute.string),
    st.integers(-(10**9), 10**9).map(MessageAttribute.number),
    st.binary(min_size=1, max_size=20).map(
        lambda raw: MessageAttribute("Binary", binary_value=raw)
    ),
)


# -- resubmit ----------------------------------------------------------------------------


def test_resubmit_keeps_originals_and_adds_four_stamps() -> None:
    """A job with two attributes goes out with both, plus attempt, key, first-failed-at, source."""
    attributes, dropped = stamps.stamp_for_resubmit(job(user_attributes(2)))
    assert dropped == 0
    assert attributes["user-0"] == MessageAttribute.string("v0")
    assert attributes["user-1"] == MessageAttribute.string("v1")
    assert attributes[stamps.ATTEMPT] == MessageAttribute("Number", string_value="3")
    assert attributes[stamps.KEY] == MessageAttribute.string("order-42")
    assert attributes[stamps.FIRST_FAILED_AT] == MessageAttribute.string(
        "2024-05-01T12:30:00+00:00"
    )
    assert attributes[stamps.SOURCE_QUEUE] == MessageAttribute.string("retry-a")
    assert len(attributes) == 6


def test_resubmit_replaces_stale_retryd_attributes() -> None:
    """Earlier retryd.* attributes are not forwarded: this attempt's stamps replace them."""
    stale = {
        stamps.ATTEMPT: MessageAttribute.number(1),
        stamps.REASON: MessageAttribute.string("attempts-exhausted"),
        "user": MessageAttribute.string("kept"),
    }
    attributes, dropped = stamps.stamp_for_resubmit(job(stale, attempt=4))
    assert dropped == 0
    assert attributes[stamps.ATTEMPT].string_value == "5"
    assert stamps.REASON not in attributes
    assert attributes["user"].string_value == "kept"


def test_resubmit_with_ten_user_attributes_drops_every_stamp() -> None:
    """Ten user attributes use every slot: all ten go out, retryd's four stamps are dropped."""
    attributes, dropped = stamps.stamp_for_resubmit(job(user_attributes(10)))
    assert attributes == user_attributes(10)
    assert dropped == 4


def test_resubmit_keeps_stamps_in_priority_order_when_slots_are_short() -> None:
    """With two slots left, the attempt and the key are kept; first-failed-at and source dropped."""
    attributes, dropped = stamps.stamp_for_resubmit(job(user_attributes(8)))
    assert dropped == 2
    assert stamps.ATTEMPT in attributes
    assert stamps.KEY in attributes
    assert stamps.FIRST_FAILED_AT not in attributes
    assert stamps.SOURCE_QUEUE not in attributes


def test_resubmit_without_first_failure_time_sends_three_stamps() -> None:
    """No first-failed-at is known: it is neither sent nor counted as dropped."""
    attributes, dropped = stamps.stamp_for_resubmit(job(first_failed_at=None))
    assert dropped == 0
    assert set(attributes) == {stamps.ATTEMPT, stamps.KEY, stamps.SOURCE_QUEUE}


@given(st.dictionaries(names, attribute_values, max_size=14), st.booleans())
def test_resubmit_never_drops_a_user_attribute(
    originals: dict[str, MessageAttribute], with_first_failure: bool
) -> None:
    """Every user attribute goes out unchanged; stamps fill what is left, in priority order."""
    the_job = job(originals, first_failed_at=FIRST_FAILED if with_first_failure else None)
    attributes, dropped = stamps.stamp_for_resubmit(the_job)
    for name, value in originals.items():
        assert attributes[name] == value
    added = [name for name in attributes if name not in originals]
    wanted = [
        name
        for name in stamps.RESUBMIT_STAMP_PRIORITY
        if with_first_failure or name != stamps.FIRST_FAILED_AT
    ]
    assert added == wanted[: len(added)]
    assert len(added) + dropped == len(wanted)
    assert len(attributes) <= max(stamps.MAX_ATTRIBUTES, len(originals))


# -- parking -----------------------------------------------------------------------------


def test_parking_adds_reason_detail_source_and_attempt() -> None:
    """A parked copy carries its originals plus the four parking stamps."""
    attributes = stamps.stamp_for_parking(
        letter("{}", user_attributes(3), on=SOURCE),
        "target-not-allowed",
        "arn not allowed",
        2,
        1024,
    )
    assert {name: attributes[name] for name in user_attributes(3)} == user_attributes(3)
    assert attributes[stamps.REASON].string_value == "target-not-allowed"
    assert attributes[stamps.DETAIL].string_value == "arn not allowed"
    assert attributes[stamps.SOURCE_QUEUE].string_value == "retry-a"
    assert attributes[stamps.ATTEMPT] == MessageAttribute("Number", string_value="2")
    assert stamps.OVERFLOW not in attributes
    assert len(attributes) == 7


def test_parking_ten_originals_packs_the_rest_into_overflow() -> None:
    """Ten originals: five stay, five go into the overflow JSON, and nothing is lost."""
    originals = user_attributes(10)
    attributes = stamps.stamp_for_parking(
        letter("{}", originals, on=SOURCE), "unresolvable", "no resolver", 0, 1024
    )
    assert len(attributes) == stamps.MAX_ATTRIBUTES
    overflow = attributes[stamps.OVERFLOW]
    assert overflow.data_type == "String"
    assert overflow.string_value is not None
    packed = stamps.unpack_overflow(overflow.string_value)
    assert len(packed) == 5
    direct = {name: value for name, value in attributes.items() if name.startswith("user-")}
    assert {**direct, **packed} == originals


def test_parking_an_already_parked_message_keeps_its_old_overflow() -> None:
    """An original overflow attribute is nested inside the new one, not overwritten."""
    originals = user_attributes(9)
    originals[stamps.OVERFLOW] = MessageAttribute.string('{"old":{"DataType":"String"}}')
    attributes = stamps.stamp_for_parking(
        letter("{}", originals, on=SOURCE), "unresolvable", "again", 1, 1024
    )
    value = attributes[stamps.OVERFLOW].string_value
    assert value is not None
    packed = stamps.unpack_overflow(value)
    assert packed[stamps.OVERFLOW] == originals[stamps.OVERFLOW]


def test_parking_without_detail_leaves_it_off() -> None:
    """An empty detail is not sent: SQS refuses a String attribute with no value."""
    attributes = stamps.stamp_for_parking(letter(on=SOURCE), "unresolvable", "", 0, 1024)
    assert stamps.DETAIL not in attributes
    assert stamps.REASON in attributes


def test_parking_detail_is_cut_without_splitting_a_character() -> None:
    """A detail over the limit is cut on a character boundary, within the byte budget."""
    detail = "a" * 63 + "\u00e9" * 10  # the 2-byte e-acute straddles byte 64
    attributes = stamps.stamp_for_parking(letter(on=SOURCE), "unresolvable", detail, 0, 64)
    assert attributes[stamps.DETAIL].string_value == "a" * 63


def test_clean_text_replaces_characters_sqs_refuses() -> None:
    """Control characters and lone surrogates become U+FFFD; tabs and newlines stay."""
    assert stamps.clean_text("a\x00b\tc\nd\ud800", 100) == "a\ufffdb\tc\nd\ufffd"


@given(st.text(max_size=300), st.integers(0, 200))
def test_clean_text_fits_its_budget_and_is_a_prefix(text: str, max_bytes: int) -> None:
    """The cleaned text is valid UTF-8 within max_bytes, and a prefix of the whole cleaned text."""
    whole = stamps.clean_text(text, 10_000)
    cut = stamps.clean_text(text, max_bytes)
    assert len(cut.encode("utf-8")) <= max_bytes
    assert whole.startswith(cut)


@given(
    st.dictionaries(
        st.one_of(names, st.sampled_from([stamps.OVERFLOW, stamps.KEY, stamps.FIRST_FAILED_AT])),
        attribute_values,
        max_size=10,
    ),
    st.text(max_size=50),
)
def test_parking_loses_no_original_attribute(
    originals: dict[str, MessageAttribute], detail: str
) -> None:
    """Every original is on the copy or in its overflow JSON, and the copy has at most 10."""
    attributes = stamps.stamp_for_parking(
        letter("{}", originals, on=SOURCE), "unresolvable", detail, 3, 256
    )
    assert len(attributes) <= stamps.MAX_ATTRIBUTES
    stamp_count = 4 if detail else 3
    packed: dict[str, MessageAttribute] = {}
    if len(originals) + stamp_count > stamps.MAX_ATTRIBUTES:
        overflow = attributes[stamps.OVERFLOW].string_value
        assert overflow is not None
        packed = stamps.unpack_overflow(overflow)
        direct = {name: value for name, value in attributes.items() if name in originals}
        direct.pop(stamps.OVERFLOW, None)
        assert {**direct, **packed} == originals
    else:
        assert {name: attributes[name] for name in originals} == originals
    assert attributes[stamps.REASON].string_value == "unresolvable"
    assert attributes[stamps.ATTEMPT].string_value == "3"


def test_stale_parking_stamps_are_superseded() -> None:
    """An original retryd.reason from an earlier parking is replaced by the new verdict."""
    originals = {stamps.REASON: MessageAttribute.string("old")}
    attributes = stamps.stamp_for_parking(
        letter("{}", originals, on=SOURCE), "too-old", "d", 1, 1024
    )
    assert attributes[stamps.REASON].string_value == "too-old"


# -- packing and sizes -------------------------------------------------------------------


@given(st.dictionaries(names, attribute_values, max_size=10))
def test_overflow_round_trips(attributes: dict[str, MessageAttribute]) -> None:
    """pack_overflow then unpack_overflow gives back the same attributes, binary included."""
    packed = stamps.pack_overflow(attributes)
    assert packed.isascii()
    assert stamps.unpack_overflow(packed) == attributes


@pytest.mark.parametrize("text", ["[]", '{"a": 1}', '{"a": {"StringValue": "x"}}'])
def test_unpack_overflow_refuses_foreign_json(text: str) -> None:
    """JSON that pack_overflow did not write is a ValueError, not a guess."""
    with pytest.raises(ValueError, match=r"overflow|packed"):
        stamps.unpack_overflow(text)


def test_message_size_counts_body_and_attribute_names_types_values() -> None:
    """Size is UTF-8 body bytes plus, per attribute, name + data type + value bytes."""
    attributes = {"ab": MessageAttribute.string("\u00e9"), "c": MessageAttribute.number(10)}
    # body 4 bytes; "ab"+"String"+2 bytes = 10; "c"+"Number"+"10" = 9
    assert stamps.message_size_bytes("h\u00e9y", attributes) == 4 + 10 + 9


def test_a_parked_copy_names_the_sources_tries_after_its_detail() -> None:
    """source_attempts 185: the detail ends by saying the source's tries were not retryd's."""
    attributes = stamps.stamp_for_parking(
        letter(on=SOURCE),
        "attempts-exhausted",
        "attempt 5 of at most 5",
        5,
        1024,
        source_attempts=185,
    )
    assert attributes[stamps.DETAIL].string_value == (
        "attempt 5 of at most 5 "
        "(the source tried 185 time(s) before its DLQ; not counted by retryd)"
    )


def test_no_source_count_leaves_the_detail_as_it_was() -> None:
    """source_attempts 0 (the source said nothing) adds no note."""
    attributes = stamps.stamp_for_parking(
        letter(on=SOURCE), "too-old", "old", 1, 1024, source_attempts=0
    )
    assert attributes[stamps.DETAIL].string_value == "old"


@given(
    detail=st.text(max_size=3000),
    source_attempts=st.integers(min_value=0, max_value=2**63 - 1),
    max_bytes=st.integers(min_value=64, max_value=4096),
)
def test_the_source_note_survives_any_cut_and_the_limit_holds(
    detail: str, source_attempts: int, max_bytes: int
) -> None:
    """Within max_bytes always; the note is kept whole whenever it takes at most half of them."""
    shown = stamps.parking_detail(detail, source_attempts, max_bytes)
    assert len(shown.encode("utf-8")) <= max_bytes
    note = stamps.source_attempts_note(source_attempts)
    if note and len(note) + 1 <= max_bytes // 2:
        assert shown.endswith(note)
    if not note:
        assert shown == stamps.clean_text(detail, max_bytes)
