"""How the operator commands show their reports as text (`plan`, `inspect`, `sandbox`).

A report is first turned into blocks (lines, tables, labelled fields); the
commands only choose what goes in them. The blocks are then written for where
they go: on a terminal, as rich tables fitted to its width (each column folds or
truncates as its `Column` says, and never shrinks below its `min_width`); in a
pipe or a file, as plain aligned text with every cell whole on one line, which
`grep`, `cut` and the tests can read. JSON output is not made here: each
report's `to_json` is the machine-readable form.

Whatever a message carries is shown with its control characters escaped
(`\x1b`), so that a dead letter cannot drive the operator's terminal.
"""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.table import Table as RichTable
from rich.text import Text

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
    """One table column: its heading, and how its cells give way on a narrow terminal.

    `fold` wraps a cell over several lines (at spaces, else anywhere: an ARN stays
    whole); `ellipsis` keeps it to one line and cuts it with `…`. `min_width` keeps
    the column readable however many others share the line.
    """

    header: str
    min_width: int | None = None
    overflow: Literal["fold", "ellipsis"] = "fold"
    justify: Literal["left", "right"] = "left"


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


# Text direction overrides and isolates: they can make a line read differently than it is.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _escaped(char: str) -> str:
    # Controls (C0, DEL, C1), and lone surrogates, which JSON can carry but no
    # terminal encoding can print.
    if unicodedata.category(char) in ("Cc", "Cs") or char in _BIDI_CONTROLS:
        # Python's own spelling: `\x1b`, `\n`, `\u202e`, `\ud800`.
        return char.encode("unicode_escape").decode("ascii")
    return char


def printable(text: str) -> str:
    """`text` with control characters (escape sequences, bells, bidi overrides) and lone
    surrogates spelled out, so it can neither drive a terminal nor fail to print."""
    if text.isprintable():
        return text
    return "".join(_escaped(char) for char in text)


def clip(text: str, limit: int) -> str:
    """`text` on one line, cut to `limit` characters with `...` when longer."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def when(moment: datetime | None) -> str:
    """A time to the second, in UTC as SQS gives it; `-` when unknown."""
    return moment.strftime("%Y-%m-%d %H:%M:%SZ") if moment else "-"


# -- Plain text: pipes, files, tests ----------------------------------------------------


def aligned(
    rows: Sequence[Sequence[str]],
    indent: str = "",
    justify: Sequence[Literal["left", "right"]] = (),
) -> list[str]:
    """Columns two spaces apart, left-aligned unless `justify` says; the last is not padded."""
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width)
            if col < len(justify) and justify[col] == "right"
            else cell.ljust(width)
            for col, (cell, width) in enumerate(zip(row, widths, strict=False))
        ]
        lines.append((indent + COLUMN_GAP.join([*cells, row[-1]])).rstrip())
    return lines


def _plain_block(block: Block) -> list[str]:
    if isinstance(block, Line):
        return [" " * block.indent + printable(block.text)]
    if isinstance(block, Table):
        header = [[column.header for column in block.columns]] if block.show_header else []
        rows = [*header, *([printable(cell) for cell in row] for row in block.rows)]
        justify = [column.justify for column in block.columns]
        return aligned(rows, " " * block.indent, justify) if rows else []
    width = max((len(label) for label, _ in block.items), default=0) + len(": ")
    lines: list[str] = []
    for label, values in block.items:
        head = " " * block.indent + f"{label}:".ljust(width)
        lines.extend(
            (head if index == 0 else " " * len(head)) + printable(value)
            for index, value in enumerate(values)
        )
    return lines


def to_plain(document: Document) -> str:
    """The document as plain aligned text: every cell whole, one row per line."""
    return "\n\n".join(
        "\n".join(line for block in section for line in _plain_block(block))
        for section in document.sections
    )


# -- A terminal: rich tables fitted to its width ----------------------------------------


def _indented(renderable: RenderableType, indent: int) -> RenderableType:
    return Padding(renderable, (0, 0, 0, indent), expand=False) if indent else renderable


def _cell(*lines: str) -> Text:
    # A Text, never a str: rich would read `[...]` in a message as markup.
    return Text("\n".join(printable(line) for line in lines))


def _floors(table: Table) -> list[int]:
    """Each column's narrowest: its `min_width`, or less when no cell needs that much."""
    floors = []
    for index, column in enumerate(table.columns):
        longest = max((len(printable(row[index])) for row in table.rows), default=0)
        heading = len(column.header) if table.show_header else 1
        floors.append(max(min(column.min_width or 1, longest), heading, 1))
    return floors


def _min_width(table: Table) -> int:
    """The narrowest the table can be drawn with every column at its floor."""
    floors = _floors(table)
    return table.indent + sum(floors) + len(COLUMN_GAP) * (len(floors) - 1)


def _widths(table: Table, width: int) -> list[int]:
    """Column widths that fill at most `width`: each column its floor, then the space left
    shared out evenly among the columns that want more, none getting more than it needs.

    Evenly and capped, so the short columns (a resolver, a decision) come out whole and
    the long ones (an ARN, a detail) share what remains. Rich's own sharing can push
    columns under their minimum and crop the line; this never does, as long as the
    floors fit (the caller checks `_min_width` first).
    """
    wanted = [
        max(
            [
                len(column.header) if table.show_header else 0,
                *(len(printable(row[i])) for row in table.rows),
            ]
        )
        for i, column in enumerate(table.columns)
    ]
    widths = _floors(table)
    spare = width - table.indent - len(COLUMN_GAP) * (len(widths) - 1) - sum(widths)
    while spare > 0:
        hungry = [i for i, have in enumerate(widths) if have < wanted[i]]
        if not hungry:
            break
        share = max(1, spare // len(hungry))
        for i in hungry:
            given = min(share, wanted[i] - widths[i], spare)
            widths[i] += given
            spare -= given
    return widths


def _records(table: Table) -> RenderableType:
    """A table too wide for the terminal, as one `HEADER: value` record per row."""
    records: list[RenderableType] = []
    for index, row in enumerate(table.rows):
        if index:
            records.append(Text(""))
        grid = RichTable.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(overflow="fold")
        for column, cell in zip(table.columns, row, strict=True):
            grid.add_row(Text(column.header, style="bold"), _cell(cell))
        records.append(grid)
    return _indented(Group(*records), table.indent)


def _rich_block(block: Block, width: int) -> RenderableType:
    if isinstance(block, Line):
        return _indented(Text(printable(block.text), overflow="fold"), block.indent)
    if isinstance(block, Table):
        if _min_width(block) > width:
            # Rich would leave out the columns that do not fit; every cell is kept instead.
            return _records(block)
        table = RichTable(
            box=None,
            show_header=block.show_header,
            header_style="bold",
            pad_edge=False,
            padding=(0, 1),
            show_edge=False,
        )
        for column, column_width in zip(block.columns, _widths(block, width), strict=True):
            table.add_column(
                column.header,
                width=column_width,
                overflow=column.overflow,
                no_wrap=column.overflow == "ellipsis",
                justify=column.justify,
            )
        for row in block.rows:
            table.add_row(*(_cell(cell) for cell in row))
        return _indented(table, block.indent)
    grid = RichTable.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for label, values in block.items:
        grid.add_row(Text(f"{label}:"), _cell(*values))
    return _indented(grid, block.indent)


def to_renderable(document: Document, width: int) -> RenderableType:
    """The document for a rich console `width` columns wide: no line is longer."""
    parts: list[RenderableType] = []
    for index, section in enumerate(document.sections):
        if index:
            parts.append(Text(""))
        parts.extend(_rich_block(block, width) for block in section)
    return Group(*parts)


def show(document: Document, console: Console | None = None) -> None:
    """Print the document: fitted to the terminal when stdout is one, else as plain text."""
    if console is None and not sys.stdout.isatty():
        print(to_plain(document))
        return
    console = console or Console(highlight=False)
    console.print(to_renderable(document, console.width))


# Queue names, message ids and ARNs fold rather than lose characters: they are copied
# into the next command. A detail or an error is a sentence: it wraps at its spaces.
# SQS message ids are UUIDs: never split one over two lines.
MESSAGE_ID_WIDTH = 36
