"""Transforms the hook tests name by dotted path (`tests.hook_transforms:<name>`)."""

from __future__ import annotations

import threading
from typing import Any

from retryd.resolve.hooks import FailureContext, ParkInstead

__version__ = "0.0.1"

# Set by a test once it is done, so that a "hung" transform's thread ends with it.
RELEASE = threading.Event()
SEEN: list[tuple[Any, FailureContext]] = []


def add_flag(payload: Any, context: FailureContext) -> Any:
    """Marks the payload and records what it was given."""
    SEEN.append((payload, context))
    return {**payload, "fixed": True, "attempt_seen": context.attempt}


def raises(payload: Any, context: FailureContext) -> Any:
    """A transform with a bug; its message quotes the payload, which must not be logged."""
    raise KeyError(f"secret {payload!r}")


def hangs(payload: Any, context: FailureContext) -> Any:
    """Never answers within any test's time limit (released when the test ends)."""
    RELEASE.wait(timeout=60)
    return payload


def parks(payload: Any, context: FailureContext) -> Any:
    """Refuses every message."""
    return ParkInstead("poison order")


def to_text(payload: Any, context: FailureContext) -> Any:
    """Sends a text body."""
    return "plain text"


def not_json(payload: Any, context: FailureContext) -> Any:
    """Returns something that cannot be written as JSON."""
    return {1, 2}


NOT_CALLABLE = 42


def quick(payload: Any, context: FailureContext) -> Any:
    """Answers at once."""
    return {**payload, "quick": True}


def mutates(payload: Any, context: FailureContext) -> Any:
    """Changes the payload it was given in place, and returns it."""
    payload["fixed"] = True
    return payload


def exits(payload: Any, context: FailureContext) -> Any:
    """Calls sys.exit, as a script turned transform might."""
    raise SystemExit(3)


class _Incomparable:
    """An answer that cannot be compared with anything (like a NumPy array of several values)."""

    def __eq__(self, other: object) -> bool:
        raise ValueError("the truth value of an array with more than one element is ambiguous")

    __hash__ = None  # type: ignore[assignment]


def incomparable(payload: Any, context: FailureContext) -> Any:
    """Returns an object whose comparison raises."""
    return _Incomparable()
