"""Resubmits to a Step Functions state machine: one StartExecution per job, bounded by a limiter.

The execution name is derived from (idempotency key, attempt), so Step Functions
itself refuses to run the same attempt twice: a crash between StartExecution and
the ledger commit cannot double-start a workflow, while the next attempt, with a
new name, still starts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import anyio
import structlog
from botocore.exceptions import ClientError

from retryd.aws import Client
from retryd.classify import from_exception
from retryd.models import ErrorClass, Job, SendError, Target
from retryd.targets.base import INVALID_PAYLOAD, PAYLOAD_TOO_LARGE, Delivery

log = structlog.get_logger(__name__)

# Step Functions API reference, StartExecution: `input` has a maximum length of 262144
# (256 KiB), counted as bytes in UTF-8.
EXECUTION_INPUT_MAX_BYTES = 256 * 1024
# Step Functions quotas: execution names are at most 80 characters.
EXECUTION_NAME_MAX_CHARS = 80
_NAME_PREFIX = "retryd-"
# 160 bits of the key's hash: collisions between distinct keys are not a practical concern.
_KEY_HASH_HEX_CHARS = 40
# Same name, and either a different input or an execution that has closed.
_ALREADY_EXISTS = "ExecutionAlreadyExists"


def execution_name(key: str, attempt: int) -> str:
    """`retryd-<sha256(key)[:40]>-a<attempt>`: only [A-Za-z0-9-], well under 80 characters.

    Hashing makes any key (spaces, colons, any length) a legal name and keeps the
    key itself out of execution listings.
    """
    digest = hashlib.sha256(key.encode()).hexdigest()[:_KEY_HASH_HEX_CHARS]
    return f"{_NAME_PREFIX}{digest}-a{attempt}"


def preflight(job: Job) -> SendError | None:
    """Refuse, without calling AWS, an input Step Functions would refuse anyway."""
    input_bytes = len(job.body.encode())
    if input_bytes > EXECUTION_INPUT_MAX_BYTES:
        return SendError(
            ErrorClass.PERMANENT,
            PAYLOAD_TOO_LARGE,
            f"input is {input_bytes} bytes; StartExecution takes at most "
            f"{EXECUTION_INPUT_MAX_BYTES}",
        )
    try:
        json.loads(job.body)
    except ValueError as exc:
        return SendError(
            ErrorClass.PERMANENT, INVALID_PAYLOAD, f"Step Functions needs JSON input: {exc}"
        )
    return None


class StateMachineTarget:
    """Starts one execution of the target state machine per job, named by (key, attempt)."""

    def __init__(self, client: Client, limiter: anyio.CapacityLimiter) -> None:
        self._client = client
        self._limiter = limiter

    async def submit(self, target: Target, jobs: Sequence[Job]) -> list[Delivery]:
        deliveries: list[Delivery | None] = [None] * len(jobs)

        async def deliver(index: int, job: Job) -> None:
            deliveries[index] = await self._start(target, job)

        async with anyio.create_task_group() as tasks:
            for index, job in enumerate(jobs):
                tasks.start_soon(deliver, index, job)
        return [delivery for delivery in deliveries if delivery is not None]

    async def _start(self, target: Target, job: Job) -> Delivery:
        refused = preflight(job)
        if refused is not None:
            return Delivery(job, refused)
        name = execution_name(job.key, job.next_attempt)
        try:
            async with self._limiter:
                await self._client.start_execution(
                    stateMachineArn=target.arn, input=job.body, name=name
                )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != _ALREADY_EXISTS:
                return Delivery(job, from_exception(exc))
            # The name is ours and encodes this very attempt: an execution under it means
            # this attempt was already started, so the duplicate is suppressed, not an error.
            log.info(
                "stepfunctions_duplicate_suppressed",
                target=target.arn,
                execution_name=name,
                message_id=job.letter.message_id,
                attempt=job.next_attempt,
            )
        except Exception as exc:  # noqa: BLE001 - every failure becomes a classified Delivery
            # Cancellation is a BaseException and still propagates; AWS failures become values.
            return Delivery(job, from_exception(exc))
        return Delivery(job)
