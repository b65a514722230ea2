"""A redrive's decisions as a cycle's: counted, and settled within the lease of its read."""

from __future__ import annotations

from dataclasses import replace

import anyio
from prometheus_client import CollectorRegistry

from retryd.aws import AwsClients, open_clients
from retryd.control.jobs import JobStore, RedriveJob, new_job_id
from retryd.control.memory import MemoryControlStore
from retryd.drain.operator_pipeline import Step
from retryd.drain.redrive import Redrive, Spec
from retryd.ledger import MemoryLedger
from retryd.metrics import Metrics
from retryd.models import FailReason, Outcome
from retryd.settings import Settings
from tests.conftest import SettingsFactory
from tests.world import World, envelope

PARKING = "retryd-parking"
DLQ = "retry-orders"
TTL_S = 86_400.0


def resubmitted_total(registry: CollectorRegistry) -> float:
    """Every resubmitted decision counted in retryd_messages_total, whatever its queue."""
    return sum(
        sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "retryd_messages_total" and sample.labels["outcome"] == "resubmitted"
    )


def world_with_letters(world: World, count: int) -> None:
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    world.create_queue("dest-a")
    for n in range(count):
        world.send(DLQ, envelope("sqs", world.queue_arn("dest-a"), {"n": n}))


def redrive_for(settings: Settings, clients: AwsClients, registry: CollectorRegistry) -> Redrive:
    store = MemoryControlStore()
    return Redrive(
        settings,
        clients,
        ledger=MemoryLedger(claim_s=300, ttl_s=TTL_S, owner="redrive-test"),
        metrics=Metrics(registry),
        control=store,
        spec=Spec(sources=(DLQ,), ramp=(5,), canary_wait_s=0),
    )


def test_a_redrive_counts_its_decisions_in_messages_total(
    world: World, make_settings: SettingsFactory
) -> None:
    """A redrive's resubmissions are counted in retryd_messages_total, as a cycle's are."""
    world_with_letters(world, 2)
    settings = make_settings()
    registry = CollectorRegistry()

    async def main() -> None:
        async with open_clients(settings.aws) as clients:
            redrive = redrive_for(settings, clients, registry)
            await redrive.prepare()
            store = MemoryControlStore()
            job = RedriveJob(new_job_id(), redrive.spec.kind, redrive.spec.to_json(), "tester")
            await redrive.execute(job, JobStore(store, TTL_S))

    anyio.run(main)
    assert world.depth("dest-a") == 2
    assert resubmitted_total(registry) == 2


def test_a_redrive_step_settles_within_the_lease_of_its_read(
    world: World, make_settings: SettingsFactory
) -> None:
    """A step is bounded by the lease its read took: a message read past its act_by is not sent."""
    world_with_letters(world, 1)
    # No extension past the lease (drain.max_lease_s = the lease), so a lease run out is final.
    settings = make_settings(drain={"visibility_timeout_s": 30, "max_lease_s": 30})

    async def main() -> list[tuple[Outcome, str]]:
        async with open_clients(settings.aws) as clients:
            redrive = redrive_for(settings, clients, CollectorRegistry())
            await redrive.prepare()
            picked = await redrive._pick(1, set())
            # As if the step began only after the lease the read started had run out.
            stale = [replace(item, act_by=anyio.current_time() - 1) for item in picked]
            step = Step()
            await redrive._run_step(stale, step)
            return [(result.outcome, result.reason) for result in step.results]

    assert anyio.run(main) == [(Outcome.FAILED, FailReason.LEASE_EXPIRED)]
    assert world.depth("dest-a") == 0
