"""Admission: whether a resolved job may be sent now, guard by guard.

Allowlist, attempts, age, backoff, breaker and rate limit, in the order `guards.py`
applies them.
"""

from retryd.admission.allowlist import Allowlist
from retryd.admission.attempts import attempts_exhausted
from retryd.admission.claims import Admitted, Parkable, park_claim
from retryd.admission.guards import Guards, build_guards
from retryd.admission.permit import Fate, Permit
from retryd.admission.verdicts import (
    Defer,
    DeferReason,
    Done,
    Go,
    Hold,
    Park,
    Verdict,
)

__all__ = [
    "Admitted",
    "Allowlist",
    "Defer",
    "DeferReason",
    "Done",
    "Fate",
    "Go",
    "Guards",
    "Hold",
    "Park",
    "Parkable",
    "Permit",
    "Verdict",
    "attempts_exhausted",
    "build_guards",
    "park_claim",
]
