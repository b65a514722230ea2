"""Pauses: "hold every message for these targets" until resumed or until a time.

All pauses live in one document, so a cycle learns them with one read; every
replica and every restart reads the same document (see store.py), which is how
a pause made by one process is honoured by all of them from their next cycle.
A pause that has ended (its `until` passed) is simply ignored, then dropped at
the next write.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import anyio

from retryd.admission.paused import ALL_TARGETS, Pause, PauseSet, check_pattern
from retryd.aws import AwsClients
from retryd.control.factory import control_store
from retryd.control.store import Body, ControlStore, read_body, update
from retryd.settings import LedgerSettings

__all__ = ["ALL_TARGETS", "Pause", "PauseSet", "add_pause", "load_pauses", "remove_pauses"]

PAUSES_DOC = "pauses"


def _pauses(body: Body | None) -> list[Pause]:
    return [Pause.from_json(raw) for raw in (body or {}).get("pauses", [])]


async def pauses_in_force(settings: LedgerSettings, clients: AwsClients) -> list[Pause]:
    """The pauses in force now, for `plan` and `inspect`; nothing is created to read them.

    A SQLite ledger file that does not exist yet holds no pauses (and a dry run
    must not create it).
    """
    if settings.backend == "sqlite" and not await anyio.Path(settings.path).exists():
        return []
    return (await load_pauses(control_store(settings, clients))).active(time.time())


async def load_pauses(store: ControlStore) -> PauseSet:
    """Every pause stored (ended ones included; `PauseSet` ignores them)."""
    return pause_set(await read_body(store, PAUSES_DOC))


def pause_set(body: Body | None) -> PauseSet:
    """The pauses in a stored pauses document (None: none stored)."""
    return PauseSet(tuple(_pauses(body)))


async def add_pause(
    store: ControlStore,
    pattern: str,
    *,
    reason: str,
    by: str,
    until_s: float | None,
    now_s: float | None = None,
) -> Pause:
    """Store a new pause (a pause on the same pattern is replaced) and return it."""
    now_s = time.time() if now_s is None else now_s
    pause = Pause(uuid.uuid4().hex[:8], check_pattern(pattern), reason, by, now_s, until_s)

    def change(body: Body | None) -> Body:
        kept = [p for p in _pauses(body) if p.active(now_s) and p.pattern != pattern]
        return {"pauses": [p.to_json() for p in [*kept, pause]]}

    await update(store, PAUSES_DOC, change)
    return pause


async def remove_pauses(
    store: ControlStore, selectors: Iterable[str], *, now_s: float | None = None
) -> list[Pause]:
    """End the pauses whose id or pattern is among `selectors` (`*` with --all: every one)."""
    now_s = time.time() if now_s is None else now_s
    wanted = set(selectors)
    removed: list[Pause] = []

    def change(body: Body | None) -> Body | None:
        removed.clear()
        current = [p for p in _pauses(body) if p.active(now_s)]
        kept: list[Pause] = []
        for pause in current:
            hit = ALL_TARGETS in wanted or pause.id in wanted or pause.pattern in wanted
            (removed if hit else kept).append(pause)
        if not removed:
            return None
        return {"pauses": [p.to_json() for p in kept]}

    await update(store, PAUSES_DOC, change)
    return removed


def describe(pauses: Sequence[Pause], now_s: float) -> list[str]:
    """One line per pause, as `retryd pauses`, `plan` and `inspect` print them."""
    lines = []
    for pause in pauses:
        ends = (
            "until resumed"
            if pause.until_s is None
            else f"until {_iso(pause.until_s)} ({max(0.0, pause.until_s - now_s):.0f}s left)"
        )
        by = f" by {pause.by}" if pause.by else ""
        lines.append(f"paused {pause.pattern} [{pause.id}] {ends}{by}: {pause.reason}")
    return lines


def _iso(at_s: float) -> str:
    return datetime.fromtimestamp(at_s, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
