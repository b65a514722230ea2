"""Redrive jobs under an operator's concurrent commands (review findings, moto server)."""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from retryd.aws import open_clients
from retryd.control.jobs import JobState, JobStore, MessageResult, RedriveJob, new_job_id
from retryd.control.memory import MemoryControlStore
from retryd.control.store import ControlStore
from retryd.drain.redrive import Spec
from tests.conftest import SettingsFactory
from tests.drain.redrive_helpers import job_redrive
from tests.world import World, envelope

PARKING = "retryd-parking"
DLQ = "retry-orders"
TTL_S = 86_400.0


class CancelledMidStep(JobStore):
    """A job store in which `retryd jobs cancel` runs while the first step is being settled."""

    def __init__(self, store: ControlStore) -> None:
        super().__init__(store, TTL_S)
        self._store_for_cancel = store
        self.cancelled = False

    async def add_results(self, job: RedriveJob, results: Sequence[MessageResult]) -> None:
        if not self.cancelled:
            self.cancelled = True
            # What `retryd jobs cancel` does, from another process.
            other = JobStore(self._store_for_cancel, TTL_S)
            stored = await other.load(job.id)
            stored.state = JobState.CANCELLED
            await other.save(stored)
        await super().add_results(job, results)


def test_a_cancel_while_a_step_runs_stops_the_job_before_its_next_step(
    world: World, make_settings: SettingsFactory
) -> None:
    """`jobs cancel` lands while a step is in flight: the step's own save keeps it cancelled,
    and no further message is sent."""
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    world.create_queue("dest-a")
    for n in range(3):
        world.send(DLQ, envelope("sqs", world.queue_arn("dest-a"), {"n": n}))
    settings = make_settings()
    spec = Spec(sources=(DLQ,), ramp=(1,), canary_wait_s=0)

    async def main() -> tuple[JobState, JobState]:
        store = MemoryControlStore()
        jobs = CancelledMidStep(store)
        job = RedriveJob(new_job_id(), spec.kind, spec.to_json(), "tester")
        await jobs.save(job)
        async with open_clients(settings.aws) as clients:
            redrive = job_redrive(settings, clients, store, spec, job)
            await redrive.prepare()
            ended = await redrive.execute(job, jobs)
        return ended.state, (await JobStore(store, TTL_S).load(job.id)).state

    ended, stored = anyio.run(main)
    assert (ended, stored) == (JobState.CANCELLED, JobState.CANCELLED)
    assert world.depth("dest-a") == 1
    assert world.depth(DLQ) == 2
