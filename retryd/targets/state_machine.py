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

A job that carries a failed execution (`Job.origin`, see
retryd.resolve.stepfunctions_execution) is redriven instead: `RedriveExecution`
resumes it from the failed state with the same ARN and input, keeping the
results of the steps that succeeded (Step Functions API reference,
RedriveExecution: Standard workflows, FAILED/TIMED_OUT/ABORTED, within 14 days of
stopping). Its `clientToken` comes from the ledger key, so a repeat of the call
(a crash before the ledger commit) is answered as the first one was; and a
DescribeExecution first tells an execution already redriven (its redriveCount
moved on, or it runs) from one still to redrive. One Step Functions will not
redrive is started afresh with its original input, or refused `not-redrivable`,
as the job says (`[stepfunctions] not_redrivable`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import structlog
from botocore.exceptions import ClientError

from retryd.arns import Arn
from retryd.aws import Client
from retryd.classify import from_exception
from retryd.models import ErrorClass, FailedExecution, Job, Refusal, SendError, Target
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
# RedriveExecution's clientToken: 1-64 characters (API reference).
CLIENT_TOKEN_MAX_CHARS = 64
_TOKEN_PREFIX = _NAME_PREFIX
# RedriveExecution API reference: executions that stopped in the last 14 days.
REDRIVABLE_PERIOD = timedelta(days=14)
# DescribeExecution's redriveStatus when RedriveExecution will take the execution.
_REDRIVABLE = "REDRIVABLE"
_NOT_REDRIVABLE_CODE = "ExecutionNotRedrivable"
_GONE_CODE = "ExecutionDoesNotExist"
# An execution under way again (someone, or an earlier try of ours, redrove it) or done.
_ON_ITS_WAY = frozenset({"RUNNING", "PENDING_REDRIVE", "SUCCEEDED"})


def execution_name(key: str, message_id: str, attempt: int) -> str:
    """`retryd-<sha256(key, message id)[:48]>-a<attempt>`: only [A-Za-z0-9-], under 80 chars.

    Hashing makes any key (spaces, colons, any length) a legal name and keeps the
    key itself out of execution listings. SQS message ids hold no newline, so
    two different (key, message id) pairs never hash the same text.
    """
    identity = f"{key}\n{message_id}".encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(identity).hexdigest()[:_IDENTITY_HASH_HEX_CHARS]
    return f"{_NAME_PREFIX}{digest}-a{attempt}"


def client_token(key: str) -> str:
    """`retryd-<sha256(key)>` cut to 64 characters: printable ASCII, one per ledger key."""
    digest = hashlib.sha256(key.encode("utf-8", errors="surrogatepass")).hexdigest()
    return (_TOKEN_PREFIX + digest)[:CLIENT_TOKEN_MAX_CHARS]


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
        if isinstance(job.origin, FailedExecution):
            return await self._redrive(target, job, job.origin)
        return await self._start_execution(target, job)

    async def _start_execution(self, target: Target, job: Job) -> Delivery:
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

    async def _redrive(self, target: Target, job: Job, failed: FailedExecution) -> Delivery:
        """Redrive the failed execution; if Step Functions will not, the job's fallback."""
        described = await self._describe(failed)
        if isinstance(described, SendError):
            return Delivery(job, described)
        if isinstance(described, str):
            return await self._not_redrivable(target, job, failed, described)
        if _already_redriven(described, failed):
            log.info(
                "stepfunctions-redrive-suppressed",
                target=target.arn,
                execution_arn=failed.execution_arn,
                status=described.get("status"),
                message_id=job.letter.message_id,
                attempt=job.next_attempt,
            )
            return Delivery(job)
        why = not_redrivable_because(described, datetime.now(UTC))
        if why is None:
            refused = await self._call_redrive(job, failed)
            if not isinstance(refused, str):
                return Delivery(job, refused)
            why = refused
        return await self._not_redrivable(target, job, failed, why)

    async def _describe(self, failed: FailedExecution) -> Mapping[str, Any] | SendError | str:
        """DescribeExecution's answer; why it cannot be redriven when it is gone; or the error."""
        try:
            async with self._limiter:
                described: Mapping[str, Any] = await self._client.describe_execution(
                    executionArn=failed.execution_arn
                )
        except ClientError as exc:
            if _code(exc) == _GONE_CODE:
                return "it no longer exists"
            return from_exception(exc)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a classified Delivery
            return from_exception(exc)
        return described

    async def _call_redrive(self, job: Job, failed: FailedExecution) -> SendError | str | None:
        """RedriveExecution: None when it took it, why when it will not, else the error."""
        try:
            async with self._limiter:
                await self._client.redrive_execution(
                    executionArn=failed.execution_arn, clientToken=client_token(job.key)
                )
        except ClientError as exc:
            if _code(exc) == _NOT_REDRIVABLE_CODE:
                return str(exc.response.get("Error", {}).get("Message") or _NOT_REDRIVABLE_CODE)
            return from_exception(exc)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a classified Delivery
            return from_exception(exc)
        return None

    async def _not_redrivable(
        self, target: Target, job: Job, failed: FailedExecution, why: str
    ) -> Delivery:
        """Start it afresh with its original input, or refuse it, as the job says."""
        if failed.start_if_not_redrivable and job.body:
            return await self._start_execution(target, job)
        if failed.start_if_not_redrivable:
            why += "; its input was not in the event, so it cannot be started again either"
        return Delivery(
            job,
            SendError.refused(
                Refusal.NOT_REDRIVABLE,
                f"execution {failed.execution_arn} cannot be redriven: {why[:300]}",
            ),
        )


def not_redrivable_because(described: Mapping[str, Any], now: datetime) -> str | None:
    """Why DescribeExecution's answer rules a redrive out; None when it may be redriven.

    Step Functions' own `redriveStatus` decides when it is given; without it, the
    documented rules: a closed unsuccessful execution stopped less than 14 days ago.
    """
    status = str(described.get("status", ""))
    redrive_status = described.get("redriveStatus")
    if isinstance(redrive_status, str):
        if redrive_status == _REDRIVABLE:
            return None
        reason = described.get("redriveStatusReason")
        return str(reason) if isinstance(reason, str) and reason else redrive_status
    if status not in _CLOSED_UNSUCCESSFULLY:
        return f"it is {status or 'in no known status'}"
    stopped = described.get("stopDate")
    if isinstance(stopped, datetime) and now - stopped > REDRIVABLE_PERIOD:
        return f"it stopped at {stopped.isoformat()}, more than 14 days ago"
    return None


def _already_redriven(described: Mapping[str, Any], failed: FailedExecution) -> bool:
    """Whether this failure was redriven already (by us before a crash, or by someone)."""
    count = described.get("redriveCount")
    if isinstance(count, int) and not isinstance(count, bool) and count > failed.redrive_count:
        return True
    return str(described.get("status", "")) in _ON_ITS_WAY


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
