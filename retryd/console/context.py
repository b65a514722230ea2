"""What every console handler is handed: the sources, the AWS caller, metrics and templates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2
from aiohttp import web

from retryd.console.documents import Sources
from retryd.console.metrics import ConsoleMetrics

HERE = Path(__file__).parent


@dataclass
class Console:
    """What every handler needs: the sources, who the console is to AWS, and its tools."""

    sources: Sources
    # The AWS caller identity (STS) the console runs as: audited beside the person.
    caller: str
    metrics: ConsoleMetrics
    templates: jinja2.Environment
    ready: bool = True


CONSOLE: web.AppKey[Console] = web.AppKey("console", Console)


def templates() -> jinja2.Environment:
    """Jinja2 with autoescape on for every template: every message byte is untrusted."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def console_of(request: web.Request) -> Console:
    return request.app[CONSOLE]
