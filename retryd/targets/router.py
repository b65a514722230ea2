"""The router that hands each target's jobs to the resubmitter for its type."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence

import anyio

from retryd.aws import AwsClients
from retryd.models import Job, Target, TargetType
from retryd.targets.base import Delivery, Resubmitter
from retryd.targets.event_bus import EventBusTarget
from retryd.targets.lambda_function import LambdaFunctionTarget
from retryd.targets.sns_topic import SnsTopicTarget
from retryd.targets.sqs_queue import SqsQueueTarget
from retryd.targets.state_machine import StateMachineTarget

# Hears answers the moment they are in; awaited before the next answer of the same call.
OnAnswer = Callable[[Sequence[Delivery]], Awaitable[None]]

# Targets with no batch API: one call per job, so each job's answer is its own.
_ONE_CALL_PER_JOB = frozenset({TargetType.LAMBDA, TargetType.STEPFUNCTIONS})


class TargetRouter:
    """Groups a batch of jobs by target and hands each group to its resubmitter at once."""

    def __init__(self, clients: AwsClients, target_concurrency: int) -> None:
        # One limiter for every target without a batch API, so a batch of Lambda
        # invokes and a batch of executions together stay within the bound.
        limiter = anyio.CapacityLimiter(target_concurrency)
        self._resubmitters: dict[TargetType, Resubmitter] = {
            TargetType.LAMBDA: LambdaFunctionTarget(clients.lambda_, limiter),
            TargetType.STEPFUNCTIONS: StateMachineTarget(clients.stepfunctions, limiter),
            TargetType.SQS: SqsQueueTarget(clients.sqs),
            TargetType.SNS: SnsTopicTarget(clients.sns),
            TargetType.EVENTBRIDGE: EventBusTarget(clients.events),
        }

    async def submit(
        self, jobs: Sequence[Job], on_answer: OnAnswer | None = None
    ) -> list[Delivery]:
        """One Delivery per job, in the order given.

        `on_answer` hears every answer as soon as it is in: a job sent in a call of its
        own (Lambda, Step Functions) alone, the jobs of a batch call together. So one
        slow call holds back its own job only, never its siblings' answers.
        """
        groups: dict[Target, list[int]] = defaultdict(list)
        for index, job in enumerate(jobs):
            groups[job.target].append(index)
        results: list[Delivery | None] = [None] * len(jobs)

        async def call(resubmitter: Resubmitter, target: Target, indexes: list[int]) -> None:
            deliveries = await resubmitter.submit(target, [jobs[i] for i in indexes])
            for index, delivery in zip(indexes, deliveries, strict=True):
                results[index] = delivery
            if on_answer is not None:
                await on_answer(deliveries)

        async with anyio.create_task_group() as group:
            for target, indexes in groups.items():
                resubmitter = self._resubmitters[target.type]
                calls = [[i] for i in indexes] if target.type in _ONE_CALL_PER_JOB else [indexes]
                for part in calls:
                    group.start_soon(call, resubmitter, target, part)
        return [delivery for delivery in results if delivery is not None]
