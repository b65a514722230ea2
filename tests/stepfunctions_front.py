"""Step Functions redrive for the moto server, which has no RedriveExecution (moto 5.2).

A WSGI layer in front of moto's app, shaped as the Step Functions API reference
documents the operation:

* `RedriveExecution` (executionArn, clientToken) answers `{"redriveDate": ...}` and
  puts the execution back to RUNNING with its redriveCount one higher, for a
  FAILED, TIMED_OUT or ABORTED execution stopped less than 14 days ago; otherwise
  `ExecutionNotRedrivable` (400), or `ExecutionDoesNotExist` (400). The last 10
  client tokens that redrove an execution get the same answer again, without a
  second redrive.
* `DescribeExecution` answers also carry `redriveCount`, `redriveStatus`
  (REDRIVABLE / NOT_REDRIVABLE) and `redriveStatusReason`, as AWS's do.

The state lives on moto's own execution objects, so resetting moto clears it.
Tests arrange failed executions with `fail_execution`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from moto.stepfunctions.models import stepfunctions_backends

from retryd.sandbox.turns import WsgiApp, request_body

_TARGET_PREFIX = "AWSStepFunctions."
_FAILED = frozenset({"FAILED", "TIMED_OUT", "ABORTED"})
_REDRIVABLE_PERIOD = timedelta(days=14)
_TOKENS_KEPT = 10


def _execution(arn: str) -> Any:
    """moto's execution object, or None when it does not exist."""
    parts = arn.split(":")
    if len(parts) < 8:
        return None
    backend = stepfunctions_backends[parts[4]][parts[3]]
    try:
        return backend.describe_execution(arn)
    except Exception:  # noqa: BLE001 - moto raises its own error types for a missing one
        return None


def fail_execution(
    arn: str,
    status: str = "FAILED",
    *,
    stopped_at: datetime | None = None,
    not_redrivable: str | None = None,
) -> None:
    """Make a moto execution one that ended `status`, at `stopped_at` (now by default).

    `not_redrivable` makes Step Functions refuse to redrive it with that reason (what
    AWS says of an execution past its event history limit, say).
    """
    execution = _execution(arn)
    assert execution is not None, arn
    execution.status = status
    execution.stop_date = stopped_at or datetime.now(UTC)
    execution.retryd_not_redrivable = not_redrivable


def redrive_count(arn: str) -> int:
    """How many times the front redrove the execution."""
    return int(getattr(_execution(arn), "retryd_redrive_count", 0))


def _why_not(execution: Any) -> str | None:
    reason: str | None = getattr(execution, "retryd_not_redrivable", None)
    if reason:
        return reason
    if execution.status not in _FAILED:
        return f"Execution is {execution.status} and cannot be redriven"
    stopped: datetime | None = execution.stop_date
    if stopped is not None:
        aware = stopped if stopped.tzinfo else stopped.replace(tzinfo=UTC)
        if datetime.now(UTC) - aware > _REDRIVABLE_PERIOD:
            return "Execution has exceeded the redrivable period of 14 days"
    return None


def _json_answer(
    start_response: Callable[..., Any], status: str, body: dict[str, Any]
) -> list[bytes]:
    payload = json.dumps(body).encode()
    start_response(
        status,
        [("Content-Type", "application/x-amz-json-1.0"), ("Content-Length", str(len(payload)))],
    )
    return [payload]


def _error(start_response: Callable[..., Any], code: str, message: str) -> list[bytes]:
    return _json_answer(start_response, "400 Bad Request", {"__type": code, "message": message})


def _redrive(request: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    arn = str(request.get("executionArn", ""))
    token = str(request.get("clientToken", ""))
    execution = _execution(arn)
    if execution is None:
        return _error(start_response, "ExecutionDoesNotExist", f"Execution Does Not Exist: '{arn}'")
    tokens: list[str] = getattr(execution, "retryd_tokens", [])
    if token and token in tokens:
        return _json_answer(
            start_response, "200 OK", {"redriveDate": execution.retryd_redrive_date.timestamp()}
        )
    why = _why_not(execution)
    if why is not None:
        return _error(start_response, "ExecutionNotRedrivable", why)
    now = datetime.now(UTC)
    execution.status = "RUNNING"
    execution.stop_date = None
    execution.retryd_redrive_count = getattr(execution, "retryd_redrive_count", 0) + 1
    execution.retryd_redrive_date = now
    execution.retryd_tokens = [*tokens, token][-_TOKENS_KEPT:]
    return _json_answer(start_response, "200 OK", {"redriveDate": now.timestamp()})


def _described(answer: bytes) -> bytes:
    try:
        described = json.loads(answer)
    except ValueError:
        return answer
    if not isinstance(described, dict):
        return answer
    execution = _execution(str(described.get("executionArn", "")))
    if execution is None:
        return answer
    described["redriveCount"] = getattr(execution, "retryd_redrive_count", 0)
    why = _why_not(execution)
    described["redriveStatus"] = "REDRIVABLE" if why is None else "NOT_REDRIVABLE"
    if why is not None:
        described["redriveStatusReason"] = why
    if execution.stop_date is not None:
        described["stopDate"] = execution.stop_date.timestamp()
    return json.dumps(described).encode()


def redrive_front(app: WsgiApp) -> WsgiApp:
    """Middleware: RedriveExecution answered here, DescribeExecution's answer completed."""

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        operation = environ.get("HTTP_X_AMZ_TARGET", "")
        if not operation.startswith(_TARGET_PREFIX):
            return app(environ, start_response)
        body = request_body(environ)
        name = operation.removeprefix(_TARGET_PREFIX)
        if name == "RedriveExecution":
            return _redrive(json.loads(body or b"{}"), start_response)
        if name != "DescribeExecution":
            return app(environ, start_response)
        answered: dict[str, Any] = {}

        def keep(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            answered["status"], answered["headers"] = status, headers

        payload = _described(b"".join(app(environ, keep)))
        headers = [(k, v) for k, v in answered["headers"] if k.lower() != "content-length"]
        start_response(answered["status"], [*headers, ("Content-Length", str(len(payload)))])
        return [payload]

    return serve
