"""`retryd pause`, `retryd resume`, `retryd pauses`: hold a target's messages, and let them go.

A pause is stored in the ledger's backend; every replica reads it at the start
of its next cycle and defers the target's messages with reason `paused`
(no attempt spent). Each change is audited.
"""

from __future__ import annotations

import json
import time
from typing import Any

from retryd.aws import open_clients
from retryd.commands.operator_input import OperatorInputError
from retryd.commands.timeparse import iso, parse_duration_s, parse_iso_s
from retryd.control import audit, control_store
from retryd.control.pauses import (
    ALL_TARGETS,
    Pause,
    add_pause,
    describe,
    load_pauses,
    remove_pauses,
)
from retryd.control.store import ControlStore
from retryd.settings import Settings


def pause_end_s(for_text: str | None, until_text: str | None, now_s: float) -> float | None:
    """When a pause ends: from `--for` or `--until` (not both); None: until resumed."""
    if for_text is not None and until_text is not None:
        raise OperatorInputError("give --for or --until, not both")
    try:
        if for_text is not None:
            return now_s + parse_duration_s(for_text)
        if until_text is not None:
            until_s = parse_iso_s(until_text)
            if until_s <= now_s:
                raise OperatorInputError(f"--until {until_text} is in the past")
            return until_s
    except ValueError as exc:
        raise OperatorInputError(str(exc)) from None
    return None


async def pause_targets(
    store: ControlStore,
    *,
    glob: str,
    reason: str,
    until_s: float | None,
    who: str,
    person: str = "",
    now_s: float,
) -> Pause:
    """Store a pause and audit it: what `retryd pause` and the console's pause do."""
    if not reason.strip():
        raise OperatorInputError("--reason must say why (it is shown to whoever finds the pause)")
    try:
        pause = await add_pause(
            store, glob, reason=reason, by=person or who, until_s=until_s, now_s=now_s
        )
    except ValueError as exc:
        raise OperatorInputError(str(exc)) from None
    await audit.record(
        store,
        who=who,
        person=person,
        action="pause",
        what={"pattern": glob, "reason": reason, "until": iso(until_s) if until_s else None},
        count=1,
    )
    return pause


async def resume_targets(
    store: ControlStore, *, selectors: list[str], who: str, person: str = ""
) -> list[Pause]:
    """End the matching pauses and audit it: what `retryd resume` and the console's resume do."""
    removed = await remove_pauses(store, selectors)
    await audit.record(
        store,
        who=who,
        person=person,
        action="resume",
        what={"selectors": selectors, "ended": [p.pattern for p in removed]},
        count=len(removed),
        outcome="ok" if removed else "no-such-pause",
    )
    return removed


def pauses_document(pauses: list[Pause]) -> dict[str, Any]:
    """What `retryd pauses --output json` prints (and the console's /api/pauses answers)."""
    return {"pauses": [p.to_json() for p in pauses]}


async def run_pause(
    settings: Settings,
    *,
    pattern: str | None,
    every: bool,
    reason: str,
    for_text: str | None,
    until_text: str | None,
) -> int:
    if every == (pattern is not None):
        raise OperatorInputError("name one TARGET_GLOB, or --all")
    if not reason.strip():
        raise OperatorInputError("--reason must say why (it is shown to whoever finds the pause)")
    now_s = time.time()
    until_s = pause_end_s(for_text, until_text, now_s)
    glob = ALL_TARGETS if every else str(pattern)
    async with open_clients(settings.aws) as clients:
        store = control_store(settings.ledger, clients)
        who = await audit.caller_identity(settings.aws)
        pause = await pause_targets(
            store, glob=glob, reason=reason, until_s=until_s, who=who, now_s=now_s
        )
    print(describe([pause], now_s)[0])
    print("every replica holds these messages from its next cycle (deferred, reason paused)")
    return 0


async def run_resume(settings: Settings, *, selectors: list[str], every: bool) -> int:
    if every == bool(selectors):
        raise OperatorInputError("name the paused TARGET_GLOB(s) or pause id(s), or --all")
    wanted = [ALL_TARGETS] if every else selectors
    async with open_clients(settings.aws) as clients:
        store = control_store(settings.ledger, clients)
        who = await audit.caller_identity(settings.aws)
        removed = await resume_targets(store, selectors=wanted, who=who)
    if not removed:
        print(f"no pause in force matches {' '.join(wanted)}")
        return 1
    for pause in removed:
        print(f"resumed {pause.pattern} [{pause.id}] (paused for: {pause.reason})")
    print("messages held for these targets go at their next cycle")
    return 0


async def run_pauses(settings: Settings, *, output: str) -> int:
    now_s = time.time()
    async with open_clients(settings.aws) as clients:
        pauses = (await load_pauses(control_store(settings.ledger, clients))).active(now_s)
    if output == "json":
        print(json.dumps(pauses_document(pauses), indent=2))
    elif not pauses:
        print("no pauses in force")
    else:
        print("\n".join(describe(pauses, now_s)))
    return 0
