"""The interface every resubmitter implements, one module per target type beside it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from retryd.models import Job, SendError, Target

# Set on a Delivery when retryd refuses to send a payload over the target's limit.
PAYLOAD_TOO_LARGE = "retryd.PayloadTooLarge"
# Set when the body cannot be what the target needs (e.g. not JSON for Step Functions).
INVALID_PAYLOAD = "retryd.InvalidPayload"


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a target did with one job: accepted (error is None) or refused, and why."""

    job: Job
    error: SendError | None = None
    # retryd.* stamps left off because the original already used SQS's 10 attributes.
    stamps_dropped: int = 0

    @property
    def accepted(self) -> bool:
        return self.error is None


class Resubmitter(Protocol):
    """Sends jobs back to one kind of target.

    `submit` gets jobs that all share `target`, returns one Delivery per job in the
    same order, uses the service's batch API where it has one, and never raises
    for an AWS or network error: those become `Delivery.error` (see classify.py).
    """

    async def submit(self, target: Target, jobs: Sequence[Job]) -> list[Delivery]: ...
