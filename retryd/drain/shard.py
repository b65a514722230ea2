"""Which DLQs one of `drain.processes` worker processes drains: a stable share by queue ARN.

Every process computes the same assignment from the queue's ARN alone, with no
coordination, so no two processes ever drain the same DLQ. CRC-32 rather than
`hash()`: Python salts string hashes per process, which would give each worker
a different answer.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


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
