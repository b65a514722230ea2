"""Resubmits to an EventBridge event bus with PutEvents, in as few calls as its limits allow.

A job's body is either a PutEvents entry (`Source`, `DetailType`, `Detail`, ...) or
an event as EventBridge delivers it to targets (`source`, `detail-type`, `detail`,
...); both become the same entry. The bus is always the resolved target: it
passed the allowlist, whatever bus the body names did not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from retryd.aws import Client
from retryd.classify import MalformedResponseError, from_batch_failure
from retryd.models import ErrorClass, Job, Refusal, SendError, Target
from retryd.targets.base import (
    MAX_BATCH_ENTRIES,
    BatchResubmitter,
    Destination,
    Entry,
    Prepared,
    RefusedError,
)

# EventBridge API reference, PutEvents: at most 10 entries per request.
PUT_EVENTS_MAX_ENTRIES = MAX_BATCH_ENTRIES
# EventBridge user guide, "Calculating PutEvents event entry size": the total entry size
# of one request must be less than 256 KB
# (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-putevent-size.html).
PUT_EVENTS_MAX_BYTES = 256 * 1024
# The most one entry, and one call, may carry: strictly less than the above.
PUT_EVENTS_LIMIT_BYTES = PUT_EVENTS_MAX_BYTES - 1
# Same page: a `Time` counts as 14 bytes whatever its value.
_TIME_BYTES = 14

# Delivered-event field -> PutEvents entry field. The rest (id, account, region,
# version) EventBridge assigns itself on the way back in.
_EVENT_TO_ENTRY = {
    "source": "Source",
    "detail-type": "DetailType",
    "detail": "Detail",
    "resources": "Resources",
    "time": "Time",
}


class InvalidEntryError(ValueError):
    """A job body that cannot become a PutEvents entry."""


def _required_text(document: Mapping[str, Any], field: str) -> str:
    value = document.get(field)
    if not isinstance(value, str) or not value:
        raise InvalidEntryError(f"{field} must be a non-empty string")
    return value


def _detail(value: Any) -> str:
    """Detail as JSON text of an object, which is all EventBridge matches rules against."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise InvalidEntryError(f"Detail is not JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise InvalidEntryError("Detail must be a JSON object")
        return value
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    raise InvalidEntryError("Detail must be a JSON object or its text")


def _time(value: Any) -> datetime:
    """An ISO-8601 string (as delivered events carry) or epoch seconds, as an aware datetime."""
    if isinstance(value, bool):
        raise InvalidEntryError("Time must be ISO-8601 text or epoch seconds")
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, tz=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise InvalidEntryError("Time is not ISO-8601 text") from exc
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        # Converted here, not by botocore mid-call: a time that has no UTC form
        # (0001-01-01T00:00+01:00) then fails this job alone, not its whole batch.
        return parsed.astimezone(UTC)
    raise InvalidEntryError("Time must be ISO-8601 text or epoch seconds")


def to_entry(body: str, bus: str) -> dict[str, Any]:
    """The PutEvents entry for a job body, addressed to `bus`; InvalidEntryError if none fits."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise InvalidEntryError(f"body is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidEntryError("body must be a JSON object")
    if not any(field in document for field in ("Source", "DetailType", "Detail")):
        document = {
            entry_field: document[event_field]
            for event_field, entry_field in _EVENT_TO_ENTRY.items()
            if event_field in document
        }
    entry: dict[str, Any] = {
        "Source": _required_text(document, "Source"),
        "DetailType": _required_text(document, "DetailType"),
        "Detail": _detail(document.get("Detail")),
        "EventBusName": bus,
    }
    resources = document.get("Resources")
    if resources is not None:
        if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
            raise InvalidEntryError("Resources must be a list of strings")
        if resources:
            entry["Resources"] = resources
    if document.get("Time") is not None:
        entry["Time"] = _time(document["Time"])
    trace_header = document.get("TraceHeader")
    if trace_header is not None:
        if not isinstance(trace_header, str):
            raise InvalidEntryError("TraceHeader must be a string")
        entry["TraceHeader"] = trace_header
    return entry


def entry_size_bytes(entry: Mapping[str, Any]) -> int:
    """An entry's size as EventBridge counts it against the per-request limit."""
    size = _TIME_BYTES if "Time" in entry else 0
    size += sum(len(str(entry[field]).encode()) for field in ("Source", "DetailType", "Detail"))
    size += sum(len(resource.encode()) for resource in entry.get("Resources", ()))
    return size


class EventBusTarget(BatchResubmitter):
    """Puts each job's event on the target bus, up to 10 per PutEvents call."""

    entry_name = "event"

    def __init__(self, client: Client) -> None:
        self._client = client

    async def open(self, target: Target) -> Destination | SendError:
        return Destination(target.arn, PUT_EVENTS_LIMIT_BYTES, PUT_EVENTS_LIMIT_BYTES)

    def prepare(self, target: Target, job: Job) -> Prepared:
        try:
            entry = to_entry(job.body, target.arn)
        except InvalidEntryError as exc:
            raise RefusedError(SendError.refused(Refusal.INVALID_PAYLOAD, str(exc))) from exc
        return Prepared(entry, entry_size_bytes(entry))

    async def send(self, destination: Destination, entries: list[Entry]) -> list[SendError | None]:
        """One PutEvents call; the error (or None) for each entry, in request order."""
        response = await self._client.put_events(Entries=entries)
        results = response.get("Entries", [])
        if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
            raise MalformedResponseError("PutEvents", "Entries is not a list of results")
        errors: list[SendError | None] = []
        for position in range(len(entries)):
            if position >= len(results):
                # EventBridge answers every entry in order; a short answer proves nothing.
                errors.append(
                    SendError(
                        ErrorClass.TRANSIENT,
                        "retryd.MissingResult",
                        "PutEvents returned no result for this entry",
                    )
                )
            elif results[position].get("ErrorCode"):
                errors.append(from_batch_failure(results[position]))
            else:
                errors.append(None)
        return errors
