"""The parking queue: locating it, and copying dead letters into it with their verdict."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import pytest

from retryd import classify, stamps
from retryd.aws import open_clients
from retryd.classify import MalformedResponseError
from retryd.errors import ParkingQueueMissingError
from retryd.models import DeadLetter, ErrorClass, MessageAttribute, QueueRef, Refusal, SendError
from retryd.settings import Settings
from retryd.settle.parking import Parking, ParkRequest
from tests.faults import Fault
from tests.world import ACCOUNT, REGION, World

SettingsFactory = Callable[..., Settings]
DETAIL_MAX_BYTES = 1024


def make_letter(
    body: str = '{"orderId": "42"}',
    attributes: dict[str, MessageAttribute] | None = None,
    message_id: str = "m-1",
    queue: str = "retry-orders",
) -> DeadLetter:
    """A dead letter as received from DLQ `queue`."""
    return DeadLetter(
        queue=QueueRef(
            queue, f"http://localhost/{ACCOUNT}/{queue}", f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}"
        ),
        message_id=message_id,
        receipt_handle=f"receipt-{message_id}",
        body=body,
        message_attributes=attributes or {},
    )


def request(letter: DeadLetter, reason: str = "unresolvable", attempt: int = 2) -> ParkRequest:
    return ParkRequest(letter, reason, f"no resolver for {letter.message_id}", attempt)


def park(settings: Settings, queue: str, items: Sequence[ParkRequest]) -> list[SendError | None]:
    async def main() -> list[SendError | None]:
        async with open_clients(settings.aws) as clients:
            parking = await Parking.locate(clients.sqs, queue, DETAIL_MAX_BYTES)
            return await parking.park(items)

    return anyio.run(main)


def locate(settings: Settings, queue: str) -> Parking:
    async def main() -> Parking:
        async with open_clients(settings.aws) as clients:
            return await Parking.locate(clients.sqs, queue, DETAIL_MAX_BYTES)

    return anyio.run(main)


def strings(message: dict[str, Any]) -> dict[str, str]:
    return {
        name: value.get("StringValue", "")
        for name, value in message.get("MessageAttributes", {}).items()
    }


def test_locate_by_name_and_by_url(world: World, make_settings: SettingsFactory) -> None:
    """A parking queue is found by its name or its URL, and a FIFO one is recognised."""
    url = world.create_queue("retryd-parking")
    fifo_url = world.create_queue("retryd-parking.fifo")
    assert locate(make_settings(), "retryd-parking").queue_url == url
    assert locate(make_settings(), url).queue_url == url
    assert not locate(make_settings(), url).is_fifo
    assert locate(make_settings(), "retryd-parking.fifo").is_fifo
    assert locate(make_settings(), fifo_url).queue_url == fifo_url


@pytest.mark.parametrize("by_url", [False, True])
def test_locate_missing_queue_raises(
    world: World, make_settings: SettingsFactory, by_url: bool
) -> None:
    """A parking queue that does not exist stops start-up with ParkingQueueMissingError."""
    queue = f"{world.url}/{ACCOUNT}/no-such-parking" if by_url else "no-such-parking"
    with pytest.raises(ParkingQueueMissingError) as raised:
        locate(make_settings(), queue)
    assert raised.value.queue == queue


def test_park_writes_body_and_verdict(world: World, make_settings: SettingsFactory) -> None:
    """The copy has the original body and attributes plus reason, detail, source and attempt."""
    world.create_queue("retryd-parking")
    letter = make_letter(attributes={"tenant": MessageAttribute.string("acme")})
    results = park(make_settings(), "retryd-parking", [request(letter, "target-not-allowed")])
    assert results == [None]
    [message] = world.drain("retryd-parking")
    assert message["Body"] == '{"orderId": "42"}'
    assert strings(message) == {
        "tenant": "acme",
        stamps.REASON: "target-not-allowed",
        stamps.DETAIL: "no resolver for m-1",
        stamps.SOURCE_QUEUE: "retry-orders",
        stamps.ATTEMPT: "2",
    }


def test_park_packs_ten_original_attributes_into_overflow(
    world: World, make_settings: SettingsFactory
) -> None:
    """With 10 originals the copy has 10 attributes and every original is recoverable."""
    world.create_queue("retryd-parking")
    originals = {f"user-{index}": MessageAttribute.string(f"v{index}") for index in range(9)}
    originals["blob"] = MessageAttribute("Binary", binary_value=b"\x00\xffraw")
    results = park(make_settings(), "retryd-parking", [request(make_letter(attributes=originals))])
    assert results == [None]
    [message] = world.drain("retryd-parking")
    received = {
        name: MessageAttribute.from_wire(value)
        for name, value in message["MessageAttributes"].items()
    }
    assert len(received) == stamps.MAX_ATTRIBUTES
    overflow = received.pop(stamps.OVERFLOW).string_value
    assert overflow is not None
    recovered = {name: value for name, value in received.items() if name in originals}
    recovered.update(stamps.unpack_overflow(overflow))
    assert recovered == originals
    assert received[stamps.REASON].string_value == "unresolvable"


def test_park_many_returns_one_result_per_item_in_order(
    world: World, make_settings: SettingsFactory
) -> None:
    """Twelve letters are parked in order, each with its own result."""
    world.create_queue("retryd-parking")
    letters = [make_letter(body=f"b-{index}", message_id=f"m-{index}") for index in range(12)]
    results = park(make_settings(), "retryd-parking", [request(letter) for letter in letters])
    assert results == [None] * 12
    assert sorted(message["Body"] for message in world.drain("retryd-parking")) == sorted(
        letter.body for letter in letters
    )


def test_park_into_fifo_queue_groups_by_source_and_deduplicates(
    world: World, make_settings: SettingsFactory
) -> None:
    """A FIFO parking queue groups by source queue; the same letter parked twice lands once."""
    world.create_queue("retryd-parking.fifo")
    letter = make_letter(message_id="m-77")
    settings = make_settings()
    assert park(settings, "retryd-parking.fifo", [request(letter)]) == [None]
    assert park(settings, "retryd-parking.fifo", [request(letter)]) == [None]
    [message] = world.drain("retryd-parking.fifo")
    assert message["Attributes"]["MessageGroupId"] == "retry-orders"
    assert message["Attributes"]["MessageDeduplicationId"] == hashlib.sha256(b"m-77").hexdigest()


def test_park_throttled_returns_transient_errors(
    world: World, make_settings: SettingsFactory
) -> None:
    """A throttled SendMessageBatch is a transient result per item, not an exception."""
    world.create_queue("retryd-parking")
    world.faults.add(Fault("sqs", "SendMessageBatch", code="AWS.SimpleQueueService.Throttled"))
    letters = [make_letter(message_id="m-1"), make_letter(message_id="m-2")]
    results = park(make_settings(), "retryd-parking", [request(letter) for letter in letters])
    assert len(results) == 2
    for result in results:
        assert result is not None
        assert result.error_class is ErrorClass.TRANSIENT
    assert world.depth("retryd-parking") == 0


def test_park_into_a_queue_deleted_after_locate_is_permanent(
    world: World, make_settings: SettingsFactory
) -> None:
    """If the parking queue vanishes mid-run, parking fails permanently instead of raising."""
    url = world.create_queue("retryd-parking")

    async def main() -> list[SendError | None]:
        async with open_clients(make_settings().aws) as clients:
            parking = await Parking.locate(clients.sqs, "retryd-parking", DETAIL_MAX_BYTES)
            world.client("sqs").delete_queue(QueueUrl=url)
            return await parking.park([request(make_letter())])

    [result] = anyio.run(main)
    assert result is not None
    assert result.error_class is ErrorClass.PERMANENT


def test_locate_with_a_malformed_answer_raises_a_classified_error(
    world: World, make_settings: SettingsFactory
) -> None:
    """A GetQueueUrl 200 without a QueueUrl is a MalformedResponseError, classified transient."""
    world.create_queue("retryd-parking")
    world.faults.add(Fault("sqs", "GetQueueUrl", answer="{}", times=1))
    with pytest.raises(MalformedResponseError) as raised:
        locate(make_settings(), "retryd-parking")
    error = classify.from_exception(raised.value)
    assert error.error_class is ErrorClass.TRANSIENT
    assert error.code == classify.MALFORMED_RESPONSE
    assert "QueueUrl" in error.message


@pytest.mark.parametrize("by_url", [False, True])
def test_locate_reads_the_parking_queues_own_limit(
    world: World, make_settings: SettingsFactory, by_url: bool
) -> None:
    """The parking queue's MaximumMessageSize is read when it is located, by name or URL."""
    url = world.create_queue("retryd-parking", MaximumMessageSize="300000")
    assert locate(make_settings(), url if by_url else "retryd-parking").max_message_bytes == 300_000


def test_a_copy_over_the_parking_queues_limit_is_not_attempted(
    world: World, make_settings: SettingsFactory
) -> None:
    """A copy the parking queue cannot take fails alone and permanently, with no call made."""
    world.create_queue("retryd-parking", MaximumMessageSize=str(256 * 1024))
    letters = [
        make_letter(message_id="m-1"),
        make_letter(body="x" * 300_000, message_id="m-2"),
    ]
    world.record()
    results = park(make_settings(), "retryd-parking", [request(letter) for letter in letters])
    assert results[0] is None
    refused = results[1]
    assert refused is not None
    assert refused.error_class is ErrorClass.PERMANENT
    assert refused.refusal is Refusal.PAYLOAD_TOO_LARGE
    assert "parked copy" in refused.message
    sends = [
        entry
        for entry in world.server.recording()
        if entry.get("headers", {}).get("X-Amz-Target", "").endswith(".SendMessageBatch")
    ]
    assert len(sends) == 1
    [message] = world.drain("retryd-parking")
    assert message["Body"] == letters[0].body


def test_a_copy_within_a_1_mib_parking_queue_is_parked(
    world: World, make_settings: SettingsFactory
) -> None:
    """A 300 KB letter is parked whole when the parking queue takes 1 MiB."""
    world.create_queue("retryd-parking", MaximumMessageSize=str(1024 * 1024))
    letter = make_letter(body="x" * 300_000)
    assert park(make_settings(), "retryd-parking", [request(letter)]) == [None]
    [message] = world.drain("retryd-parking")
    assert message["Body"] == letter.body
