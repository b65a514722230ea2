"""Deleting and hiding received dead letters in their DLQ, on the moto server."""

from __future__ import annotations

import anyio
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from retryd.admission.verdicts import Defer, DeferReason
from retryd.aws import open_clients
from retryd.metrics import Metrics
from retryd.models import DeadLetter, Job, Target, queue_ref_from_url
from retryd.settle.dlq import DELETE_BATCH_MAX, DeadLetterQueues
from tests.conftest import SettingsFactory
from tests.faults import Fault
from tests.world import ACCOUNT, REGION, World


def receive_all(world: World, settings_factory: SettingsFactory, count: int) -> list[DeadLetter]:
    """Put `count` messages on retry-q and receive them all (hidden for a minute)."""
    url = world.create_queue("retry-q")
    for n in range(count):
        world.send("retry-q", f"m{n}")
    queue = queue_ref_from_url(url, REGION)
    sqs = world.client("sqs")
    letters: list[DeadLetter] = []
    while len(letters) < count:
        raw = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60, WaitTimeSeconds=0
        ).get("Messages", [])
        letters.extend(DeadLetter.from_wire(queue, message) for message in raw)
    return letters


def run_dlqs(settings_factory: SettingsFactory, call: str, *args: object) -> CollectorRegistry:
    registry = CollectorRegistry()
    metrics = Metrics(registry)

    async def main() -> None:
        async with open_clients(settings_factory().aws) as clients:
            await getattr(DeadLetterQueues(clients.sqs, metrics), call)(*args)

    anyio.run(main)
    return registry


def test_more_letters_than_one_delete_call_takes_are_all_deleted(
    world: World, make_settings: SettingsFactory
) -> None:
    """Twelve letters: deleted in calls of at most ten, and the queue is empty."""
    letters = receive_all(world, make_settings, DELETE_BATCH_MAX + 2)
    run_dlqs(make_settings, "delete", letters[0].queue, letters)
    assert world.depth("retry-q") == 0


def test_a_failed_delete_leaves_the_letters_and_counts_them(
    world: World, make_settings: SettingsFactory
) -> None:
    """DeleteMessageBatch fails: nothing is deleted and each letter is counted a delete failure."""
    letters = receive_all(world, make_settings, 3)
    world.faults.add(Fault("sqs", "DeleteMessageBatch", code="InternalError", status=500))
    registry = run_dlqs(make_settings, "delete", letters[0].queue, letters)
    assert world.depth("retry-q") == 3
    labels = {"queue": "retry-q", "account": ACCOUNT, "region": REGION}
    failures = registry.get_sample_value("retryd_delete_failures_total", labels)
    assert failures == 3


def test_only_letters_with_a_delay_are_hidden(world: World, make_settings: SettingsFactory) -> None:
    """A deferral with no delay leaves its letter's lease alone; one with a delay past SQS's
    twelve-hour limit is hidden for the longest SQS allows, without an error."""
    letters = receive_all(world, make_settings, 2)
    target = Target.from_arn(world.queue_arn("dest"))
    defers = [
        Defer(Job(letter, target, "{}", "k"), DeferReason.BACKOFF, delay_s, "", 0)
        for letter, delay_s in zip(letters, (0.0, 10 * 86_400.0), strict=True)
    ]
    with capture_logs() as logs:
        run_dlqs(make_settings, "hide", defers)
    assert [line for line in logs if line["event"] == "defer-hide-failed"] == []
    assert world.depth("retry-q") == 2
