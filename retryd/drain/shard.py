"""Which DLQs one of `drain.processes` worker processes drains: a stable share by queue ARN.

Every process computes the same assignment from the queue's ARN alone, with no
coordination, so no two processes ever drain the same DLQ. CRC-32 rather than
`hash()`: Python salts string hashes per process, which would give each worker
a different answer.

The rate limits are split without coordination too: each worker takes an equal
part of every target's rate, whether or not its DLQs feed that target. Which
worker feeds a target is not known in advance (a DLQ's messages name their own
targets), so a target fed from one worker's DLQs gets only that worker's part;
`worker_rates` states it for `retryd config check`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from retryd.admission.ratelimit import type_rate
from retryd.cluster.agree import share
from retryd.models import TargetType
from retryd.settings import Settings


@dataclass(frozen=True)
class Shard:
    """Worker `index` of `count`; it drains the DLQs whose ARN falls to it."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count} does not exist")

    def owns(self, queue_arn: str) -> bool:
        return zlib.crc32(queue_arn.encode()) % self.count == self.index

    @property
    def whole(self) -> bool:
        """The only worker: it owns every DLQ."""
        return self.count == 1


WHOLE = Shard()


def worker_rates(settings: Settings) -> dict[str, Any] | None:
    """What `retryd config check` says of each worker's part of the rates; None for one process."""
    processes = settings.drain.processes
    if processes == 1:
        return None
    if settings.ledger.backend == "dynamodb":
        split = (
            f"each of the {processes} worker processes counts as a replica of the cluster and "
            "takes 1/(live replicas) of every target's rate (by_target_type: with this "
            "replica alone)"
        )
    else:
        split = (
            f"each of the {processes} worker processes takes 1/{processes} of every target's rate"
        )
    return {
        "processes": processes,
        "by_target_type": {
            target_type.value: {"per_s": part.per_s, "burst": part.burst}
            for target_type in TargetType
            for part in [share(type_rate(settings.rate_limit, target_type), processes)]
        },
        "limit": (
            f"{split}, also of the rate_limit.targets rules, whether or not its DLQs feed that "
            "target: a target fed only from the DLQs of one worker gets at most that worker's "
            "part of its rate, never the whole. Raise the target's rate (a rate_limit.targets "
            "rule) by the same factor, or keep drain.processes = 1, where that matters."
        ),
    }
