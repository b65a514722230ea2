"""The router that hands each target's jobs to the resubmitter for its type and place.

A target is sent to in its own region, with the credentials of its account when
retryd has them, else with those of the DLQ the message came from, and the
target's resource policy decides (`Places.sending_place`). When that place cannot
be worked in (its role cannot be assumed, or its region is one retryd makes no
clients in), its jobs fail as retryd's own set-up (CONFIG: they stay in their
DLQ), never as the target's refusal.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import anyio

from retryd.aws import AwsClients
from retryd.models import ErrorClass, Job, SendError, Target, TargetType
from retryd.places import PlaceError
from retryd.targets.base import Delivery, Resubmitter
from retryd.targets.event_bus import EventBusTarget
from retryd.targets.lambda_function import LambdaFunctionTarget
from retryd.targets.sns_topic import SnsTopicTarget
from retryd.targets.sqs_queue import SqsQueueTarget
from retryd.targets.state_machine import StateMachineTarget
from retryd.targets.stream_replay import StreamReader

# Hears answers the moment they are in; awaited before the next answer of the same call.
OnAnswer = Callable[[Sequence[Delivery]], Awaitable[None]]


class PickClients(Protocol):
    """The clients to send to `target_arn` with, for a message from the DLQ `queue_arn`.

    PlaceError when the place they belong to cannot be worked in now.
    """

    async def __call__(self, target_arn: str, queue_arn: str) -> AwsClients: ...


def place_unavailable(exc: PlaceError) -> SendError:
    """A place that cannot be sent from, as the send's error: retryd's own set-up (CONFIG),
    or TRANSIENT when STS was (`retryd plan` says the same of the messages it would hold)."""
    error_class = (
        ErrorClass.TRANSIENT if exc.error_class == ErrorClass.TRANSIENT.value else ErrorClass.CONFIG
    )
    return SendError(error_class, "PlaceUnavailable", f"{exc.place}: {exc.why}")


# Targets with no batch API: one call per job, so each job's answer is its own.
_ONE_CALL_PER_JOB = frozenset({TargetType.LAMBDA, TargetType.STEPFUNCTIONS})


class TargetRouter:
    """Groups a batch of jobs by target and hands each group to its resubmitter at once."""

    def __init__(
        self,
        clients: AwsClients,
        target_concurrency: int,
        *,
        pick: PickClients | None = None,
    ) -> None:
        # One limiter for every target without a batch API, so a batch of Lambda
        # invokes and a batch of executions together stay within the bound, in
        # every place together.
        self._limiter = anyio.CapacityLimiter(target_concurrency)
        self._clients = clients
        self._pick = pick
        # Per set of clients (one per place), built on first use: they keep per-target
        # state (queue URLs, size limits) that belongs to that place's endpoint.
        self._resubmitters: dict[int, dict[TargetType, Resubmitter]] = {}

    def _for(self, clients: AwsClients) -> dict[TargetType, Resubmitter]:
        known = self._resubmitters.get(id(clients))
        if known is None:
            known = {
                TargetType.LAMBDA: LambdaFunctionTarget(
                    clients.lambda_,
                    self._limiter,
                    StreamReader(clients.kinesis, clients.dynamodbstreams),
                ),
                TargetType.STEPFUNCTIONS: StateMachineTarget(clients.stepfunctions, self._limiter),
                TargetType.SQS: SqsQueueTarget(clients.sqs),
                TargetType.SNS: SnsTopicTarget(clients.sns),
                TargetType.EVENTBRIDGE: EventBusTarget(clients.events),
            }
            self._resubmitters[id(clients)] = known
        return known

    async def _clients_for(
        self, job: Job, picked: dict[tuple[str, str], AwsClients | SendError]
    ) -> AwsClients | SendError:
        if self._pick is None:
            return self._clients
        # Once per target and DLQ in a call: a role that cannot be assumed is asked
        # about once, not once per job.
        key = (job.target.arn, job.letter.queue.arn)
        known = picked.get(key)
        if known is None:
            try:
                known = await self._pick(*key)
            except PlaceError as exc:
                known = place_unavailable(exc)
            picked[key] = known
        return known

    async def submit(
        self, jobs: Sequence[Job], on_answer: OnAnswer | None = None
    ) -> list[Delivery]:
        """One Delivery per job, in the order given.

        `on_answer` hears every answer as soon as it is in: a job sent in a call of its
        own (Lambda, Step Functions) alone, the jobs of a batch call together. So one
        slow call holds back its own job only, never its siblings' answers.
        """
        groups: dict[tuple[Target, int], list[int]] = defaultdict(list)
        resubmitters: dict[int, dict[TargetType, Resubmitter]] = {}
        results: list[Delivery | None] = [None] * len(jobs)
        picked: dict[tuple[str, str], AwsClients | SendError] = {}
        unsent: list[Delivery] = []
        for index, job in enumerate(jobs):
            clients = await self._clients_for(job, picked)
            if isinstance(clients, SendError):
                delivery = Delivery(job, clients)
                results[index] = delivery
                unsent.append(delivery)
                continue
            resubmitters[id(clients)] = self._for(clients)
            groups[(job.target, id(clients))].append(index)
        if unsent and on_answer is not None:
            await on_answer(unsent)

        async def call(resubmitter: Resubmitter, target: Target, indexes: list[int]) -> None:
            deliveries = await resubmitter.submit(target, [jobs[i] for i in indexes])
            for index, delivery in zip(indexes, deliveries, strict=True):
                results[index] = delivery
            if on_answer is not None:
                await on_answer(deliveries)

        parts = [
            (resubmitters[clients_id][target.type], target, part)
            for (target, clients_id), indexes in groups.items()
            for part in ([[i] for i in indexes] if target.type in _ONE_CALL_PER_JOB else [indexes])
        ]
        if len(parts) == 1:
            # One call (a batch to one queue, topic or bus): made in this task, as a task of
            # its own (and its group) costs more CPU than the rest of the step.
            await call(*parts[0])
        else:
            async with anyio.create_task_group() as group:
                for part in parts:
                    group.start_soon(call, *part)
        return [delivery for delivery in results if delivery is not None]
