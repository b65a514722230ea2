"""Failed Step Functions executions: resumed where they failed, not started again.

An EventBridge rule on "Step Functions Execution Status Change" (source
`aws.states`) with status FAILED, TIMED_OUT or ABORTED, targeting an SQS queue,
makes that queue a DLQ of executions. Each event names the execution
(`detail.executionArn`), its state machine, its input and how often it had
been redriven (Step Functions developer guide, "Automating Step Functions event
delivery with EventBridge", execution status change events).

The job targets the state machine, so the allowlist, the breaker and the rate
limit are the state machine's; it carries the execution (`FailedExecution`), and
the state machine target redrives it (`RedriveExecution`) when Step Functions
says it can, or else does what `[stepfunctions] not_redrivable` says. The key
is the execution and its redrive count: the same failure delivered twice is one
piece of work, and a redriven execution that fails again is a new one.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from retryd.arns import Arn
from retryd.models import (
    DeadLetter,
    FailedExecution,
    Job,
    ParkReason,
    Target,
    TargetType,
    Unresolvable,
)
from retryd.resolve.base import forward_attributes, stamped_attempt, stamped_first_failed_at
from retryd.resolve.keys import compact_json, idempotency_key, parsed_json

EVENT_SOURCE = "aws.states"
DETAIL_TYPE = "Step Functions Execution Status Change"
# The statuses an execution that did not succeed ends with; RUNNING and SUCCEEDED events
# (a rule matching every status) are not failures.
FAILED_STATUSES = frozenset({"FAILED", "TIMED_OUT", "ABORTED"})
_SHOWN_CHARS = 200
# `execution:<machine>:<name>`, and `arn:<partition>:states:<region>:<account>:stateMachine:<name>`.
_EXECUTION_RESOURCE_PARTS = 3
_MACHINE_ARN_PARTS = 7


class StepFunctionsExecutionResolver:
    """Resolves a failed-execution status-change event to a redrive of that execution."""

    name = "stepfunctions-execution"

    def __init__(self, *, start_if_not_redrivable: bool = False) -> None:
        self._start_if_not_redrivable = start_if_not_redrivable

    def resolve(self, letter: DeadLetter) -> Job | Unresolvable | None:
        detail = _status_change_detail(letter.body)
        if detail is None:
            return None
        status = detail.get("status")
        if status not in FAILED_STATUSES:
            return Unresolvable(
                letter,
                ParkReason.UNRESOLVABLE,
                f"a Step Functions status change to {_shown(status)}: nothing failed, so "
                "there is nothing to redrive (does the rule match more than FAILED, "
                "TIMED_OUT and ABORTED?)",
            )
        execution_arn = detail.get("executionArn")
        if not isinstance(execution_arn, str):
            return Unresolvable(
                letter,
                ParkReason.UNRESOLVABLE,
                f"detail.executionArn {_shown(execution_arn)} is not an execution ARN",
            )
        target = _state_machine_of(execution_arn, detail.get("stateMachineArn"))
        if isinstance(target, str):
            return Unresolvable(letter, ParkReason.UNRESOLVABLE, target)
        redrive_count = _count(detail.get("redriveCount"))
        # The input as Step Functions gave it (a JSON string), kept for a StartExecution
        # fallback; "" when the event left it out (inputDetails.included false).
        original_input = detail.get("input")
        body = original_input if isinstance(original_input, str) else ""
        stopped_at = _moment(detail.get("stopDate"))
        return Job(
            letter=letter,
            target=target,
            body=body,
            key=execution_key(target, execution_arn, redrive_count, None),
            attempt=stamped_attempt(letter) or 0,
            source_attempts=redrive_count + 1,
            resolver=self.name,
            first_failed_at=stamped_first_failed_at(letter) or stopped_at or letter.sent_at,
            forward_attributes=forward_attributes(letter),
            origin=FailedExecution(
                execution_arn=execution_arn,
                status=str(status),
                redrive_count=redrive_count,
                stopped_at=stopped_at,
                start_if_not_redrivable=self._start_if_not_redrivable,
            ),
        )


def _status_change_detail(body: str) -> dict[str, Any] | None:
    """The event's `detail` when the body is a Step Functions execution status change."""
    event = parsed_json(body)
    if not isinstance(event, dict):
        return None
    if event.get("source") != EVENT_SOURCE or event.get("detail-type") != DETAIL_TYPE:
        return None
    detail = event.get("detail")
    return detail if isinstance(detail, dict) else None


def execution_state_machine(execution_arn: str) -> Target | str:
    """The state machine a Standard execution ARN belongs to, or why it names none.

    Taken from the ARN itself (`execution:<machine>:<name>`), the one AWS acts on.
    """
    try:
        parsed = Arn.parse(execution_arn)
    except ValueError:
        parsed = None
    parts = parsed.resource.split(":") if parsed is not None else []
    if (
        parsed is None
        or parsed.service != "states"
        or len(parts) != _EXECUTION_RESOURCE_PARTS
        or parts[0] != "execution"
    ):
        # An Express execution ARN (`express:<machine>:<name>:<id>`) lands here too: Express
        # workflows cannot be redriven and their status changes are not sent to EventBridge.
        return f"{_shown(execution_arn)} is not a Standard execution ARN"
    machine = f"stateMachine:{parts[1]}"
    machine_arn = str(Arn(parsed.partition, parsed.service, parsed.region, parsed.account, machine))
    try:
        target = Target.from_arn(machine_arn)
    except ValueError:
        return f"{_shown(execution_arn)} names no valid state machine"
    if target.type is not TargetType.STEPFUNCTIONS:
        return f"{_shown(execution_arn)} names no state machine"
    return target


def execution_key(
    machine: Target, execution_arn: str, redrive_count: int, declared: str | None
) -> str:
    """The ledger key of one failure of an execution, however it was reported (the status
    change event, or an envelope): the execution and how often it had been redriven, so the
    same failure delivered twice is one piece of work, and a failure after a redrive another."""
    identity = compact_json({"execution": execution_arn, "redriveCount": redrive_count})
    return idempotency_key(machine.arn, identity, declared)


def _state_machine_of(execution_arn: str, named: object) -> Target | str:
    """The execution's state machine, or why the event does not say one: a `stateMachineArn`
    that disagrees with the execution ARN is a forged or broken event."""
    target = execution_state_machine(execution_arn)
    if isinstance(target, str):
        return f"detail.executionArn {target}"
    # A version or alias qualifier after the name is still the same state machine.
    if isinstance(named, str) and named.split(":")[:_MACHINE_ARN_PARTS] != target.arn.split(":"):
        return (
            f"detail.stateMachineArn {_shown(named)} is not the state machine of execution "
            f"{_shown(execution_arn)}"
        )
    return target


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return value


def _moment(value: object) -> datetime | None:
    """An EventBridge `stopDate` (epoch milliseconds) as an aware datetime."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."
