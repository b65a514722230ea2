"""The console's own metrics, on its own registry (it is a process of its own, not the daemon)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class ConsoleMetrics:
    """Requests by route and status, and operator actions by kind."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "retryd_console_requests_total",
            "Console requests, by route template and HTTP status.",
            ["route", "status"],
            registry=registry,
        )
        self.actions = Counter(
            "retryd_console_actions_total",
            "Operator actions taken through the console, by kind and outcome.",
            ["kind", "outcome"],
            registry=registry,
        )
