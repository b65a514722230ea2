"""Resubmits to a Lambda function: one asynchronous Invoke per job, bounded by a limiter.

Lambda has no batch invoke, so jobs run side by side in a task group; the limiter
is passed in so that every caller sending to Lambda shares one bound on calls in flight.

retryd's stamps (key, attempt, source queue) go in the ClientContext, but the
Invoke API reference says Lambda passes ClientContext to the function for
synchronous invocations only. retryd invokes with InvocationType=Event, so a
handler cannot count on seeing them: they are best-effort metadata, and the
attempt ledger, not the function, is what deduplicates a resubmission.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

import anyio
import structlog

from retryd import stamps
from retryd.aws import Client
from retryd.classify import from_exception
from retryd.models import ErrorClass, Job, SendError, Target
from retryd.targets.base import Delivery, deliver_each, refuse_unless_json, unpreparable

log = structlog.get_logger(__name__)

# Lambda API reference, Invoke: "For asynchronous invocations, the maximum payload size
# is 1 MB" (raised from 256 KB in 2025). Lambda's MB are binary, as in its 6 MB sync limit.
ASYNC_PAYLOAD_MAX_BYTES = 1024 * 1024
# Lambda API reference, Invoke: ClientContext carries "up to 3,583 bytes of base64-encoded data".
CLIENT_CONTEXT_MAX_BYTES = 3583
# An Event invocation that Lambda queued answers 202; anything else was not queued.
_ACCEPTED_STATUS = 202


def client_context(job: Job) -> tuple[str | None, int]:
    """The base64 ClientContext carrying retryd's stamps, and how many stamps did not fit.

    Best effort only: Lambda passes ClientContext to the function for synchronous
    invocations only, and retryd's are asynchronous (see the module docstring).
    Stamps are dropped from the least useful end (source queue, then attempt, then
    key) rather than refusing the job: the payload matters, the stamps only help.
    Values are strings because some runtimes (Java, .NET) read `custom` as a string map.
    """
    fields = [
        (stamps.KEY, job.key),
        (stamps.ATTEMPT, str(job.next_attempt)),
        (stamps.SOURCE_QUEUE, job.letter.queue.name),
    ]
    for kept in range(len(fields), 0, -1):
        document = {"custom": dict(fields[:kept])}
        encoded = base64.b64encode(json.dumps(document, separators=(",", ":")).encode())
        if len(encoded) <= CLIENT_CONTEXT_MAX_BYTES:
            return encoded.decode("ascii"), len(fields) - kept
    return None, len(fields)


def preflight(job: Job) -> SendError | None:
    """Refuse, without calling AWS, a body Lambda would refuse anyway."""
    return refuse_unless_json(
        job,
        max_bytes=ASYNC_PAYLOAD_MAX_BYTES,
        subject="payload",
        call="asynchronous Invoke",
        needs="Lambda needs JSON",
    )


class LambdaFunctionTarget:
    """Invokes the target ARN (qualifier included) asynchronously: InvocationType=Event."""

    def __init__(self, client: Client, limiter: anyio.CapacityLimiter) -> None:
        self._client = client
        self._limiter = limiter

    async def submit(self, target: Target, jobs: Sequence[Job]) -> list[Delivery]:
        return await deliver_each(jobs, lambda job: self._invoke(target, job))

    async def _invoke(self, target: Target, job: Job) -> Delivery:
        try:
            refused = preflight(job)
            if refused is not None:
                return Delivery(job, refused)
            context, stamps_dropped = client_context(job)
            request = {
                "FunctionName": target.arn,
                "InvocationType": "Event",
                "Payload": job.body.encode(),
            }
            if context is not None:
                request["ClientContext"] = context
        except Exception as exc:  # noqa: BLE001 - one unreadable job must not fail the others
            # RecursionError from deeply nested JSON, UnicodeEncodeError, ...: the job's fault.
            return Delivery(job, unpreparable(exc, "Lambda payload"))
        if stamps_dropped:
            log.info(
                "lambda-client-context-trimmed",
                target=target.arn,
                message_id=job.letter.message_id,
                stamps_dropped=stamps_dropped,
            )
        try:
            async with self._limiter:
                response = await self._client.invoke(**request)
                # Reading the (empty) body hands the connection back to the pool.
                await response["Payload"].read()
        except Exception as exc:  # noqa: BLE001 - every failure becomes a classified Delivery
            # Cancellation is a BaseException and still propagates; AWS failures become values.
            return Delivery(job, from_exception(exc), stamps_dropped=stamps_dropped)
        status = response.get("StatusCode")
        if status != _ACCEPTED_STATUS:
            unexpected = SendError(
                ErrorClass.TRANSIENT,
                "retryd.UnexpectedStatus",
                f"asynchronous Invoke answered {status}, not {_ACCEPTED_STATUS}",
            )
            return Delivery(job, unexpected, stamps_dropped=stamps_dropped)
        return Delivery(job, stamps_dropped=stamps_dropped)
