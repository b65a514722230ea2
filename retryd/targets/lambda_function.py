"""Resubmits to a Lambda function: one asynchronous Invoke per job, bounded by a limiter.

Lambda has no batch invoke, so jobs run side by side in a task group; the limiter
is passed in so that every caller sending to Lambda shares one bound on calls in flight.

retryd's stamps (key, attempt, source queue) go in the ClientContext, but the
Invoke API reference says Lambda passes ClientContext to the function for
synchronous invocations only. retryd invokes with InvocationType=Event, so a
handler cannot count on seeing them: they are best-effort metadata, and the
attempt ledger, not the function, is what deduplicates a resubmission.

A job that carries a stream batch (`Job.origin`, a `StreamBatch`) is different:
its records are read back from the stream (retryd.targets.stream_replay) and the
function is invoked synchronously (RequestResponse), as its event source mapping
invoked it. A function error then fails the attempt, as it failed the batch, so
retryd backs off and tries again up to `guards.max_attempts` instead of calling a
batch delivered that the function threw away; and the stamps reach the handler.
A batch over Lambda's 6 MB synchronous limit is sent as several events, in order,
each stamped `retryd.part` ("2/3"). A batch is delivered once every part succeeds;
a failed part fails the attempt, and the next attempt sends every part again.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence

import anyio
import structlog

from retryd import stamps
from retryd.aws import Client
from retryd.classify import from_exception
from retryd.models import ErrorClass, Job, SendError, StreamBatch, Target
from retryd.targets.base import Delivery, deliver_each, refuse_unless_json, unpreparable
from retryd.targets.stream_replay import Replayed, StreamReader

log = structlog.get_logger(__name__)

# Lambda API reference, Invoke: "For asynchronous invocations, the maximum payload size
# is 1 MB" (raised from 256 KB in 2025). Lambda's MB are binary, as in its 6 MB sync limit.
ASYNC_PAYLOAD_MAX_BYTES = 1024 * 1024
# Lambda API reference, Invoke: ClientContext carries "up to 3,583 bytes of base64-encoded data".
CLIENT_CONTEXT_MAX_BYTES = 3583
# An Event invocation that Lambda queued answers 202; anything else was not queued.
_ACCEPTED_STATUS = 202
# A RequestResponse invocation that ran answers 200 (FunctionError set if the function failed).
_RAN_STATUS = 200


def client_context(job: Job, part: str | None = None) -> tuple[str | None, int]:
    """The base64 ClientContext carrying retryd's stamps, and how many stamps did not fit.

    Best effort only: Lambda passes ClientContext to the function for synchronous
    invocations only, and retryd's are asynchronous (see the module docstring).
    Stamps are dropped from the least useful end (source queue, then attempt, then
    key) rather than refusing the job: the payload matters, the stamps only help.
    Values are strings because some runtimes (Java, .NET) read `custom` as a string map.
    """
    fields = [
        *([(stamps.PART, part)] if part is not None else []),
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

    def __init__(
        self,
        client: Client,
        limiter: anyio.CapacityLimiter,
        streams: StreamReader | None = None,
    ) -> None:
        self._client = client
        self._limiter = limiter
        self._streams = streams

    async def submit(self, target: Target, jobs: Sequence[Job]) -> list[Delivery]:
        return await deliver_each(jobs, lambda job: self._deliver(target, job))

    async def _deliver(self, target: Target, job: Job) -> Delivery:
        if isinstance(job.origin, StreamBatch):
            return await self._replay(target, job, job.origin)
        return await self._invoke(target, job)

    async def _replay(self, target: Target, job: Job, batch: StreamBatch) -> Delivery:
        """Read the batch back and invoke the function with it, synchronously, part by part."""
        if self._streams is None:
            unreadable = SendError(
                ErrorClass.CONFIG, "retryd.NoStreamClients", "no clients to read streams with"
            )
            return Delivery(job, unreadable)
        async with self._limiter:
            replayed = await self._streams.replay(batch)
        if isinstance(replayed, SendError):
            return Delivery(job, replayed)
        if len(replayed.events) > 1:
            log.info(
                "stream-batch-split",
                target=target.arn,
                message_id=job.letter.message_id,
                records=replayed.records,
                parts=len(replayed.events),
            )
        return await self._invoke_parts(target, job, replayed)

    async def _invoke_parts(self, target: Target, job: Job, replayed: Replayed) -> Delivery:
        dropped = 0
        for number, event in enumerate(replayed.events, start=1):
            part = f"{number}/{len(replayed.events)}" if len(replayed.events) > 1 else None
            context, dropped = client_context(job, part)
            request: dict[str, object] = {
                "FunctionName": target.arn,
                "InvocationType": "RequestResponse",
                # A file object: aiobotocore warns that a large bytes body blocks the loop.
                "Payload": io.BytesIO(event.encode()),
            }
            if context is not None:
                request["ClientContext"] = context
            error = await self._call_sync(request, part)
            if error is not None:
                return Delivery(job, error, stamps_dropped=dropped)
        return Delivery(job, stamps_dropped=dropped)

    async def _call_sync(self, request: dict[str, object], part: str | None) -> SendError | None:
        try:
            async with self._limiter:
                response = await self._client.invoke(**request)
                await response["Payload"].read()
        except Exception as exc:  # noqa: BLE001 - every failure becomes a classified Delivery
            return from_exception(exc)
        which = f" (part {part})" if part else ""
        if response.get("FunctionError"):
            # The function failed the batch again: a failed attempt, tried again later.
            return SendError(
                ErrorClass.TRANSIENT,
                "retryd.FunctionError",
                f"the function failed the replayed batch{which}: {response['FunctionError']}",
            )
        if response.get("StatusCode") != _RAN_STATUS:
            return SendError(
                ErrorClass.TRANSIENT,
                "retryd.UnexpectedStatus",
                f"synchronous Invoke answered {response.get('StatusCode')}{which}",
            )
        return None

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
