"""Debian's chromium driven by Playwright: a fresh profile per test, and what a page did."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import (
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Page,
    ViewportSize,
    sync_playwright,
)

from tests.tools import require_tool

# Never `playwright install`: the browser is Debian's, and nothing is downloaded.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Registered before any page script: CSP violations land in a list the test reads.
WATCH_VIOLATIONS = """
window.__violations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__violations.push(e.violatedDirective + ' ' + e.blockedURI);
});
"""


@contextmanager
def chromium(profile: Path, headers: Mapping[str, str] | None = None) -> Iterator[BrowserContext]:
    """A browser context on a fresh --user-data-dir, sending `headers` with every request."""
    path = require_tool("chromium", "chromium")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=path,
            args=CHROMIUM_ARGS,
            headless=True,
            extra_http_headers=dict(headers or {}),
        )
        try:
            yield context
        finally:
            context.close()


@dataclass
class Watched:
    """A page and everything it did that a hostile message must never make it do."""

    page: Page
    dialogs: list[str] = field(default_factory=list)
    csp_messages: list[str] = field(default_factory=list)

    def goto(self, url: str) -> int:
        response = self.page.goto(url)
        assert response is not None
        return response.status

    def violations(self) -> list[str]:
        found: list[str] = self.page.evaluate("window.__violations")
        return found

    def pwned(self) -> Any:
        return self.page.evaluate("window.__pwned")

    def assert_nothing_ran(self) -> None:
        assert self.dialogs == []
        assert self.pwned() is None
        assert self.violations() == []
        assert self.csp_messages == []


def watched(context: BrowserContext) -> Watched:
    page = context.new_page()
    page.add_init_script(WATCH_VIOLATIONS)
    seen = Watched(page)

    def on_dialog(dialog: Dialog) -> None:
        seen.dialogs.append(dialog.message)
        dialog.dismiss()

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            seen.csp_messages.append(message.text)

    page.on("dialog", on_dialog)
    page.on("console", on_console)
    return seen


# The Console page's screenshots: written by the browser tests, so they show the pages
# as they are (a test run that changes a page changes its picture, for the commit).
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "images" / "console"
SCREENSHOT_SIZE: ViewportSize = {"width": 960, "height": 600}


def screenshot(page: Page, name: str, focus: str | None = None) -> Path:
    """The visible part of `page` (scrolled to `focus`, a selector) as
    docs/images/console/<name>.png, small (960x600)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.set_viewport_size(SCREENSHOT_SIZE)
    if focus is not None:
        page.locator(focus).scroll_into_view_if_needed()
    page.screenshot(path=str(path), full_page=False, animations="disabled")
    return path
