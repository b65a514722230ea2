"""The generated reference pages render as a reader expects: no stray escapes, readable types."""

from __future__ import annotations

import re

import markdown  # type: ignore[import-untyped]  # no stubs are published with it
import pytest
from aiohttp import web

from docs.gen import reference
from retryd.console import api

PAGES = {
    "settings": reference.settings_page,
    "cli": reference.cli_page,
    "metrics": reference.metrics_page,
    "exit-codes": reference.exit_codes_page,
    "console-api": reference.api_page,
}


def _html(page: str) -> str:
    html: str = markdown.markdown(page, extensions=["tables"])
    return html


@pytest.mark.parametrize("name", sorted(PAGES))
def test_no_code_span_shows_an_escaped_pipe(name: str) -> None:
    """A `|` inside a code span in a table is shown as `|`, never as `\\|`."""
    codes = re.findall(r"<code>(.*?)</code>", _html(PAGES[name]()))
    assert codes, "the page has no code at all"
    assert [code for code in codes if "\\|" in code] == []


def test_a_pipe_outside_code_still_keeps_its_cell() -> None:
    """Escaping outside code spans is kept: the row keeps its columns."""
    assert reference._cell("a | b `c | d`") == "a \\| b `c | d`"


def test_optional_types_read_as_none() -> None:
    """`float | None`, as a reader writes it, and never `NoneType`."""
    page = reference.settings_page()
    assert "NoneType" not in page
    assert "`float | None`" in page


def test_bare_jobs_has_its_own_section() -> None:
    """`retryd jobs` runs without an action (it lists), so it has a section, as its actions do."""
    page = reference.cli_page()
    for name in ("retryd jobs", "retryd jobs list", "retryd jobs show", "retryd jobs cancel"):
        assert f"\n## `{name}` " in page, name


def test_exit_codes_page_lists_sigterm() -> None:
    """143 (SIGTERM during a redrive job) is on the page, with what raises 1 for a lost queue."""
    page = reference.exit_codes_page()
    assert "| 143 |" in page
    assert "QueueNotFoundError" in page


def test_every_console_api_route_is_on_the_api_page() -> None:
    """Each route the console's API serves has its method, path and role on the reference page."""
    app = web.Application()
    api.add_routes(app.router)
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
    }
    page = reference.api_page()
    assert len(served) >= 14
    for method, path in sorted(served):
        if method == "HEAD":
            continue
        row = next((line for line in page.splitlines() if f"| `{method} {path}` |" in line), "")
        expected_role = "operator" if method != "GET" else "viewer"
        assert f"| {expected_role} |" in row, (method, path)
