"""Tables fit the terminal: rich tables at its width on a TTY, whole aligned rows in a pipe."""

from __future__ import annotations

import io
import re
import unicodedata
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from retryd.commands import render
from retryd.commands.inspect import InspectReport, QueueInspection, inspect_document
from retryd.commands.plan import Action, PlannedMessage, PlanReport, QueuePlan, plan_document
from retryd.commands.sandbox import DECISION_COLUMNS
from retryd.discovery.survey import Depth
from retryd.models import QueueRef, Target
from retryd.resolve.failure_groups import FailureGroup

ACCOUNT = "123456789012"
CHARGE = f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:charge-customer-card"
MESSAGE_IDS = (
    "5f0c8a39-7e0b-4f55-9a43-2b3e0c6f1d2a",
    "a2b4c6d8-1234-4cde-8f00-0a1b2c3d4e5f",
    "0d9e8f7a-6b5c-4d3e-2f1a-0b9c8d7e6f5a",
)


def _queue(name: str) -> QueueRef:
    return QueueRef(
        name, f"https://sqs/{ACCOUNT}/{name}", f"arn:aws:sqs:eu-west-1:{ACCOUNT}:{name}"
    )


def plan_report() -> PlanReport:
    """A plan as wide as real ones get: UUIDs, long ARNs, a long detail."""
    target = Target.from_arn(CHARGE)
    messages = [
        PlannedMessage(MESSAGE_IDS[0], Action.RESUBMIT, 2, "envelope", target),
        PlannedMessage(
            MESSAGE_IDS[1],
            Action.PARK,
            1,
            "lambda-destination",
            Target.from_arn("arn:aws:lambda:eu-west-1:999999999999:function:drain-bank"),
            "target-not-allowed",
            detail="target arn:aws:lambda:eu-west-1:999999999999:function:drain-bank matches "
            "no allow_targets pattern",
        ),
        PlannedMessage(
            MESSAGE_IDS[2], Action.DEFER, 3, "envelope", target, "breaker-open", 30.0, "open"
        ),
    ]
    queue = _queue("retry-payments-processing-dlq")
    return PlanReport([QueuePlan(queue, Depth(3, 0, 0), messages)], 100)


def inspect_report() -> InspectReport:
    """An inspection with a long error signature and an example message id."""
    group = FailureGroup(
        CHARGE,
        "Timeout: Task timed out after <n> seconds while calling the card processor at <hex>",
        12,
        datetime(2026, 11, 1, 8, 30, tzinfo=UTC),
        datetime(2026, 11, 29, 23, 59, 59, tzinfo=UTC),
        MESSAGE_IDS[0],
    )
    inspection = QueueInspection(
        _queue("retry-payments-processing-dlq"),
        depth=Depth(12, 0, 0),
        feeds=[{"kind": "lambda-async", "source_arn": CHARGE}],
        sampled=12,
        groups=[group],
    )
    return InspectReport([inspection], 100)


def on_terminal(document: render.Document, width: int) -> str:
    """The document as `show` draws it on a terminal `width` columns wide."""
    written = io.StringIO()
    render.show(document, Console(width=width, file=written, highlight=False))
    return written.getvalue()


def _longest(output: str) -> int:
    return max(len(line) for line in output.splitlines())


def test_the_plain_plan_is_wider_than_a_terminal() -> None:
    """The case this is about: one row per line is far wider than 120 columns."""
    assert _longest(render.to_plain(plan_document(plan_report()))) > 120


@pytest.mark.parametrize("width", [80, 120])
def test_the_plan_fits_the_terminal_with_every_key_cell_whole(width: int) -> None:
    """No line is longer than the terminal; message ids, queue and decisions are whole."""
    output = on_terminal(plan_document(plan_report()), width)
    assert _longest(output) <= width
    for message_id in MESSAGE_IDS:
        assert message_id in output
    assert "retry-payments-processing-dlq" in output
    for decision in ("resubmit", "target-not-allowed", "breaker-open"):
        assert decision in output
    assert "1 queue(s), 3 message(s) examined: 1 resubmit, 1 park, 1 defer, 0 hold" in output


def test_a_wide_terminal_gets_a_table_and_a_narrow_one_a_record_per_row() -> None:
    """At 120 columns one header line names every column; at 80, each row is labelled."""
    wide = on_terminal(plan_document(plan_report()), 120).splitlines()
    assert wide[0].split() == ["QUEUE", "MESSAGE", "ID", "RESOLVER", "TARGET", "DECISION", "DETAIL"]
    narrow = on_terminal(plan_document(plan_report()), 80)
    assert re.search(rf"^MESSAGE ID +{MESSAGE_IDS[1]}", narrow, re.MULTILINE)
    assert re.search(r"^DECISION +park target-not-allowed", narrow, re.MULTILINE)
    # Every cell is kept whole in the records: nothing is dropped or cut.
    assert "matches no allow_targets pattern" in narrow


@pytest.mark.parametrize("width", [80, 120])
def test_inspect_fits_the_terminal(width: int) -> None:
    """The failure groups table and the fields above it stay inside the terminal."""
    output = on_terminal(inspect_document(inspect_report()), width)
    assert _longest(output) <= width
    assert MESSAGE_IDS[0] in output
    assert "depth:" in output
    assert "12 visible, 0 in flight, 0 delayed" in output
    # The error wraps at its spaces inside its column: every word is there, none cut.
    words = output.split()
    assert all(word in words for word in inspect_report().queues[0].groups[0].signature.split())


@pytest.mark.parametrize("width", [80, 120])
def test_the_sandbox_table_fits_the_terminal(width: int) -> None:
    """The sandbox's decisions, drawn with its columns, stay inside the terminal."""
    rows = [
        [
            "retry-lambda-failures",
            "Lambda destination record -> charge",
            "1",
            "resubmitted",
            "lambda charge (attempt 3)",
        ],
        [
            "retry-payments",
            "poison: forged target in another account",
            "1",
            "parked",
            "target-not-allowed: target arn:aws:lambda:us-east-1:999999999999:function:drain-bank "
            "matches no allow_targets pattern",
        ],
    ]
    output = on_terminal(render.Document([[render.Table(DECISION_COLUMNS, rows)]]), width)
    assert _longest(output) <= width
    assert "resubmitted" in output
    assert "parked" in output


def test_in_a_pipe_show_writes_whole_rows_that_split_into_columns(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Not a TTY: one row per line, columns two spaces apart, every cell whole."""
    render.show(plan_document(plan_report()))
    out = capsys.readouterr().out
    assert out == render.to_plain(plan_document(plan_report())) + "\n"
    lines = out.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == [
        "QUEUE",
        "MESSAGE ID",
        "RESOLVER",
        "TARGET",
        "DECISION",
        "DETAIL",
    ]
    row = re.split(r"\s{2,}", next(line for line in lines if MESSAGE_IDS[1] in line))
    assert row[:5] == [
        "retry-payments-processing-dlq",
        MESSAGE_IDS[1],
        "lambda-destination",
        "arn:aws:lambda:eu-west-1:999999999999:function:drain-bank",
        "park target-not-allowed",
    ]


def test_control_characters_from_a_message_reach_no_terminal() -> None:
    """An escape sequence in an error is shown spelled out, in both forms; `[...]` is not markup."""
    report = inspect_report()
    group = report.queues[0].groups[0]
    group.signature = "Boom: \x1b]0;owned\x07 [bold red]\u202ehidden[/] \ud800"
    for output in (
        render.to_plain(inspect_document(report)),
        on_terminal(inspect_document(report), 200),
    ):
        assert "\x1b" not in output
        assert "\x07" not in output
        assert "\u202e" not in output
        for spelled in ("\\x1b]0;owned\\x07", "[bold", "red]\\u202ehidden[/]", "\\ud800"):
            assert spelled in output
        output.encode("utf-8")


@given(st.text(max_size=200))
def test_printable_leaves_no_control_character(text: str) -> None:
    """Whatever the text, what is shown has no control, bidi override or lone surrogate."""
    shown = render.printable(text)
    assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in shown)
    assert not any(0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069 for c in shown)
    shown.encode("utf-8")
    if text.isprintable():
        assert shown == text
