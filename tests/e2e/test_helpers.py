"""The one-decision-per-message rule the e2e helpers hold every cycle to catches what the
counts alone would not."""

from __future__ import annotations

from collections import Counter

import pytest

from retryd.drain.cycle import CycleReport
from retryd.models import Decision, Outcome
from tests.e2e.helpers import one_decision_each
from tests.native_helpers import letter


def report_of(*decisions: Decision, received: int) -> CycleReport:
    return CycleReport(
        received=received,
        outcomes=Counter(decision.outcome.value for decision in decisions),
        decisions=list(decisions),
    )


def test_one_decision_for_each_message_received_passes() -> None:
    """Two messages, two decisions, two outcomes counted: the report comes back."""
    report = report_of(
        Decision(letter(message_id="m-1"), Outcome.RESUBMITTED),
        Decision(letter(message_id="m-2"), Outcome.PARKED),
        received=2,
    )
    assert one_decision_each(report) is report


def test_a_message_decided_twice_fails_even_when_the_counts_agree() -> None:
    """m-1 decided twice and m-2 never: every sum matches, the uniqueness check does not."""
    report = report_of(
        Decision(letter(message_id="m-1"), Outcome.RESUBMITTED),
        Decision(letter(message_id="m-1"), Outcome.PARKED),
        received=2,
    )
    with pytest.raises(AssertionError, match="decided more than once: \\['m-1'\\]"):
        one_decision_each(report)


def test_a_message_without_a_decision_fails() -> None:
    """Two received, one decided: the counts disagree."""
    report = report_of(Decision(letter(message_id="m-1"), Outcome.RESUBMITTED), received=2)
    with pytest.raises(AssertionError):
        one_decision_each(report)


def test_a_cycle_run_without_its_decisions_kept_fails() -> None:
    """No decisions list (collect=False): the rule cannot be checked, so it is an error."""
    with pytest.raises(AssertionError, match="collect=True"):
        one_decision_each(CycleReport(received=0))
