"""The cluster backend that goes with the configured ledger."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from retryd.admission.breaker import Breakers
from retryd.admission.guards import Guards, build_guards
from retryd.admission.ratelimit import RateLimits
from retryd.cluster.base import Cluster, SingleReplica
from retryd.cluster.dynamodb import AGREE_S, DynamoDbCluster
from retryd.ledger.base import Ledger, default_owner
from retryd.metrics import Metrics
from retryd.settings import Settings

if TYPE_CHECKING:
    # A type only: see the same import in cluster/dynamodb.py.
    from retryd.aws import AwsClients


def member_ttl_s(settings: Settings) -> float:
    """How long a heartbeat lasts: two of the longest cycles, so a busy replica stays live.

    Heartbeats are written at the start of each cycle. A cycle stops taking new
    batches after `drain.cycle_budget_s`, but a batch already received may run, its
    lease extended while work on it is in flight, for up to `drain.max_lease_s` (never
    less than one lease), and `schedule.interval_s` of rest follows.
    """
    drain = settings.drain
    return 2.0 * (settings.schedule.interval_s + drain.cycle_budget_s + drain.lease_cap_s)


def open_cluster(
    settings: Settings,
    clients: AwsClients,
    *,
    breakers: Breakers,
    rates: RateLimits,
    me: str | None = None,
) -> Cluster:
    """DynamoDB-backed agreement for the dynamodb ledger; otherwise a single replica."""
    if settings.ledger.backend != "dynamodb":
        return SingleReplica(settings.ledger.backend)
    return DynamoDbCluster(
        clients.dynamodb,
        settings.ledger.table,
        breakers=breakers,
        rates=rates,
        cooldown_s=settings.breaker.cooldown_s,
        member_ttl_s=member_ttl_s(settings),
        sync_gap_s=AGREE_S,
        me=me or default_owner(),
        start_fraction=settings.rate_limit.start_share,
    )


@dataclass(frozen=True)
class SharedAdmission:
    """Guards whose breakers and rate limits the replicas share through `cluster`."""

    guards: Guards
    cluster: Cluster
    rates: RateLimits


def admit_in_cluster(
    settings: Settings,
    clients: AwsClients,
    *,
    ledger: Ledger | None,
    metrics: Metrics,
    me: str | None = None,
) -> SharedAdmission:
    """The guards a cycle or a redrive job admits with, joined to the cluster.

    `clients` are those of the place the cluster item is in (the home place).
    """
    # Breakers count in the event loop's monotonic time: a wall-clock jump must
    # not open or close one.
    breakers = Breakers(settings.breaker, anyio.current_time, metrics)
    rates = RateLimits(settings.rate_limit, anyio.current_time)
    guards = build_guards(settings, ledger=ledger, metrics=metrics, breakers=breakers, rates=rates)
    # Replicas on one DynamoDB ledger share the breakers and rate budgets.
    cluster = open_cluster(settings, clients, breakers=breakers, rates=rates, me=me)
    return SharedAdmission(guards, cluster, rates)
