"""The SQS resubmitter: SendMessageBatch within the queue's own limits, against the moto server."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from retryd import stamps
from retryd.aws import open_clients
from retryd.classify import MALFORMED_RESPONSE
from retryd.models import (
    ErrorClass,
    Job,
    MessageAttribute,
    Refusal,
    SendError,
    Target,
)
from retryd.settings import Settings
from retryd.targets.base import Delivery
from retryd.targets.sqs_queue import (
    MAX_PAYLOAD_BYTES,
    SqsQueueTarget,
    dedup_id,
    map_batch_response,
)
from tests.conftest import SettingsFactory
from tests.faults import Fault
from tests.targets.helpers import (
    DERIVED_KEY,
    LONE_SURROGATE,
    MALFORMED_REPLIES,
    calls,
    expected_dedup_id,
    strings,
)
from tests.targets.helpers import make_message_job as make_job
from tests.world import ACCOUNT, REGION, World


def submit_sqs(settings: Settings, target: Target, *batches: Sequence[Job]) -> list[list[Delivery]]:
    """Run SqsQueueTarget.submit once per batch, on one target instance (one URL cache)."""

    async def main() -> list[list[Delivery]]:
        async with open_clients(settings.aws) as clients:
            resubmitter = SqsQueueTarget(clients.sqs)
            return [await resubmitter.submit(target, jobs) for jobs in batches]

    return anyio.run(main)


def test_map_batch_response_sorts_success_failure_and_silence() -> None:
    """Failed entries map back by Id; sender faults are permanent; unreported ones transient."""
    response = {
        "Successful": [{"Id": "0", "MessageId": "a"}],
        "Failed": [
            {"Id": "1", "Code": "InvalidParameterValue", "SenderFault": True, "Message": "bad"},
            {"Id": "2", "Code": "InternalError", "SenderFault": False},
        ],
    }
    outcome = map_batch_response(response, [0, 1, 2, 3])
    assert outcome[0] is None
    assert outcome[1] == SendError(ErrorClass.PERMANENT, "InvalidParameterValue", "bad")
    assert outcome[2] is not None
    assert outcome[2].error_class is ErrorClass.TRANSIENT
    assert outcome[3] is not None
    assert outcome[3].error_class is ErrorClass.TRANSIENT


def test_sqs_delivers_to_standard_queue_with_stamps(
    world: World, make_settings: SettingsFactory
) -> None:
    """The body arrives unchanged, the user's attribute is kept and retryd's stamps are added."""
    world.create_queue("orders")
    target = Target.from_arn(world.queue_arn("orders"))
    the_job = make_job(
        target.arn, attempt=1, attributes={"tenant": MessageAttribute.string("acme")}
    )
    [deliveries] = submit_sqs(make_settings(), target, [the_job])
    assert [delivery.error for delivery in deliveries] == [None]
    assert deliveries[0].stamps_dropped == 0
    [message] = world.drain("orders")
    assert message["Body"] == '{"orderId": "42"}'
    assert strings(message) == {
        "tenant": "acme",
        stamps.ATTEMPT: "2",
        stamps.KEY: "order-42",
        stamps.FIRST_FAILED_AT: "2024-05-01T12:30:00+00:00",
        stamps.SOURCE_QUEUE: "retry-orders",
    }
    assert message["MessageAttributes"][stamps.ATTEMPT]["DataType"] == "Number"


def test_sqs_fifo_keeps_group_and_deduplicates_a_repeat(
    world: World, make_settings: SettingsFactory
) -> None:
    """A FIFO copy keeps the DLQ message's group; the same job sent twice lands once."""
    world.create_queue("orders.fifo")
    target = Target.from_arn(world.queue_arn("orders.fifo"))
    the_job = make_job(target.arn, group_id="customer-7")
    first, second = submit_sqs(make_settings(), target, [the_job], [the_job])
    assert first[0].accepted
    assert second[0].accepted
    messages = world.drain("orders.fifo")
    assert len(messages) == 1
    system = messages[0]["Attributes"]
    assert system["MessageGroupId"] == "customer-7"
    assert system["MessageDeduplicationId"] == expected_dedup_id("order-42", "m-1", 1)


def test_sqs_fifo_equal_bodies_of_distinct_dead_letters_both_arrive(
    world: World, make_settings: SettingsFactory
) -> None:
    """Two dead letters with one body (so one derived key) are two messages, not a duplicate."""
    world.create_queue("orders.fifo")
    target = Target.from_arn(world.queue_arn("orders.fifo"))
    jobs = [
        make_job(
            target.arn,
            body='{"cmd": "increment"}',
            key=DERIVED_KEY,
            group_id="g",
            message_id=message_id,
        )
        for message_id in ("dlq-message-1", "dlq-message-2")
    ]
    [deliveries] = submit_sqs(make_settings(), target, jobs)
    assert all(delivery.accepted for delivery in deliveries)
    messages = world.drain("orders.fifo")
    assert [message["Body"] for message in messages] == ['{"cmd": "increment"}'] * 2
    assert {message["Attributes"]["MessageDeduplicationId"] for message in messages} == {
        expected_dedup_id(DERIVED_KEY, "dlq-message-1", 1),
        expected_dedup_id(DERIVED_KEY, "dlq-message-2", 1),
    }


@given(
    key=st.text(),
    message_ids=st.lists(
        st.text(alphabet="0123456789abcdef-", max_size=36), min_size=2, max_size=2, unique=True
    ),
    attempt=st.integers(0, 10**6),
)
def test_dedup_id_is_stable_per_dead_letter_and_distinct_between_them(
    key: str, message_ids: list[str], attempt: int
) -> None:
    """The id repeats for one dead letter's attempt and differs across letters and attempts."""
    target_arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:orders.fifo"
    first, second = (
        make_job(target_arn, key=key, attempt=attempt, message_id=message_id)
        for message_id in message_ids
    )
    assert dedup_id(first) == dedup_id(first)
    assert len(dedup_id(first)) <= 128
    assert dedup_id(first) != dedup_id(second)
    assert dedup_id(first) != dedup_id(
        make_job(target_arn, key=key, attempt=attempt + 1, message_id=message_ids[0])
    )


def test_sqs_fifo_without_group_uses_the_job_key(
    world: World, make_settings: SettingsFactory
) -> None:
    """A dead letter from a standard DLQ has no group: the job key becomes the group."""
    world.create_queue("orders.fifo")
    target = Target.from_arn(world.queue_arn("orders.fifo"))
    [deliveries] = submit_sqs(make_settings(), target, [make_job(target.arn, key="k-9")])
    assert deliveries[0].accepted
    [message] = world.drain("orders.fifo")
    assert message["Attributes"]["MessageGroupId"] == "k-9"


def test_sqs_ten_user_attributes_arrive_and_stamps_are_dropped(
    world: World, make_settings: SettingsFactory
) -> None:
    """A message already carrying 10 attributes arrives with all 10 and no retryd stamp."""
    world.create_queue("orders")
    target = Target.from_arn(world.queue_arn("orders"))
    user = {f"user-{index}": MessageAttribute.string(f"v{index}") for index in range(10)}
    [deliveries] = submit_sqs(make_settings(), target, [make_job(target.arn, attributes=user)])
    assert deliveries[0].accepted
    assert deliveries[0].stamps_dropped == 4
    [message] = world.drain("orders")
    assert strings(message) == {name: value.string_value for name, value in user.items()}


def test_sqs_twenty_five_jobs_take_three_batch_calls(
    world: World, make_settings: SettingsFactory
) -> None:
    """25 small jobs go out in 3 SendMessageBatch calls, each delivery matched to its job."""
    world.create_queue("orders")
    target = Target.from_arn(world.queue_arn("orders"))
    jobs = [make_job(target.arn, body=f"body-{index}", key=f"k-{index}") for index in range(25)]
    world.record()
    [deliveries] = submit_sqs(make_settings(), target, jobs)
    assert calls(world, "SendMessageBatch") == 3
    assert [delivery.job for delivery in deliveries] == jobs
    assert all(delivery.accepted for delivery in deliveries)
    assert sorted(message["Body"] for message in world.drain("orders")) == sorted(
        job.body for job in jobs
    )


def test_sqs_batches_by_bytes_and_refuses_an_oversized_message(
    world: World, make_settings: SettingsFactory
) -> None:
    """100 KB bodies go two to a call; a body over 256 KiB is refused before sending."""
    world.create_queue("orders", MaximumMessageSize=str(MAX_PAYLOAD_BYTES))
    target = Target.from_arn(world.queue_arn("orders"))
    big = [make_job(target.arn, body="x" * 100_000, key=f"k-{index}") for index in range(4)]
    huge = make_job(target.arn, body="y" * MAX_PAYLOAD_BYTES, key="huge")
    world.record()
    [deliveries] = submit_sqs(make_settings(), target, [*big[:2], huge, *big[2:]])
    assert calls(world, "SendMessageBatch") == 2
    refused = deliveries[2].error
    assert refused is not None
    assert refused.error_class is ErrorClass.PERMANENT
    assert refused.code == Refusal.PAYLOAD_TOO_LARGE
    assert refused.refusal is Refusal.PAYLOAD_TOO_LARGE
    assert [delivery.accepted for delivery in deliveries] == [True, True, False, True, True]
    assert world.depth("orders") == 4


def test_sqs_missing_queue_fails_every_job_permanently(
    world: World, make_settings: SettingsFactory
) -> None:
    """A target queue that does not exist is a permanent error for each job."""
    target = Target.from_arn(world.queue_arn("gone"))
    jobs = [make_job(target.arn, key="a"), make_job(target.arn, key="b")]
    [deliveries] = submit_sqs(make_settings(), target, jobs)
    assert len(deliveries) == 2
    for delivery in deliveries:
        assert delivery.error is not None
        assert delivery.error.error_class is ErrorClass.PERMANENT


def test_sqs_throttled_batch_is_transient(world: World, make_settings: SettingsFactory) -> None:
    """A throttled SendMessageBatch fails each of its jobs as transient, and raises nothing."""
    world.create_queue("orders")
    target = Target.from_arn(world.queue_arn("orders"))
    fault = world.faults.add(
        Fault("sqs", "SendMessageBatch", code="AWS.SimpleQueueService.Throttled")
    )
    jobs = [make_job(target.arn, key=f"k-{index}") for index in range(3)]
    [deliveries] = submit_sqs(make_settings(), target, jobs)
    for delivery in deliveries:
        assert delivery.error is not None
        assert delivery.error.error_class is ErrorClass.TRANSIENT
        assert delivery.error.code == "AWS.SimpleQueueService.Throttled"
    assert world.depth("orders") == 0
    # Throttling is about the queue, not an entry: no entry is tried again on its own.
    assert fault.hits == 1


def test_sqs_permanent_whole_batch_failure_is_narrowed_to_its_entry(
    world: World, make_settings: SettingsFactory
) -> None:
    """A batch refused as a whole is resent entry by entry: only the poisoned entry fails."""
    world.create_queue("orders")
    target = Target.from_arn(world.queue_arn("orders"))
    fault = world.faults.add(
        Fault(
            "sqs",
            "SendMessageBatch",
            code="InvalidMessageContents",
            contains="poison-marker",
            times=2,
        )
    )
    bodies = ["body-0", "body-1 poison-marker", "body-2"]
    jobs = [make_job(target.arn, body=body, key=f"k-{n}") for n, body in enumerate(bodies)]
    [deliveries] = submit_sqs(make_settings(), target, jobs)
    assert [delivery.accepted for delivery in deliveries] == [True, False, True]
    error = deliveries[1].error
    assert error is not None
    assert error.error_class is ErrorClass.PERMANENT
    assert error.code == "InvalidMessageContents"
    assert fault.hits == 2
    assert sorted(message["Body"] for message in world.drain("orders")) == ["body-0", "body-2"]


def test_sqs_unpreparable_job_fails_alone(world: World, make_settings: SettingsFactory) -> None:
    """A key no message can carry is a permanent invalid payload naming the error; others go."""
    world.create_queue("orders")
    target = Target.from_arn(world.queue_arn("orders"))
    jobs = [make_job(target.arn, key=LONE_SURROGATE), make_job(target.arn, key="k-ok")]
    [deliveries] = submit_sqs(make_settings(), target, jobs)
    error = deliveries[0].error
    assert error is not None
    assert error.error_class is ErrorClass.PERMANENT
    assert error.code == Refusal.INVALID_PAYLOAD
    assert "UnicodeEncodeError" in error.message
    assert deliveries[1].accepted
    assert world.depth("orders") == 1


def test_sqs_queue_url_is_looked_up_once_per_arn(
    world: World, make_settings: SettingsFactory
) -> None:
    """Two submits to the same queue cost one GetQueueUrl."""
    world.create_queue("orders")
    target = Target.from_arn(world.queue_arn("orders"))
    world.record()
    submit_sqs(make_settings(), target, [make_job(target.arn)], [make_job(target.arn, key="b")])
    assert calls(world, "GetQueueUrl") == 1
    assert world.depth("orders") == 2


def test_sqs_batches_arriving_together_share_one_look_up(
    world: World, make_settings: SettingsFactory
) -> None:
    """Eight batches for one queue submitted side by side, before any look-up has answered:
    one GetQueueUrl and one GetQueueAttributes (its size limit) between them, and every
    message arrives. Each batch made its own look-ups before."""
    world.create_queue("orders")
    target = Target.from_arn(world.queue_arn("orders"))
    world.record()

    async def main() -> None:
        async with open_clients(make_settings().aws) as clients:
            resubmitter = SqsQueueTarget(clients.sqs)
            async with anyio.create_task_group() as group:
                for index in range(8):
                    group.start_soon(
                        resubmitter.submit, target, [make_job(target.arn, key=f"k{index}")]
                    )

    anyio.run(main)
    assert calls(world, "GetQueueUrl") == 1
    assert calls(world, "GetQueueAttributes") == 1
    assert world.depth("orders") == 8


def test_sqs_batches_waiting_on_a_failing_look_up_share_its_failure(
    world: World, make_settings: SettingsFactory
) -> None:
    """A slow GetQueueUrl that fails (half a second, then an error), with eight batches for the
    queue side by side: one call, and each batch fails with its answer. A first version made
    the batches wait in turn, each making its own slow call (found by a review: eight calls,
    four seconds)."""
    world.create_queue("orders")
    target = Target.from_arn(world.queue_arn("orders"))
    slow = world.faults.add(Fault("sqs", "GetQueueUrl", "AccessDenied", 403, delay_s=0.5))
    results: list[list[Delivery]] = []

    async def main() -> None:
        async with open_clients(make_settings().aws) as clients:
            resubmitter = SqsQueueTarget(clients.sqs)

            async def one(index: int) -> None:
                results.append(
                    await resubmitter.submit(target, [make_job(target.arn, key=f"k{index}")])
                )

            async with anyio.create_task_group() as group:
                for index in range(8):
                    group.start_soon(one, index)

    anyio.run(main)
    assert slow.hits == 1
    assert len(results) == 8
    for [delivery] in results:
        assert delivery.error is not None
        assert delivery.error.code == "AccessDenied"


@pytest.mark.parametrize("reply", MALFORMED_REPLIES.values(), ids=MALFORMED_REPLIES.keys())
def test_sqs_malformed_queue_url_answer_is_transient_for_every_job(
    world: World, make_settings: SettingsFactory, reply: str
) -> None:
    """A GetQueueUrl 200 without a QueueUrl fails each job as transient; submit never raises."""
    world.create_queue("orders")
    target = Target.from_arn(world.queue_arn("orders"))
    world.faults.add(Fault("sqs", "GetQueueUrl", answer=reply, times=1))
    jobs = [make_job(target.arn, key="a"), make_job(target.arn, key="b")]
    first, second = submit_sqs(make_settings(), target, jobs, jobs)
    for delivery in first:
        assert delivery.error is not None
        assert delivery.error.error_class is ErrorClass.TRANSIENT
        assert delivery.error.code == MALFORMED_RESPONSE
    # Nothing wrong was cached: the next submit looks the URL up again and delivers.
    assert [delivery.accepted for delivery in second] == [True, True]
    assert world.depth("orders") == 2


@pytest.mark.parametrize(
    "reply",
    ['{"Successful": [{"MessageId": "no-id"}]}', '{"Successful": [{"Id": "7"}]}', "[1, 2"],
    ids=["entry-without-id", "id-never-sent", "truncated"],
)
def test_sqs_malformed_batch_answer_is_one_transient_verdict(
    world: World, make_settings: SettingsFactory, reply: str
) -> None:
    """A SendMessageBatch 200 that names no sent entry is transient for all, with no resends."""
    world.create_queue("orders")
    target = Target.from_arn(world.queue_arn("orders"))
    fault = world.faults.add(Fault("sqs", "SendMessageBatch", answer=reply))
    jobs = [make_job(target.arn, key=f"k-{index}") for index in range(3)]
    [deliveries] = submit_sqs(make_settings(), target, jobs)
    for delivery in deliveries:
        assert delivery.error is not None
        assert delivery.error.error_class is ErrorClass.TRANSIENT
    # The entries may have arrived: resending them one by one would only add copies.
    assert fault.hits == 1


KIB = 1024


# Over the long-standing 256 KiB, well within the 1 MiB a queue may take.
BODY_300_KIB = "z" * (300 * KIB)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_sqs_300_kib_goes_to_a_1_mib_queue_and_is_refused_by_a_256_kib_one(
    world: World, make_settings: SettingsFactory
) -> None:
    """The limit is each queue's own MaximumMessageSize, not a constant."""
    world.create_queue("big", MaximumMessageSize=str(1024 * KIB))
    world.create_queue("small", MaximumMessageSize=str(256 * KIB))
    big, small = (Target.from_arn(world.queue_arn(name)) for name in ("big", "small"))
    world.record()

    [to_big] = submit_sqs(make_settings(), big, [make_job(big.arn, body=BODY_300_KIB)])
    [to_small] = submit_sqs(make_settings(), small, [make_job(small.arn, body=BODY_300_KIB)])

    assert to_big[0].accepted
    [message] = world.drain("big")
    assert message["Body"] == BODY_300_KIB
    refused = to_small[0].error
    assert refused is not None
    assert refused.error_class is ErrorClass.PERMANENT
    assert refused.refusal is Refusal.PAYLOAD_TOO_LARGE
    assert str(256 * KIB) in refused.message
    # Refused before sending: only the message for the big queue made a call.
    assert calls(world, "SendMessageBatch") == 1
    assert world.depth("small") == 0


def test_sqs_limit_is_read_once_and_again_after_its_ttl(
    world: World, make_settings: SettingsFactory
) -> None:
    """One GetQueueAttributes serves every submit until the TTL ends; then a change is seen."""
    url = world.create_queue("orders", MaximumMessageSize=str(256 * KIB))
    target = Target.from_arn(world.queue_arn("orders"))
    clock = FakeClock()
    world.record()

    async def main() -> list[bool]:
        async with open_clients(make_settings().aws) as clients:
            sqs_target = SqsQueueTarget(clients.sqs, limit_ttl_s=600, clock_s=clock)
            accepted = []
            for step in range(3):
                if step == 1:
                    world.client("sqs").set_queue_attributes(
                        QueueUrl=url, Attributes={"MaximumMessageSize": str(1024 * KIB)}
                    )
                    clock.now_s += 599
                if step == 2:
                    clock.now_s += 2
                job = make_job(target.arn, body=BODY_300_KIB, key=f"k-{step}")
                [delivery] = await sqs_target.submit(target, [job])
                accepted.append(delivery.accepted)
            return accepted

    # Raised to 1 MiB after the first read: seen only once the TTL has run out.
    assert anyio.run(main) == [False, False, True]
    assert calls(world, "GetQueueAttributes") == 2
    assert calls(world, "SendMessageBatch") == 1


def test_sqs_unreadable_limit_keeps_big_messages_waiting_not_parked(
    world: World, make_settings: SettingsFactory
) -> None:
    """A throttled limit read assumes 256 KiB: small jobs go, a big one waits, is not refused."""
    world.create_queue("orders", MaximumMessageSize=str(1024 * KIB))
    target = Target.from_arn(world.queue_arn("orders"))
    world.faults.add(Fault("sqs", "GetQueueAttributes", code="Throttling", times=1))
    clock = FakeClock()
    jobs = [make_job(target.arn, key="small"), make_job(target.arn, body=BODY_300_KIB, key="big")]

    async def main() -> tuple[list[Delivery], list[Delivery]]:
        async with open_clients(make_settings().aws) as clients:
            sqs_target = SqsQueueTarget(clients.sqs, clock_s=clock)
            first = await sqs_target.submit(target, jobs)
            # The failed read is retried after a minute, not held for the whole TTL.
            clock.now_s += 61
            return first, await sqs_target.submit(target, jobs[1:])

    first, second = anyio.run(main)
    assert first[0].accepted
    error = first[1].error
    assert error is not None
    assert error.error_class is ErrorClass.TRANSIENT
    assert error.refusal is None
    assert "could not be read" in error.message
    assert second[0].accepted
    assert sorted(len(m["Body"]) for m in world.drain("orders")) == [len(jobs[0].body), 300 * KIB]


def test_sqs_forbidden_limit_read_assumes_256_kib_and_says_so(
    world: World, make_settings: SettingsFactory
) -> None:
    """Without permission to read the limit, over 256 KiB is payload-too-large, naming why."""
    world.create_queue("orders", MaximumMessageSize=str(1024 * KIB))
    target = Target.from_arn(world.queue_arn("orders"))
    world.faults.add(Fault("sqs", "GetQueueAttributes", code="AccessDenied"))

    [deliveries] = submit_sqs(make_settings(), target, [make_job(target.arn, body=BODY_300_KIB)])

    error = deliveries[0].error
    assert error is not None
    assert error.refusal is Refusal.PAYLOAD_TOO_LARGE
    assert "AccessDenied" in error.message
    assert str(MAX_PAYLOAD_BYTES) in error.message
