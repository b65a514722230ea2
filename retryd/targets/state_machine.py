"""Resubmits to a Step Functions state machine: one StartExecution per job, bounded by a limiter.

The execution name is derived from (idempotency key, DLQ message id, attempt).
The message id stays the same when SQS hands the same dead letter out again and
is new for every new dead letter, so a crash between StartExecution and the
ledger commit finds its own execution under the same name, while a message that
failed again and came back as a new dead letter gets a new name and runs again.

Step Functions answers a repeated name with the same input as success while the
execution runs; `ExecutionAlreadyExists` means the execution has closed or the
input differs (StartExecution API reference), so retryd asks DescribeExecution
which of those it is before it calls the job delivered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import anyio
import structlog
from botocore.exceptions import ClientError

from retryd.arns import Arn
from retryd.aws import Client
from retryd.classify import from_exception
from retryd.models import ErrorClass, Job, SendError, Target
from retryd.resolve.keys import canonical_payload
from retryd.targets.base import Delivery, deliver_each, refuse_unless_json, unpreparable

log = structlog.get_logger(__name__)

# Step Functions API reference, StartExecution: `input` has a maximum length of 262144
# (256 KiB), counted as bytes in UTF-8.
EXECUTION_INPUT_MAX_BYTES = 256 * 1024
# Step Functions quotas: execution names are at most 80 characters.
EXECUTION_NAME_MAX_CHARS = 80
_NAME_PREFIX = "retryd-"
# 192 bits of the hash: collisions between distinct dead letters are not a practical concern.
_IDENTITY_HASH_HEX_CHARS = 48
# Same name, and either a different input or an execution that has closed.
_ALREADY_EXISTS = "ExecutionAlreadyExists"
# Statuses under which the execution with our name and input has run, or is running,
# this dead letter. PENDING_REDRIVE: someone redrove it, so it is about to run again.
_IN_PROGRESS_OR_DONE = frozenset({"RUNNING", "SUCCEEDED", "PENDING_REDRIVE"})
# Closed without success: this very dead letter already had its run and it failed.
_CLOSED_UNSUCCESSFULLY = frozenset({"FAILED", "TIMED_OUT", "ABORTED"})


def execution_name(key: str, message_id: str, attempt: int) -> str:
    """`retryd-<sha256(key, message id)[:48]>-a<attempt>`: only [A-Za-z0-9-], under 80 chars.

    Hashing makes any key (spaces, colons, any length) a legal name and keeps the
    key itself out of execution listings. SQS message ids hold no newline, so
    two different (key, message id) pairs never hash the same text.
    """
    identity = f"{key}\n{message_id}".encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(identity).hexdigest()[:_IDENTITY_HASH_HEX_CHARS]
    return f"{_NAME_PREFIX}{digest}-a{attempt}"


def execution_arn(state_machine_arn: str, name: str) -> str:
    """The ARN of execution `name` of the state machine (a qualifier on its ARN is ignored)."""
    machine = Arn.parse(state_machine_arn)
    machine_name = machine.resource.split(":")[1]
    resource = f"execution:{machine_name}:{name}"
    return str(Arn(machine.partition, machine.service, machine.region, machine.account, resource))


def preflight(job: Job) -> SendError | None:
    """Refuse, without calling AWS, an input Step Functions would refuse anyway."""
    return refuse_unless_json(
        job,
        max_bytes=EXECUTION_INPUT_MAX_BYTES,
        subject="input",
        call="StartExecution",
        needs="Step Functions needs JSON input",
    )


class StateMachineTarget:
    """Starts one execution of the target state machine per job, named by its dead letter."""

    def __init__(self, client: Client, limiter: anyio.CapacityLimiter) -> None:
        self._client = client
        self._limiter = limiter

    async def submit(self, target: Target, jobs: Sequence[Job]) -> list[Delivery]:
        return await deliver_each(jobs, lambda job: self._start(target, job))

    async def _start(self, target: Target, job: Job) -> Delivery:
        try:
            refused = preflight(job)
            name = execution_name(job.key, job.letter.message_id, job.next_attempt)
        except Exception as exc:  # noqa: BLE001 - one unreadable job must not fail the others
            # RecursionError from deeply nested JSON, UnicodeEncodeError, ...: the job's fault.
            return Delivery(job, unpreparable(exc, "Step Functions input"))
        if refused is not None:
            return Delivery(job, refused)
        try:
            async with self._limiter:
                await self._client.start_execution(
                    stateMachineArn=target.arn, input=job.body, name=name
                )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != _ALREADY_EXISTS:
                return Delivery(job, from_exception(exc))
            return Delivery(job, await self._existing(target, job, name))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a classified Delivery
            # Cancellation is a BaseException and still propagates; AWS failures become values.
            return Delivery(job, from_exception(exc))
        return Delivery(job)

    async def _existing(self, target: Target, job: Job, name: str) -> SendError | None:
        """After ExecutionAlreadyExists: None if our execution has this job, else why not."""
        try:
            async with self._limiter:
                described = await self._client.describe_execution(
                    executionArn=execution_arn(target.arn, name)
                )
        except Exception as exc:  # noqa: BLE001 - every failure becomes a classified Delivery
            return from_exception(exc)
        status = str(described.get("status", ""))
        described_input = described.get("input")
        # One spelling for both, so inputs that differ only in layout compare equal.
        if not isinstance(described_input, str) or canonical_payload(
            described_input
        ) != canonical_payload(job.body):
            return SendError(
                ErrorClass.PERMANENT,
                _ALREADY_EXISTS,
                f"execution {name} already exists for this dead letter with a different input",
            )
        if status in _CLOSED_UNSUCCESSFULLY:
            return SendError(
                ErrorClass.PERMANENT,
                _ALREADY_EXISTS,
                f"execution {name} already ran for this dead letter and ended {status}",
            )
        if status not in _IN_PROGRESS_OR_DONE:
            # A status newer than this code: wait and look again rather than guess.
            return SendError(
                ErrorClass.TRANSIENT,
                "retryd.UnknownExecutionStatus",
                f"execution {name} exists with status {status!r}",
            )
        log.info(
            "stepfunctions-duplicate-suppressed",
            target=target.arn,
            execution_name=name,
            status=status,
            message_id=job.letter.message_id,
            attempt=job.next_attempt,
        )
        return None
