"""How the operator commands show their reports as text (`plan`, `inspect`).

A report is first turned into blocks (lines, tables, labelled fields), and the
blocks are then written out; the commands only choose what goes in them. JSON
output is not made here: each report's `to_json` is the machine-readable form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from retryd.commands.inspect import InspectReport, QueueInspection
    from retryd.commands.plan import PlanReport

# Longest detail shown on one text line (the JSON output keeps all of it).
TEXT_DETAIL_MAX_CHARS = 160
# Between two columns of a table.
COLUMN_GAP = "  "


@dataclass(frozen=True, slots=True)
class Line:
    """One line of text, indented by `indent` spaces."""

    text: str
    indent: int = 0


@dataclass(frozen=True, slots=True)
class Column:
    """One table column: its heading."""

    header: str


@dataclass(frozen=True, slots=True)
class Table:
    """Rows of cells under `columns`; `show_header` False for a table that explains itself."""

    columns: Sequence[Column]
    rows: Sequence[Sequence[str]]
    indent: int = 0
    show_header: bool = True


@dataclass(frozen=True, slots=True)
class Fields:
    """Labelled values, one label per line, its values aligned beneath each other."""

    items: Sequence[tuple[str, Sequence[str]]]
    indent: int = 0


Block = Line | Table | Fields


@dataclass
class Document:
    """Blocks written one after another; `sections` are separated by a blank line."""

    sections: list[list[Block]] = field(default_factory=list)


def clip(text: str, limit: int) -> str:
    """`text` on one line, cut to `limit` characters with `...` when longer."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def when(moment: datetime | None) -> str:
    """A time to the second, in UTC as SQS gives it; `-` when unknown."""
    return moment.strftime("%Y-%m-%d %H:%M:%SZ") if moment else "-"


# -- Plain text: pipes, files, tests ----------------------------------------------------


def aligned(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append((indent + COLUMN_GAP.join([*cells, row[-1]])).rstrip())
    return lines


def _plain_block(block: Block) -> list[str]:
    if isinstance(block, Line):
        return [" " * block.indent + block.text]
    if isinstance(block, Table):
        header = [[column.header for column in block.columns]] if block.show_header else []
        rows = [*header, *(list(row) for row in block.rows)]
        return aligned(rows, " " * block.indent) if rows else []
    width = max((len(label) for label, _ in block.items), default=0) + len(": ")
    lines: list[str] = []
    for label, values in block.items:
        head = " " * block.indent + f"{label}:".ljust(width)
        lines.extend(
            (head if index == 0 else " " * len(head)) + value for index, value in enumerate(values)
        )
    return lines


def to_plain(document: Document) -> str:
    """The document as plain aligned text: every cell whole, one row per line."""
    return "\n\n".join(
        "\n".join(line for block in section for line in _plain_block(block))
        for section in document.sections
    )


# -- What each command shows ------------------------------------------------------------

PLAN_COLUMNS = (
    Column("QUEUE"),
    Column("MESSAGE ID"),
    Column("RESOLVER"),
    Column("TARGET"),
    Column("DECISION"),
    Column("DETAIL"),
)
PLAN_COUNT_COLUMNS = (Column("ACTION"), Column("REASON"), Column("COUNT"))
FAILURE_GROUP_COLUMNS = (
    Column("COUNT"),
    Column("TARGET"),
    Column("OLDEST"),
    Column("NEWEST"),
    Column("EXAMPLE"),
    Column("ERROR"),
)


def plan_document(report: PlanReport) -> Document:
    """Per message one row, then the counts by queue and decision."""
    blocks: list[Block] = []
    rows = [
        [
            plan.queue.name,
            message.message_id,
            message.resolver or "-",
            message.target.arn if message.target else "-",
            message.decision(),
            clip(message.detail, TEXT_DETAIL_MAX_CHARS),
        ]
        for plan in report.queues
        for message in plan.messages
    ]
    if rows:
        blocks += [Table(PLAN_COLUMNS, rows), Line("")]
    summary = report.summary()
    blocks.append(
        Line(
            f"{summary['queues']} queue(s), {summary['messages']} message(s) examined: "
            + ", ".join(f"{count} {action}" for action, count in summary["actions"].items())
        )
    )
    for plan in report.queues:
        depth = plan.depth.describe() if plan.depth else "depth unknown"
        note = " (--max-messages reached)" if plan.truncated else ""
        blocks.append(Line(f"{plan.queue.name}: {len(plan.messages)} examined{note}; {depth}", 2))
        counted = sorted(plan.counts().items())
        if counted:
            blocks.append(
                Table(
                    PLAN_COUNT_COLUMNS,
                    [[action, reason or "", str(count)] for (action, reason), count in counted],
                    indent=4,
                    show_header=False,
                )
            )
        blocks += [Line(f"warning: {warning}", 4) for warning in plan.warnings]
        blocks += [Line(f"error: {error}", 4) for error in plan.errors]
    return Document([blocks])


def _inspection_blocks(inspection: QueueInspection) -> list[Block]:
    blocks: list[Block] = [Line(f"{inspection.queue.name}  {inspection.queue.arn}")]
    fed_by = [f"{feed['kind']} {feed['source_arn']}" for feed in inspection.feeds]
    if inspection.route:
        fed_by.append(f"static route -> {inspection.route}")
    note = " (--max-messages reached)" if inspection.truncated else ""
    blocks.append(
        Fields(
            [
                ("depth", [inspection.depth.describe() if inspection.depth else "unknown"]),
                ("fed by", fed_by or ["nothing found"]),
                ("sampled", [f"{inspection.sampled} message(s){note}"]),
            ],
            indent=2,
        )
    )
    if inspection.groups:
        rows = [
            [
                str(group.count),
                group.target,
                when(group.oldest),
                when(group.newest),
                group.example_message_id,
                group.signature,
            ]
            for group in inspection.groups
        ]
        blocks.append(Table(FAILURE_GROUP_COLUMNS, rows, indent=2))
    blocks += [Line(f"warning: {warning}", 2) for warning in inspection.warnings]
    blocks += [Line(f"error: {error}", 2) for error in inspection.errors]
    return blocks


def inspect_document(report: InspectReport) -> Document:
    """A section per DLQ: its depth, its feeds, and a table of failure groups."""
    sections = [_inspection_blocks(inspection) for inspection in report.queues]
    return Document(sections or [[Line("no DLQs to inspect")]])
