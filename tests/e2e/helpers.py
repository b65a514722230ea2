"""What the end-to-end tests share: one cycle with the one-decision-per-message rule checked
every time, the message attributes they put on letters, and the two-account settings.

Each test file had its own copy of these, and the copies had drifted: the rule was checked
with uniqueness in one, by a sum in two, not at all in two more.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import anyio

from retryd.drain.cycle import CycleReport
from retryd.service.lifecycle import run_once
from retryd.settings import Settings
from tests.conftest import quiet_settings
from tests.world import ACCOUNT


def one_decision_each(report: CycleReport) -> CycleReport:
    """The report, once every message received has exactly one decision and none has two.

    The counts alone would let a message decided twice hide behind one never decided.
    """
    assert report.decisions is not None, "the cycle must run with collect=True"
    assert sum(report.outcomes.values()) == report.received == len(report.decisions)
    twice = [
        message_id
        for message_id, count in Counter(d.letter.message_id for d in report.decisions).items()
        if count > 1
    ]
    assert not twice, f"decided more than once: {twice}"
    return report


def cycle(settings: Settings) -> CycleReport:
    """One cycle of `retryd once`, its decisions kept and held to the one-decision rule."""
    report: CycleReport = anyio.run(lambda: run_once(settings, collect=True))
    return one_decision_each(report)


def string(value: str) -> dict[str, str]:
    """An SQS message attribute of type String."""
    return {"DataType": "String", "StringValue": value}


def number(value: int) -> dict[str, str]:
    """An SQS message attribute of type Number."""
    return {"DataType": "Number", "StringValue": str(value)}


def org_settings(
    *,
    regions: Sequence[str],
    member: str,
    member_role: str,
    allow_targets: Iterable[str] | None = None,
    external_id: str | None = None,
    extra: Sequence[Mapping[str, Any]] = (),
    **overrides: Any,
) -> Settings:
    """The test settings over the home account and one member reached through `member_role`,
    both in `regions`, plus any `extra` [[accounts]] entries; the allowlist defaults to every
    listed account's SQS queues."""
    member_entry: dict[str, Any] = {
        "account_id": member,
        "regions": list(regions),
        "role_arn": member_role,
    }
    if external_id is not None:
        member_entry["external_id"] = external_id
    accounts = [{"account_id": ACCOUNT, "regions": list(regions)}, member_entry, *extra]
    if allow_targets is None:
        allow_targets = [f"arn:aws:sqs:*:{account['account_id']}:*" for account in accounts]
    return quiet_settings(
        accounts=accounts, guards={"allow_targets": list(allow_targets)}, **overrides
    )
