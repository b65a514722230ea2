"""Audit records: who did what to the messages, when, to how many, and how it ended.

Every operator action (pause, resume, a redrive planned, executed, resumed or
cancelled) is written twice: as an `audit` log event, and into the last
AUDIT_KEEP records kept in the backend, which `retryd audit` lists. "Who" is the
AWS caller identity the command ran as (STS GetCallerIdentity): the one identity
that cannot be typed in wrongly.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aioboto3
import structlog
from botocore.exceptions import BotoCoreError, ClientError

from retryd.aws import client_config
from retryd.classify import from_exception
from retryd.control.store import Body, ControlStore, read_body, update
from retryd.settings import AwsSettings

log = structlog.get_logger("retryd.audit")

AUDIT_DOC = "audit"
# Records kept in the backend, newest last (the log keeps every one).
AUDIT_KEEP = 200
UNKNOWN_CALLER = "unknown"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One operator action."""

    at_s: float
    who: str
    action: str
    # What it was about: the selector, the pause pattern, the job id ...
    what: dict[str, Any] = field(default_factory=dict)
    count: int = 0
    outcome: str = "ok"
    # The person signed in to the console who asked for it ("" from the command line,
    # where the AWS caller is the person's own role).
    person: str = ""

    def to_json(self) -> Body:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Body) -> AuditRecord:
        return cls(
            at_s=float(raw["at_s"]),
            who=str(raw.get("who", UNKNOWN_CALLER)),
            action=str(raw.get("action", "")),
            what=dict(raw.get("what", {})),
            count=int(raw.get("count", 0)),
            outcome=str(raw.get("outcome", "")),
            person=str(raw.get("person", "")),
        )


async def caller_identity(settings: AwsSettings) -> str:
    """The ARN this process calls AWS as; `unknown (why)` when STS cannot say."""
    session = aioboto3.Session()
    try:
        async with session.client("sts", config=client_config(settings)) as sts:
            response = await sts.get_caller_identity()
    except (BotoCoreError, ClientError) as exc:
        return f"{UNKNOWN_CALLER} ({from_exception(exc)})"
    return str(response.get("Arn", UNKNOWN_CALLER))


async def record(
    store: ControlStore,
    *,
    who: str,
    action: str,
    what: dict[str, Any],
    count: int = 0,
    outcome: str = "ok",
    person: str = "",
) -> AuditRecord:
    """Log and store one audit record; a store that cannot be written is logged, not raised.

    The action has happened by the time it is audited: failing it now would only
    hide what was done. The log line is written first, so it is never lost.
    """
    entry = AuditRecord(time.time(), who, action, what, count, outcome, person)
    log.info("audit", **entry.to_json())

    def change(body: Body | None) -> Body:
        records = list((body or {}).get("records", []))
        records.append(entry.to_json())
        return {"records": records[-AUDIT_KEEP:]}

    try:
        await update(store, AUDIT_DOC, change)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("audit-not-stored", action=action, error=str(exc))
    return entry


async def latest(store: ControlStore, limit: int) -> list[AuditRecord]:
    """The newest `limit` records, newest first."""
    raw = (await read_body(store, AUDIT_DOC) or {}).get("records", [])
    return [AuditRecord.from_json(item) for item in reversed(raw)][:limit]
