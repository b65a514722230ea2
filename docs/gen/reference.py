"""The reference pages, rendered from the code itself so that they cannot drift from what ships.

Each `*_page()` returns one Markdown page: every setting of `retryd.settings.Settings`,
every command and option of the argparse parser, every metric registered by
`retryd.metrics.Metrics`, and the exit codes. `docs/gen/pages.py` writes them into the
site at build time; the tests call the same functions.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import textwrap
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from retryd import errors
from retryd.commands import cli
from retryd.console import api
from retryd.console.metrics import ConsoleMetrics
from retryd.environment import ENV_PREFIX
from retryd.metrics import Metrics
from retryd.settings import Settings

NO_DESCRIPTION = "*(no description in the code)*"

# --- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SettingDoc:
    """One leaf setting as the reference page shows it."""

    group: str
    field: str
    type: str
    default: str
    constraints: str
    description: str
    env: str


def _comments_above_fields(model: type[BaseModel]) -> dict[str, str]:
    """The `#` comment lines directly above each field of a settings class, joined.

    The settings classes explain their fields in comments (the code's reasons), not in
    `Field(description=...)`; the page shows those when there is no description.
    """
    found: dict[str, str] = {}
    pending: list[str] = []
    for line in textwrap.dedent(inspect.getsource(model)).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"\s{4}(\w+)\s*:", line)
        if match and pending:
            found[match.group(1)] = " ".join(pending)
        pending = []
    return found


def _type_name(annotation: Any) -> str:
    """A reader's spelling of a field's type: `int`, `list[str]`, `"a" | "b"`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(f'"{arg}"' for arg in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in args)
    if origin is not None:
        inner = ", ".join(_type_name(arg) for arg in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if isinstance(annotation, type):
        # As a reader writes an optional type: `float | None`, not `float | NoneType`.
        return "None" if annotation is type(None) else annotation.__name__
    return str(annotation)


def _constraints(field: FieldInfo) -> str:
    """The bounds pydantic enforces on a field, as `1 ≤ x ≤ 20`, `> 0`, `length ≥ 3`."""
    lower = upper = ""
    parts = []
    for item in field.metadata:
        if isinstance(item, Ge):
            lower = f"{item.ge} ≤ "
        elif isinstance(item, Gt):
            lower = f"{item.gt} < "
        elif isinstance(item, Le):
            upper = f" ≤ {item.le}"
        elif isinstance(item, Lt):
            upper = f" < {item.lt}"
        elif isinstance(item, MinLen):
            parts.append(f"length ≥ {item.min_length}")
        elif isinstance(item, MaxLen):
            parts.append(f"length ≤ {item.max_length}")
    if lower or upper:
        parts.insert(0, f"{lower}x{upper}")
    return ", ".join(parts)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "(group defaults)"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value!r}`"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The settings class a field holds, directly or as the items of a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def _describe(field: FieldInfo, name: str, comments: dict[str, str]) -> str:
    return field.description or comments.get(name) or NO_DESCRIPTION


def setting_docs() -> Iterator[SettingDoc]:
    """Every leaf setting, group by group, in the order `Settings` declares them."""
    for group, group_field in Settings.model_fields.items():
        model = _model_of(group_field.annotation)
        if model is None:
            continue
        comments = _comments_above_fields(model)
        for name, field in model.model_fields.items():
            env = f"{ENV_PREFIX}{group.upper()}__{name.upper()}"
            if typing.get_origin(group_field.annotation) is list:
                # A list of tables is one variable holding JSON, not one per field.
                env = f"{ENV_PREFIX}{group.upper()} (JSON)"
            yield SettingDoc(
                group=group,
                field=name,
                type=_type_name(field.annotation),
                default=_default(field),
                constraints=_constraints(field),
                description=_describe(field, name, comments),
                env=env,
            )


# A code span: Python-Markdown's tables do not split a row inside one, and show a
# backslash in one as written, so its pipes stay as they are.
_CODE_SPAN = re.compile(r"(`+)(?:.+?)\1")


def _cell(text: str) -> str:
    """`text` as one table cell: on one line, its pipes escaped outside code spans only."""
    text = text.replace("\n", " ")
    kept: list[str] = []
    start = 0
    for span in _CODE_SPAN.finditer(text):
        kept += [text[start : span.start()].replace("|", "\\|"), span.group(0)]
        start = span.end()
    kept.append(text[start:].replace("|", "\\|"))
    return "".join(kept)


def _rule_tables(group: str, model: type[BaseModel]) -> list[str]:
    """Tables for the per-item fields of list settings nested in a group (`backoff.targets`)."""
    lines = []
    for name, field in model.model_fields.items():
        item = _model_of(field.annotation)
        if item is None or typing.get_origin(field.annotation) is not list:
            continue
        comments = _comments_above_fields(item)
        lines += [
            "",
            f"### `[[{group}.{name}]]`",
            "",
            f"{_cell(inspect.getdoc(item) or '')} Write one `[[{group}.{name}]]` table per rule.",
            "",
            "| field | type | default | bounds | description |",
            "|---|---|---|---|---|",
        ]
        for sub, sub_field in item.model_fields.items():
            lines.append(
                f"| `{sub}` | {_cell(f'`{_type_name(sub_field.annotation)}`')} | "
                f"{_default(sub_field)} | {_cell(_constraints(sub_field))} | "
                f"{_cell(_describe(sub_field, sub, comments))} |"
            )
    return lines


def settings_page() -> str:
    """The settings reference: one section per group, one row per field."""
    lines = [
        "# Settings reference",
        "",
        "Generated from `retryd.settings.Settings` when the site is built. Every field can",
        "be set in the TOML file (`[group]` table, `field = value`) or overridden by the",
        f"environment variable `{ENV_PREFIX}<GROUP>__<FIELD>`; the environment wins. Lists",
        "and tables in an environment variable are written as JSON. See",
        "[Configuration](../configuration.md) for how the file is found and validated.",
    ]
    docs = list(setting_docs())
    for group, group_field in Settings.model_fields.items():
        model = _model_of(group_field.annotation)
        if model is None:
            continue
        is_list = typing.get_origin(group_field.annotation) is list
        heading = f"[[{group}]]" if is_list else f"[{group}]"
        required = " (required)" if group_field.is_required() else ""
        lines += ["", f"## `{heading}`{required}", "", _cell(inspect.getdoc(model) or "")]
        if is_list:
            lines += ["", f"A list: write one `[[{group}]]` table per item."]
        lines += [
            "",
            "| field | type | default | bounds | description | environment variable |",
            "|---|---|---|---|---|---|",
        ]
        for doc in (d for d in docs if d.group == group):
            lines.append(
                f"| `{doc.field}` | {_cell(f'`{doc.type}`')} | {doc.default} | "
                f"{_cell(doc.constraints)} | {_cell(doc.description)} | `{doc.env}` |"
            )
        lines += _rule_tables(group, model)
    return "\n".join(lines) + "\n"


# --- command line -----------------------------------------------------------------------------


def _subcommands(
    parser: argparse.ArgumentParser,
) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand of `parser`."""
    for action in parser._actions:  # argparse offers no public walk over its subparsers
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def _needs_subcommand(parser: argparse.ArgumentParser) -> bool:
    return any(
        isinstance(action, argparse._SubParsersAction) and action.required
        for action in parser._actions
    )


def commands(
    parser: argparse.ArgumentParser | None = None, prefix: str = "retryd"
) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """Every command that does something (the leaves of the subcommand tree, and a command
    that runs without one of its actions), depth first."""
    parser = parser or cli.build_parser()
    for name, help_text, sub in _subcommands(parser):
        full = f"{prefix} {name}"
        children = list(_subcommands(sub))
        if not children or not _needs_subcommand(sub):
            # A command with actions that also runs bare (`retryd jobs`) gets its section.
            yield full, help_text, sub
        if children:
            yield from commands(sub, full)


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.option_strings:
            name = "`, `".join(action.option_strings)
            if action.nargs != 0:
                shown = action.metavar
                if shown is None and action.choices is not None:
                    shown = "{" + ",".join(str(choice) for choice in action.choices) + "}"
                name += f" {shown or action.dest.upper()}"
        else:
            name = str(action.metavar or action.dest)
            if action.nargs in ("*", "?"):
                name = f"[{name} ...]" if action.nargs == "*" else f"[{name}]"
        choices = ""
        if action.choices is not None and not isinstance(action.choices, range):
            choices = ", ".join(f"`{choice}`" for choice in action.choices)
        elif isinstance(action.choices, range):
            choices = f"{action.choices.start} to {action.choices.stop - 1}"
        default = ""
        if action.default not in (None, False, argparse.SUPPRESS) and action.nargs != "*":
            default = f"`{action.default}`"
        help_text = action.help or NO_DESCRIPTION
        rows.append(f"| `{name}` | {choices} | {default} | {_cell(help_text)} |")
    return rows


@contextmanager
def _help_width(columns: int = 90) -> Iterator[None]:
    """argparse wraps help to the terminal's width; the page must not depend on who builds it."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(columns)
    try:
        yield
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def cli_page() -> str:
    """The command-line reference: every command, its usage and every option."""
    with _help_width():
        return _cli_page(cli.build_parser())


def _cli_page(parser: argparse.ArgumentParser) -> str:
    lines = [
        "# Command-line reference",
        "",
        "Generated from the argparse parser in `retryd/commands/cli.py` when the site is",
        "built. `python -m retryd ...` is the same as `retryd ...`. What each command prints",
        "and when to use it is under [Operations](../operations/index.md).",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    found = list(commands(parser))
    for name, help_text, _ in found:
        anchor = name.replace(" ", "-")
        lines.append(f"| [`{name}`](#{anchor}) | {_cell(help_text)} |")
    for name, help_text, sub in found:
        anchor = name.replace(" ", "-")
        lines += ["", f"## `{name}` {{#{anchor}}}", ""]
        lines += [_cell(sub.description or help_text), ""]
        lines += ["```text", sub.format_usage().strip().removeprefix("usage: "), "```", ""]
        rows = _option_rows(sub)
        if rows:
            lines += ["| option | choices | default | meaning |", "|---|---|---|---|", *rows]
        else:
            lines.append("No options.")
    return "\n".join(lines) + "\n"


# --- metrics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricDoc:
    """One metric family as Prometheus's text format names it."""

    name: str
    type: str
    help: str
    labels: tuple[str, ...]


# prometheus_client names a family without these suffixes; the text format adds them.
_EXPOSED_SUFFIX = {"counter": "_total", "info": "_info"}


def metric_docs(owner: Callable[[CollectorRegistry], object] = Metrics) -> list[MetricDoc]:
    """Every metric `owner` (default: `Metrics`) registers on a fresh registry, in order."""
    registry = CollectorRegistry()
    owner(registry)
    found = []
    # The registry lists its collectors only through this attribute; a collector's label
    # names are fixed when it is built, and `collect()` gives each family's name and help.
    for collector in list(registry._collector_to_names):
        labels = tuple(getattr(collector, "_labelnames", ()))
        for family in collector.collect():
            if family.type == "info":
                # An info metric's labels are its value, set once at registration.
                seen = {key for sample in family.samples for key in sample.labels}
                labels += tuple(sorted(seen - set(labels)))
            found.append(
                MetricDoc(
                    name=family.name + _EXPOSED_SUFFIX.get(family.type, ""),
                    type=family.type,
                    help=family.documentation or NO_DESCRIPTION,
                    labels=labels,
                )
            )
    return found


def metrics_page() -> str:
    """The metrics reference: name, type, labels and help of every metric."""
    lines = [
        "# Metrics reference",
        "",
        "Generated from `retryd.metrics.Metrics` on a fresh registry when the site is built:",
        "this is every metric `retryd run` exports on `/metrics`. What the label values are",
        "and how to read the metrics is under [Metrics and probes](../operations/metrics.md).",
        "",
        "| metric | type | labels | help |",
        "|---|---|---|---|",
    ]
    for doc in metric_docs():
        labels = ", ".join(f"`{label}`" for label in doc.labels) or "—"
        kind = "info (a gauge in the text format)" if doc.type == "info" else doc.type
        lines.append(f"| `{doc.name}` | {kind} | {labels} | {_cell(doc.help)} |")
    lines += [
        "",
        "## retryd console",
        "",
        "`retryd console` is a process of its own with its own registry",
        "(`retryd.console.metrics.ConsoleMetrics`), served on its own `/metrics`",
        "(see [Console](../console.md)).",
        "",
        "| console metric | type | labels | help |",
        "|---|---|---|---|",
    ]
    for doc in metric_docs(ConsoleMetrics):
        labels = ", ".join(f"`{label}`" for label in doc.labels) or "—"
        lines.append(f"| `{doc.name}` | {doc.type} | {labels} | {_cell(doc.help)} |")
    return "\n".join(lines) + "\n"


# --- exit codes -------------------------------------------------------------------------------


def exit_codes() -> list[tuple[int, str]]:
    """(code, meaning) for every exit status retryd documents, from `retryd.errors.ExitCode`."""
    return [(int(code), code.meaning) for code in errors.ExitCode]


def _errors_by_code() -> dict[int, list[type[errors.RetrydError]]]:
    found: dict[int, list[type[errors.RetrydError]]] = {}
    pending: list[type[errors.RetrydError]] = [errors.RetrydError]
    while pending:
        error = pending.pop(0)
        found.setdefault(int(error.exit_code), []).append(error)
        pending += error.__subclasses__()
    return found


def exit_codes_page() -> str:
    """The exit-code reference, with the error classes that end a command with each code."""
    raised = _errors_by_code()
    lines = [
        "# Exit codes",
        "",
        "Generated from `retryd/commands/cli.py` and `retryd/errors.py` when the site is",
        "built. Which command returns which code, and when, is said on each command's page",
        "under [Operations](../operations/index.md).",
        "",
        "| code | meaning | raised as |",
        "|---|---|---|",
    ]
    for code, meaning in exit_codes():
        classes = "; ".join(
            f"`{error.__name__}`: {_cell(inspect.getdoc(error) or '')}"
            for error in raised.get(code, [])
        )
        lines.append(f"| {code} | {_cell(meaning)} | {classes or '—'} |")
    return "\n".join(lines) + "\n"


# --- console API ------------------------------------------------------------------------------


def api_page() -> str:
    """The console's JSON API: every route of `retryd.console.api.ROUTES`, as it is served."""
    lines = [
        "# Console API reference",
        "",
        "Generated from the console's route table (`retryd.console.api.ROUTES`, the table",
        "`retryd console` serves) when the site is built. Every route needs a sign-in; a",
        "viewer reads, and a `POST` or `DELETE` needs the operator role **and** a same-origin",
        "request (see [Console](../console.md#security-model)). Answers are JSON with the CLI's",
        'field names; a refusal is `{"error": "..."}` with 400 (bad input), 403, 404, 409',
        "(a refusal the command line would exit non-zero for) or 503 (the control store).",
        "",
        "| route | role | answers | query parameters |",
        "|---|---|---|---|",
    ]
    for route in api.ROUTES:
        params = "<br>".join(f"`{name}`: {meaning}" for name, meaning in route.params) or "—"
        answers = route.answers + (f" Body: {route.body}." if route.body else "")
        lines.append(
            f"| `{route.method} {route.path}` | {route.role} | {_cell(answers)} | {_cell(params)} |"
        )
    return "\n".join(lines) + "\n"
