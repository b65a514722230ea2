"""What every console handler is handed: the sources, the AWS caller, metrics and templates."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web

from retryd.console.background import BackgroundJobs
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
    # The redrive jobs this console started, running until they end or it stops.
    background: BackgroundJobs = field(default_factory=BackgroundJobs)


CONSOLE: web.AppKey[Console] = web.AppKey("console", Console)


def when(at_s: float | None) -> str:
    """Unix seconds as an ISO 8601 UTC time, for the pages."""
    if at_s is None:
        return "-"
    return datetime.fromtimestamp(float(at_s), tz=UTC).isoformat(timespec="seconds")


def pretty(value: Any) -> str:
    """JSON as indented text (autoescaped where it is shown, like every other field)."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def path_part(value: str) -> str:
    """A value as one segment of a URL path: `/` encoded too (an S3 source's `bucket/prefix`
    is one queue name), which the router takes back as the one segment."""
    return quote(value, safe="")


def templates() -> jinja2.Environment:
    """Jinja2 with autoescape on for every template: every message byte is untrusted."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["pretty"] = pretty
    env.filters["path_part"] = path_part
    return env


def console_of(request: web.Request) -> Console:
    return request.app[CONSOLE]
