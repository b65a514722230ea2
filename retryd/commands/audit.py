"""`retryd audit`: the latest operator actions, newest first."""

from __future__ import annotations

import json
from typing import Any

from retryd.aws import open_clients
from retryd.commands.operator_input import OperatorInputError
from retryd.commands.timeparse import iso
from retryd.control import audit, control_store
from retryd.settings import Settings


async def run_audit(settings: Settings, *, limit: int, output: str) -> int:
    if limit < 1:
        raise OperatorInputError("--limit must be at least 1")
    async with open_clients(settings.aws) as clients:
        records = await audit.latest(control_store(settings.ledger, clients), limit)
    if output == "json":
        print(json.dumps(audit_document(records), indent=2))
        return 0
    if not records:
        print("no audit records")
    for entry in records:
        what = json.dumps(_compact(entry.what), separators=(",", ":"), sort_keys=True)
        print(
            f"{iso(entry.at_s)}  {entry.action:<16} {entry.outcome:<10} n={entry.count:<5} "
            f"{entry.who}  {what}"
        )
    return 0


def audit_document(records: list[audit.AuditRecord]) -> dict[str, Any]:
    """What `retryd audit --output json` prints (and the console's /api/audit answers)."""
    return {"records": [r.to_json() for r in records]}


def _compact(value: Any) -> Any:
    """`value` without its empty parts (unused selectors), for one readable line."""
    if isinstance(value, dict):
        kept = {k: _compact(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, [], {}, "")}
    if isinstance(value, list):
        return [_compact(item) for item in value]
    return value
