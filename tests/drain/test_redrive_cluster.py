"""Redrive jobs share the cluster's breakers and rate budgets with the daemon's replicas."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import anyio
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from retryd.admission.breaker import Breakers, BreakerState
from retryd.admission.ratelimit import RateLimits
from retryd.aws import AwsClients, open_clients
from retryd.cluster.dynamodb import MEMBER_PREFIX, STATE_KEY, DynamoDbCluster
from retryd.control.jobs import JobStore, MessageResult, RedriveJob, new_job_id
from retryd.control.memory import MemoryControlStore
from retryd.drain.redrive import Redrive, Spec
from retryd.ledger import create_table, open_ledger
from retryd.ledger.dynamodb import KEY_ATTRIBUTE
from retryd.metrics import Metrics
from retryd.models import Outcome, Target
from retryd.settings import Settings
from tests.conftest import SettingsFactory
from tests.world import World, envelope

PARKING = "retryd-parking"
DLQ = "retry-orders"
DEST = "dest-a"
TABLE = "retryd-ledger-redrive-cluster"
TTL_S = 86_400.0
MESSAGES = 3


def _settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(
        ledger={"backend": "dynamodb", "table": TABLE},
        breaker={"window_calls": 2, "min_calls": 2, "failure_rate": 0.5, "cooldown_s": 600},
        rate_limit={"per_s": 10_000, "burst": 10_000},
    )


def _daemon(settings: Settings, clients: AwsClients) -> DynamoDbCluster:
    """A daemon replica on the same table, with its own breakers and buckets."""
    breakers = Breakers(settings.breaker, anyio.current_time)
    rates = RateLimits(settings.rate_limit, anyio.current_time)
    return DynamoDbCluster(
        clients.dynamodb,
        TABLE,
        breakers=breakers,
        rates=rates,
        cooldown_s=settings.breaker.cooldown_s,
        member_ttl_s=600,
        me="daemon",
    )


async def _members(clients: AwsClients) -> set[str]:
    answer = await clients.dynamodb.get_item(
        TableName=TABLE, Key={KEY_ATTRIBUTE: {"S": STATE_KEY}}, ConsistentRead=True
    )
    item: dict[str, Any] = dict(answer.get("Item", {}))
    return {name[len(MEMBER_PREFIX) :] for name in item if name.startswith(MEMBER_PREFIX)}


def _world(world: World) -> str:
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    world.create_queue(DEST)
    dest_arn = world.queue_arn(DEST)
    for n in range(MESSAGES):
        world.send(DLQ, envelope("sqs", dest_arn, {"n": n}))
    return dest_arn


def test_a_redrive_does_not_send_to_a_target_the_cluster_found_broken(
    world: World, make_settings: SettingsFactory
) -> None:
    """A daemon replica opened the target's breaker: the redrive defers every message to it
    (breaker-open) instead of sending, and leaves them in their DLQ."""
    dest_arn = _world(world)
    settings = _settings(make_settings)

    async def main() -> list[MessageResult]:
        await create_table(settings)
        store = MemoryControlStore()
        spec = Spec(sources=(DLQ,), ramp=(MESSAGES,), canary_wait_s=0, max_refail=MESSAGES)
        job = RedriveJob(new_job_id(), spec.kind, spec.to_json(), "tester")
        results: list[MessageResult] = []
        async with open_clients(settings.aws) as clients:
            daemon = _daemon(settings, clients)
            breaker = daemon._breakers.for_target(Target.from_arn(dest_arn))
            while breaker.state is BreakerState.CLOSED:
                breaker.record(success=False)
            await daemon.sync()
            async with open_ledger(settings.ledger, clients, owner=f"redrive-{job.id}") as ledger:
                redrive = Redrive(
                    settings,
                    clients,
                    ledger=ledger,
                    metrics=Metrics(CollectorRegistry()),
                    control=store,
                    spec=spec,
                )
                await redrive.prepare()
                await redrive.execute(
                    job, JobStore(store, TTL_S), on_step=lambda _, step: results.extend(step)
                )
        return results

    results = anyio.run(main)
    assert world.depth(DEST) == 0
    assert world.depth(DLQ) == MESSAGES
    assert [(r.outcome, r.reason) for r in results] == [
        (Outcome.DEFERRED, "breaker-open")
    ] * MESSAGES


def _waits(logs: list[MutableMapping[str, Any]]) -> int:
    return sum(line["event"] == "cluster-waiting-to-be-counted" for line in logs)


def test_a_redrive_takes_a_share_of_the_rate_while_it_runs_and_leaves_at_its_end(
    world: World, make_settings: SettingsFactory
) -> None:
    """With one daemon replica live, the job counts two replicas (half of each target's rate
    each) while it runs, is a member of the cluster item, and is gone from it at the end;
    its plan (prepare) does not wait to be counted, its first step does, once."""
    _world(world)
    settings = _settings(make_settings)

    async def main() -> tuple[str, list[int], list[set[str]], set[str], int, list[int]]:
        await create_table(settings)
        store = MemoryControlStore()
        spec = Spec(sources=(DLQ,), ramp=(1,), canary_wait_s=0, max_refail=MESSAGES)
        job = RedriveJob(new_job_id(), spec.kind, spec.to_json(), "tester")
        live: list[int] = []
        members: list[set[str]] = []
        waits: list[int] = []
        async with open_clients(settings.aws) as clients:
            daemon = _daemon(settings, clients)
            await daemon.sync()
            async with open_ledger(settings.ledger, clients, owner=f"redrive-{job.id}") as ledger:
                redrive = Redrive(
                    settings,
                    clients,
                    ledger=ledger,
                    metrics=Metrics(CollectorRegistry()),
                    control=store,
                    spec=spec,
                    member=f"redrive-{job.id}",
                )
                try:
                    with capture_logs() as planning:
                        await redrive.prepare()
                    with capture_logs() as executing:
                        await redrive.execute(
                            job,
                            JobStore(store, TTL_S),
                            on_step=lambda _, __: live.append(redrive.cluster.live),
                        )
                    waits.append(_waits(planning))
                    waits.append(_waits(executing))
                    members.append(await _members(clients))
                finally:
                    await redrive.leave()
            after = await _members(clients)
            await daemon.sync()
        return job.id, live, members, after, daemon.live, waits

    job_id, live, during, after, daemon_live, waits = anyio.run(main)
    assert waits == [0, 1], "a plan sends nothing and does not wait; the first step waits once"
    assert live
    assert set(live) == {2}
    assert during == [{"daemon", f"redrive-{job_id}"}]
    assert after == {"daemon"}
    assert daemon_live == 1
    assert world.depth(DEST) == MESSAGES


def test_a_redrive_to_a_rate_limited_target_sends_at_the_rate_not_in_lumps(
    world: World, make_settings: SettingsFactory
) -> None:
    """A redrive goes through the cycle's admission: twelve messages to a 5/s target with burst
    2 all arrive, and no second at the target's server holds more than burst + rate of them."""
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    world.create_queue(DEST)
    dest_arn = world.queue_arn(DEST)
    count = 12
    for n in range(count):
        world.send(DLQ, envelope("sqs", dest_arn, {"n": n}))
    settings = make_settings(
        ledger={"backend": "dynamodb", "table": TABLE}, rate_limit={"per_s": 5, "burst": 2}
    )

    async def main() -> None:
        await create_table(settings)
        store = MemoryControlStore()
        spec = Spec(sources=(DLQ,), ramp=(count,), canary_wait_s=0, max_refail=count)
        job = RedriveJob(new_job_id(), spec.kind, spec.to_json(), "tester")
        async with (
            open_clients(settings.aws) as clients,
            open_ledger(settings.ledger, clients, owner=f"redrive-{job.id}") as ledger,
        ):
            redrive = Redrive(
                settings,
                clients,
                ledger=ledger,
                metrics=Metrics(CollectorRegistry()),
                control=store,
                spec=spec,
            )
            try:
                await redrive.prepare()
                await redrive.execute(job, JobStore(store, TTL_S))
            finally:
                await redrive.leave()

    anyio.run(main)
    sent_ms = sorted(int(m["Attributes"]["SentTimestamp"]) for m in world.drain(DEST))
    assert len(sent_ms) == count
    in_a_second = max(sum(start <= at < start + 1_000 for at in sent_ms) for start in sent_ms)
    assert in_a_second <= 5 + 2, sent_ms
