"""The sandbox's demo world, drained once on the test's moto server: what each demo shows."""

from __future__ import annotations

import anyio

from retryd.aws import open_clients
from retryd.commands.sandbox import _describe
from retryd.drain.cycle import CycleReport
from retryd.models import Outcome
from retryd.sandbox.world import DemoWorld, build_world, sandbox_settings
from retryd.service.lifecycle import run_once
from tests.world import World


def drain_demo() -> tuple[DemoWorld, CycleReport]:
    """Build the demo world once and run the sandbox's one cycle over it."""

    async def main() -> tuple[DemoWorld, CycleReport]:
        settings = sandbox_settings()
        async with open_clients(settings.aws) as clients:
            demo = await build_world(clients, 1)
        report: CycleReport = await run_once(settings, collect=True)
        return demo, report

    return anyio.run(main)


def test_the_demo_eventbridge_message_retried_185_times_is_resubmitted(world: World) -> None:
    """RETRY_ATTEMPTS=185 (EventBridge's default policy) goes back as retryd's attempt 1."""
    demo, report = drain_demo()

    assert report.decisions is not None
    (decision,) = [
        d
        for d in report.decisions
        if "RETRY_ATTEMPTS=185" in demo.labels.get(d.letter.message_id, "")
    ]
    assert decision.outcome is Outcome.RESUBMITTED
    assert (decision.attempt, decision.source_attempts) == (1, 185)
    assert _describe(decision) == "lambda charge (attempt 1; the source tried 185 before)"
