"""The cluster item as someone outside the cluster sees it: read once, written never.

`retryd plan` judges messages as the next cycle would, so it must see the
breakers the replicas hold open; but a dry run must not join the cluster (its
heartbeat would shrink every replica's rate share) or claim canaries. One
strongly consistent read of the item the replicas write
(retryd/cluster/dynamodb.py) gives the live replicas and every shared breaker.
It is a BatchGetItem of one key, the call the ledger reads with, so a role that
may read the ledger may read this with no further grant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from retryd.admission.breaker import Breakers, BreakerState
from retryd.cluster.agree import SharedBreaker, Step, live_members, next_step
from retryd.cluster.dynamodb import (
    BREAKER_PREFIX,
    MEMBER_PREFIX,
    STATE_KEY,
    parse_breaker,
    server_time,
)
from retryd.errors import RetrydError
from retryd.ledger.dynamodb import KEY_ATTRIBUTE
from retryd.models import Target

if TYPE_CHECKING:
    # A type only: see the same import in cluster/dynamodb.py.
    from retryd.aws import Client


@dataclass(frozen=True)
class ClusterView:
    """The replicas live and the shared breakers, at `now_s` on the table's clock."""

    now_s: float
    live: int = 0
    breakers: dict[str, SharedBreaker] = field(default_factory=dict)

    @property
    def open(self) -> list[str]:
        """The targets whose shared breaker is open (cooling down or half-open), sorted."""
        return sorted(
            arn for arn, shared in self.breakers.items() if shared.state is BreakerState.OPEN
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "live_replicas": self.live,
            "breakers_open": [
                {
                    "target": arn,
                    "canaries_held_by": self.holder(arn),
                }
                for arn in self.open
            ],
        }

    def holder(self, arn: str) -> str | None:
        """The replica whose canary claim on `arn`'s breaker is live, if any."""
        shared = self.breakers[arn]
        if shared.holder is not None and shared.held_until_s > self.now_s:
            return shared.holder
        return None


# A key DynamoDB hands back unprocessed (throttled) is asked for again this often.
READ_TRIES = 3


class ClusterUnreadError(RetrydError):
    """The cluster item was handed back unprocessed on every try."""


async def read_cluster(
    client: Client, table: str, *, wall_s: Callable[[], float]
) -> ClusterView | None:
    """The cluster item of the ledger `table`; None when there is none (no replica ran yet).

    A missing table is None too: the ledger says so itself. AWS errors propagate;
    ClusterUnreadError when the key stays unprocessed.
    """
    request = {table: {"Keys": [{KEY_ATTRIBUTE: {"S": STATE_KEY}}], "ConsistentRead": True}}
    for _ in range(READ_TRIES):
        try:
            answer: dict[str, Any] = await client.batch_get_item(RequestItems=request)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return None
            raise
        if not answer.get("UnprocessedKeys"):
            break
    else:
        raise ClusterUnreadError(f"{STATE_KEY} in {table}: unprocessed on {READ_TRIES} tries")
    items: list[dict[str, Any]] = answer.get("Responses", {}).get(table, [])
    if not items:
        return None
    item = items[0]
    now_s = server_time(answer) or wall_s()
    heartbeats = {
        name[len(MEMBER_PREFIX) :]: float(value["N"])
        for name, value in item.items()
        if name.startswith(MEMBER_PREFIX) and "N" in value
    }
    breakers = {
        name[len(BREAKER_PREFIX) :]: shared
        for name, value in item.items()
        if name.startswith(BREAKER_PREFIX) and (shared := parse_breaker(value)) is not None
    }
    return ClusterView(now_s, len(live_members(heartbeats, now_s)), breakers)


def hold_as_the_cluster_does(
    view: ClusterView, breakers: Breakers, *, cooldown_s: float, monotonic_s: float
) -> list[str]:
    """Open `breakers` as a replica joining now would find them; the targets opened.

    Cooling down, or past it with another replica holding the canaries: open (and
    held). Past it with nobody holding them: half-open, as a replica's claim would
    make it, so the next cycle's canaries show as the messages that would go.
    """
    opened = []
    for arn in view.open:
        shared = view.breakers[arn]
        try:
            target = Target.from_arn(arn)
        except ValueError:
            continue
        breaker = breakers.for_target(target)
        # Nobody in the cluster is this reader, so it never holds the canaries itself.
        step = next_step(
            shared, BreakerState.CLOSED, me="", now_s=view.now_s, cooldown_s=cooldown_s
        )
        if step is Step.CLAIM:
            breaker.adopt_open(monotonic_s - cooldown_s, held_elsewhere=False)
        else:
            elapsed_s = max(0.0, view.now_s - shared.opened_at_s)
            breaker.adopt_open(monotonic_s - elapsed_s, held_elsewhere=True)
        opened.append(arn)
    return opened
