"""The survey the cycle, `plan` and `inspect` share: queues, protection, depth, a leased look."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio

from retryd.aws import open_clients
from retryd.discovery.survey import (
    Look,
    Sizing,
    Survey,
    look_at_each,
    queue_arn,
    select_queues,
    size_up,
    survey_queues,
)
from retryd.models import DeadLetter, QueueRef
from retryd.settle.parking import locate_parking
from tests.conftest import SettingsFactory
from tests.faults import Fault
from tests.world import World

PARKING = "retryd-parking"


class _NoProgress:
    """A ReadProgress that records which queues were read and how many messages came."""

    def __init__(self) -> None:
        self.read: dict[str, int] = {}

    @contextmanager
    def reading(self, queue: str, expected: int | None) -> Iterator[Callable[[int], None]]:
        self.read[queue] = 0

        def advance(count: int) -> None:
            self.read[queue] += count

        yield advance


def test_the_survey_protects_every_dlq_and_the_parking_queue(
    world: World, make_settings: SettingsFactory
) -> None:
    """Survey.protected names each discovered DLQ and the parking queue, by ARN."""
    world.create_queue(PARKING)
    world.create_queue("retry-a")
    world.create_queue("retry-b")
    settings = make_settings()

    async def run() -> Survey:
        async with open_clients(settings.aws) as clients:
            parking = await locate_parking(clients.sqs, settings)
            parking_arn = queue_arn(clients.sqs, parking.queue_url)
            return await survey_queues(clients.sqs, settings, parking_arn)

    survey = anyio.run(run)
    assert [queue.name for queue in survey.dlqs] == ["retry-a", "retry-b"]
    assert survey.protected == [
        world.queue_arn("retry-a"),
        world.queue_arn("retry-b"),
        world.queue_arn(PARKING),
    ]


def test_size_up_carries_retention_and_keeps_an_unknown_depth_as_a_problem(
    world: World, make_settings: SettingsFactory
) -> None:
    """An empty queue is `empty` with its retention carried; a failed read is no exception."""
    world.create_queue("retry-empty", MessageRetentionPeriod="3600")
    world.create_queue("retry-denied")
    world.faults.add(
        Fault("sqs", "GetQueueAttributes", code="AccessDenied", status=403, contains="denied")
    )
    settings = make_settings()

    async def run() -> list[Sizing]:
        async with open_clients(settings.aws) as clients:
            return [
                await size_up(
                    clients.sqs, QueueRef(name, world.queue_url(name), world.queue_arn(name))
                )
                for name in ("retry-empty", "retry-denied")
            ]

    empty, denied = anyio.run(run)
    assert empty.empty
    assert empty.queue.retention_s == 3600
    assert empty.problem is None
    assert not denied.empty
    assert denied.depth is None
    assert denied.problem is not None
    assert "AccessDenied" in denied.problem


def test_named_queues_are_found_by_name_or_url_and_the_rest_reported_missing(
    world: World, make_settings: SettingsFactory
) -> None:
    """Names and URLs resolve as discovery resolves them; unknown names and bad URLs are missing."""
    world.create_queue("orders-dlq")
    settings = make_settings()
    names = ["orders-dlq", world.queue_url("orders-dlq"), "absent", "https://example.com/"]

    async def run() -> tuple[list[QueueRef], list[str]]:
        async with open_clients(settings.aws) as clients:
            return await select_queues(clients.sqs, settings, names)

    found, missing = anyio.run(run)
    assert [queue.arn for queue in found] == [world.queue_arn("orders-dlq")]
    assert missing == ["absent", "https://example.com/"]


def test_look_at_each_skips_an_empty_queue_and_examines_the_rest_in_order(
    world: World, make_settings: SettingsFactory
) -> None:
    """An empty DLQ is not read; a full one is examined under leases given back."""
    world.create_queue("retry-empty")
    world.create_queue("retry-full")
    sent = {world.send("retry-full", {"n": n}) for n in range(3)}
    settings = make_settings()
    progress = _NoProgress()

    async def examine(letters: list[DeadLetter]) -> set[str]:
        return {letter.message_id for letter in letters}

    async def run() -> list[Look[set[str]]]:
        async with open_clients(settings.aws) as clients:
            queues = [
                QueueRef(name, world.queue_url(name), world.queue_arn(name))
                for name in ("retry-empty", "retry-full")
            ]
            return await look_at_each(
                clients.sqs,
                queues,
                examine,
                max_messages=10,
                wait_s=0,
                concurrency=2,
                progress=progress,
            )

    empty, full = anyio.run(run)
    assert (empty.queue.name, empty.finding, empty.sampled) == ("retry-empty", None, 0)
    assert (full.finding, full.sampled, full.errors) == (sent, 3, [])
    assert progress.read == {"retry-full": 3}
    assert world.depth("retry-full") == 3
