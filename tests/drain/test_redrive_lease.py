"""A redrive step's lease: every queue it reads is settled within it (moto server)."""

from __future__ import annotations

from typing import Any

import anyio

from retryd.aws import open_clients
from retryd.control.jobs import JobStore, RedriveJob, new_job_id
from retryd.control.memory import MemoryControlStore
from retryd.drain.redrive import Spec
from tests.conftest import SettingsFactory
from tests.drain.redrive_helpers import job_redrive
from tests.world import World, envelope

PARKING = "retryd-parking"
TTL_S = 86_400.0


def test_a_step_from_two_queues_works_within_the_leases_its_read_took(
    world: World, make_settings: SettingsFactory
) -> None:
    """A step reading two DLQs settles both within the lease its read took: the second queue's
    batch may not be given a fresh lease's worth of time after the first queue's work."""
    world.create_queue(PARKING)
    for dlq in ("retry-a", "retry-b"):
        world.create_queue(dlq)
        world.send(dlq, envelope("sqs", world.queue_arn("dest-a"), {"from": dlq}))
    world.create_queue("dest-a")
    settings = make_settings()
    spec = Spec(sources=("retry-a", "retry-b"), ramp=(5,), canary_wait_s=0)
    store = MemoryControlStore()
    job = RedriveJob(new_job_id(), spec.kind, spec.to_json(), "tester")
    deadlines: list[float] = []
    reads: list[float] = []

    async def main() -> None:
        jobs = JobStore(store, TTL_S)
        await jobs.save(job)
        async with open_clients(settings.aws) as clients:
            redrive = job_redrive(settings, clients, store, spec, job)
            await redrive.prepare()
            sources, pipeline = redrive._sources, redrive._pipeline
            assert pipeline is not None
            scan, handle = sources.scan, pipeline.handle

            async def timed_scan(*args: Any, **kwargs: Any) -> Any:
                reads.append(anyio.current_time())
                return await scan(*args, **kwargs)

            async def noted_handle(queue: Any, letters: Any, act_by: float, *rest: Any) -> Any:
                deadlines.append(act_by)
                return await handle(queue, letters, act_by, *rest)

            sources.scan = timed_scan  # type: ignore[method-assign]
            pipeline.handle = noted_handle  # type: ignore[method-assign,assignment]
            await redrive.execute(job, jobs)

    anyio.run(main)
    assert world.depth("dest-a") == 2
    assert len(deadlines) == 2
    lease_s = settings.drain.visibility_timeout_s
    # Each queue's batch within the lease its own read began (not one begun at its handling);
    # the first step read both queues, a second found nothing.
    first_step = reads[:2]
    assert all(d <= read + lease_s for d, read in zip(deadlines, first_step, strict=True))
