"""The hidden book says when a DLQ holds messages the cycle hid that are due again."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from retryd.control import deferrals
from retryd.control.deferrals import Hidden, HiddenBook
from retryd.control.memory import MemoryControlStore, MemoryDocs


def _book() -> HiddenBook:
    return HiddenBook(MemoryControlStore(MemoryDocs()))


def _hidden(queue: str, until_s: float, n: int = 0) -> Hidden:
    return Hidden(queue, f"m-{n}", f"h-{n}", until_s, "backoff")


def test_a_time_passed_is_answered_once_and_a_later_one_kept() -> None:
    book = _book()
    book.note([_hidden("dlq", 100.2, 1), _hidden("dlq", 500.0, 2), _hidden("other", 50.0, 3)])

    assert not book.due("dlq", 100.5)  # reappears at 101: seconds are rounded up
    assert book.due("dlq", 101.0)
    assert not book.due("dlq", 200.0)
    assert book.due("dlq", 500.0)
    assert not book.due("dlq", 10_000.0)
    assert book.due("other", 60.0)
    assert not book.due("never-hid", 60.0)


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=50))
def test_due_says_yes_exactly_when_a_noted_second_has_passed(until: list[float]) -> None:
    book = _book()
    book.note([_hidden("dlq", u, n) for n, u in enumerate(until)])
    soonest = min(until)

    assert not book.due("dlq", soonest - 1.0)
    assert book.due("dlq", soonest + 1.0)
    # Asked again at the last of them, it says yes only if a later one was left.
    left = any(math.ceil(u) > soonest + 1.0 for u in until)
    assert book.due("dlq", max(until) + 1.0) == left


def test_memory_is_bounded_and_keeps_the_soonest() -> None:
    book = _book()
    keep = deferrals.DUE_KEEP
    book.note([_hidden("dlq", float(keep + n), n) for n in range(keep)])
    book.note([_hidden("dlq", 1.0, keep)])

    assert book.due("dlq", 1.0)
    assert not book.due("dlq", float(keep) - 0.5)
