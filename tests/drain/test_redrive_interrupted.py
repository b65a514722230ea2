"""A redrive job stopped in the middle of a step keeps the step's accounting (moto server)."""

from __future__ import annotations

from typing import Any

import anyio

from retryd.aws import open_clients
from retryd.control.jobs import JobState, JobStore, RedriveJob, latest_results, new_job_id
from retryd.control.memory import MemoryControlStore
from retryd.drain.redrive import Spec
from retryd.models import Outcome
from retryd.targets.sender import Sent
from tests.conftest import SettingsFactory
from tests.drain.redrive_helpers import job_redrive
from tests.world import World, envelope

PARKING = "retryd-parking"
DLQ = "retry-orders"
TTL_S = 86_400.0


def test_a_signal_after_the_target_took_a_copy_keeps_it_in_the_job(
    world: World, make_settings: SettingsFactory
) -> None:
    """Ctrl-C lands just after the target took a step's copy: the original is deleted from its
    DLQ, so the job's stored results and counts must say it was resubmitted."""
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    world.create_queue("dest-a")
    world.send(DLQ, envelope("sqs", world.queue_arn("dest-a"), {"n": 1}))
    settings = make_settings()
    spec = Spec(sources=(DLQ,), ramp=(5,), canary_wait_s=0)
    store = MemoryControlStore()
    job = RedriveJob(new_job_id(), spec.kind, spec.to_json(), "tester")

    async def main() -> None:
        jobs = JobStore(store, TTL_S)
        await jobs.save(job)
        async with open_clients(settings.aws) as clients:
            redrive = job_redrive(settings, clients, store, spec, job)
            await redrive.prepare()
            assert redrive._pipeline is not None
            sender = redrive._pipeline._sender
            send = sender.send

            with anyio.CancelScope() as interrupted:

                async def send_then_signal(*args: Any, **kwargs: Any) -> Sent:
                    sent = await send(*args, **kwargs)
                    # What until_signalled does on SIGINT: cancel the running job.
                    interrupted.cancel()
                    return sent

                sender.send = send_then_signal  # type: ignore[method-assign]
                await redrive.execute(job, jobs)

    anyio.run(main)
    assert world.depth("dest-a") == 1
    assert world.depth(DLQ) == 0
    stored = anyio.run(JobStore(store, TTL_S).load, job.id)
    assert stored.state is JobState.STOPPED
    results = latest_results(anyio.run(JobStore(store, TTL_S).results, stored))
    assert [r.outcome for r in results.values()] == [Outcome.RESUBMITTED]
    assert stored.outcome_totals()[Outcome.RESUBMITTED] == 1
