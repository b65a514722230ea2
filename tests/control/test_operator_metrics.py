"""A cycle exports the operator's state: each pause, and the redrive jobs by state and outcome."""

from __future__ import annotations

import math
from collections import Counter

import anyio
from prometheus_client import CollectorRegistry

from retryd.control.jobs import (
    JobState,
    JobStore,
    MessageResult,
    RedriveJob,
    job_metrics,
    latest_results,
    tally,
)
from retryd.control.memory import MemoryControlStore, reset_shared
from retryd.control.pauses import add_pause
from retryd.models import Outcome
from retryd.service.lifecycle import run_once
from tests.conftest import SettingsFactory
from tests.world import ACCOUNT, REGION, World

CHARGE = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:charge"


def test_a_cycle_exports_pauses_and_jobs(world: World, make_settings: SettingsFactory) -> None:
    """After one cycle: a gauge per pause (its end), jobs by state, job messages by outcome."""
    reset_shared()
    world.create_queue("retryd-parking")
    settings = make_settings()

    async def arrange() -> None:
        store = MemoryControlStore()
        await add_pause(store, CHARGE, reason="migration", by="me", until_s=None)
        await add_pause(store, "*", reason="all", by="me", until_s=4_000_000_000.0)
        jobs = JobStore(store, 3_600)
        done = RedriveJob("rd-1", "parking", {"sources": ["parking"]}, "me", state=JobState.DONE)
        results = [
            MessageResult("m1", Outcome.FAILED, "transient-error", CHARGE),
            MessageResult("m2", Outcome.RESUBMITTED, target=CHARGE),
            MessageResult("m3", Outcome.FAILED, "target-rejected", CHARGE),
            # m1 again, on a resume: its latest result is what counts.
            MessageResult("m1", Outcome.RESUBMITTED, target=CHARGE),
        ]
        await jobs.add_results(done, results)
        tally(done, latest_results(results))
        await jobs.save(done)
        await jobs.save(RedriveJob("rd-2", "dlq", {"sources": ["retry-a"]}, "me", JobState.STOPPED))

    anyio.run(arrange)
    registry = CollectorRegistry()
    anyio.run(lambda: run_once(settings, registry=registry))
    value = registry.get_sample_value
    assert value("retryd_pause_end_timestamp_seconds", {"pattern": CHARGE}) == math.inf
    assert value("retryd_pause_end_timestamp_seconds", {"pattern": "*"}) == 4_000_000_000.0
    assert value("retryd_redrive_jobs", {"state": "done"}) == 1
    assert value("retryd_redrive_jobs", {"state": "stopped"}) == 1
    labels = {"kind": "parking", "outcome": "resubmitted"}
    assert value("retryd_redrive_job_messages", labels) == 2
    assert value("retryd_redrive_job_messages", {"kind": "parking", "outcome": "failed"}) == 1
    reset_shared()


def test_job_metrics_of_an_empty_index_are_empty() -> None:
    """No jobs stored: nothing by state, nothing by outcome."""
    assert job_metrics(None) == (Counter(), Counter())
