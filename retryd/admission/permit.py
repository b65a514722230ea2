"""A Go's leave to be sent, and what became of it: succeeded, failed or released.

Like stamina's `Attempt`, the permit carries its own lifecycle, so that whoever
sends the job only says how it went, and admission's state (the target's circuit
breaker, the key's ledger claim) is kept by admission alone:

- `succeeded()`: the target took the copy; the breaker hears a success and the
  ledger claim is committed;
- `failed()`: a transient failure; the breaker hears a failure, the claim is released;
- `released()`: not sent after all (rate-limited, claimed elsewhere, cancelled) or
  refused for good (a permanent error says nothing of the target's health); the
  breaker permit goes back unjudged, and a begun claim is released.

The first word counts: a `released()` in a `finally` block never undoes an answer
already given. The breaker hears at once; the ledger is written by
`Guards.settle`, which batches the claims of many permits into one write.
"""

from __future__ import annotations

from enum import StrEnum

from retryd.admission.breaker import CircuitBreaker
from retryd.ledger.base import Claim


class Fate(StrEnum):
    """How a permit was settled."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RELEASED = "released"


class Permit:
    """One Go's breaker permit (taken by `assess`) and ledger claim (taken by `admit`)."""

    __slots__ = ("_breaker", "_episode", "_fate", "claim", "written")

    def __init__(self, breaker: CircuitBreaker | None = None, episode: int | None = None) -> None:
        self._breaker = breaker
        # The breaker's half-open episode the permit was taken in: a late answer from an
        # earlier episode must not free a canary slot of a later one.
        self._episode = episode
        self._fate: Fate | None = None
        # The ledger claim begun for this job, as the attempt it is sent as; None until then.
        self.claim: Claim | None = None
        # Whether `Guards.settle` has written this permit's fate to the ledger.
        self.written = False

    @property
    def fate(self) -> Fate | None:
        return self._fate

    def succeeded(self) -> None:
        """The target took the copy."""
        if self._settle(Fate.SUCCEEDED) and self._breaker is not None:
            self._breaker.record(success=True, episode=self._episode)

    def failed(self) -> None:
        """A transient failure: the target may be unwell."""
        if self._settle(Fate.FAILED) and self._breaker is not None:
            self._breaker.record(success=False, episode=self._episode)

    def released(self) -> None:
        """Not sent, or refused for this message alone: the permit goes back unjudged."""
        if self._settle(Fate.RELEASED) and self._breaker is not None:
            self._breaker.release(1, self._episode)

    def _settle(self, fate: Fate) -> bool:
        if self._fate is not None:
            return False
        self._fate = fate
        return True
