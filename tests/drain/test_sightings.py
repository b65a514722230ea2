"""drain/sightings.py: a DLQ's leftovers grouped as inspect groups them; writes never fail."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
from hypothesis import given
from hypothesis import strategies as st

from retryd.control.memory import MemoryControlStore, MemoryDocs
from retryd.control.readmodel import DocReadModel, ReadModel, read_dlqs, read_parked
from retryd.control.store import Body, ControlError, Doc
from retryd.drain.sightings import QueueSighting, Sightings
from retryd.models import Decision, Outcome
from retryd.resolve import build_chain
from retryd.resolve.failure_groups import group_failures
from retryd.sandbox.world import sandbox_settings
from tests.conftest import SettingsFactory
from tests.native_helpers import DLQ, letter

CHARGE = "arn:aws:lambda:us-east-1:123456789012:function:charge"
JUDGED_AGAIN = {(Outcome.DEFERRED, "backoff"), (Outcome.DEFERRED, "rate-limited")}


def _letter(n: int, error: str) -> Decision:
    body = {
        "envelope": "retryd/v1",
        "target": {"type": "lambda", "arn": CHARGE},
        "payload": {"n": n},
        "error": {"code": error, "message": f"failed after {n} ms"},
    }
    return Decision(letter(body, message_id=f"m-{n}"), Outcome.FAILED)


class _Broken:
    """A control store whose every write fails, as a throttled table would."""

    backend = "memory"

    async def get(self, names: Sequence[str]) -> dict[str, Doc]:
        return {}

    async def put(self, name: str, body: Body, *, version: int, ttl_s: float | None) -> bool:
        raise ControlError("throttled")

    def read_model(self) -> ReadModel:
        return DocReadModel(self)


@given(st.lists(st.sampled_from(["Timeout", "Boom", "Denied"]), min_size=1, max_size=30))
def test_groups_merged_batch_by_batch_are_inspects_groups_of_all(errors: list[str]) -> None:
    """Grouping each batch and merging gives the counts group_failures gives for the whole."""
    chain = build_chain(sandbox_settings())
    decisions = [_letter(n, error) for n, error in enumerate(errors)]
    sighting = QueueSighting(DLQ, chain)
    sightings = Sightings(MemoryControlStore(MemoryDocs()), parked_ttl_s=86_400)
    for start in range(0, len(decisions), 4):
        sightings.saw(sighting, decisions[start : start + 4])
    whole = group_failures(chain, [d.letter for d in decisions])
    assert sorted((g.id, g.count) for g in sighting.groups.values()) == sorted(
        (g.id, g.count) for g in whole
    )


def test_resubmitted_messages_leave_no_group_and_parked_ones_are_indexed(
    make_settings: SettingsFactory,
) -> None:
    """Deleted messages are not in the DLQ's view; a parked one is in the index with its group."""
    chain = build_chain(make_settings())
    store = MemoryControlStore(MemoryDocs())
    sightings = Sightings(store, parked_ttl_s=86_400)
    sighting = QueueSighting(DLQ, chain)
    gone = _letter(1, "Timeout")
    parked = _letter(2, "Denied")
    sightings.saw(
        sighting,
        [
            Decision(gone.letter, Outcome.RESUBMITTED),
            Decision(parked.letter, Outcome.PARKED, None, "target-rejected", "AccessDenied"),
            _letter(3, "Timeout"),
        ],
    )

    async def run() -> None:
        await sightings.record(sighting)
        views = await read_dlqs(store)
        assert [[(g["count"], g["signature"]) for g in v.groups] for v in views] == [
            [(1, "Timeout: failed after <n> ms")]
        ]
        copies = (await read_parked(store, ttl_s=86_400)).copies
        assert [(c.message_id, c.reason, c.error) for c in copies] == [
            ("m-2", "target-rejected", "AccessDenied")
        ]
        expected = group_failures(chain, [parked.letter])[0].id
        assert copies[0].group == expected

    anyio.run(run)


def test_a_store_that_cannot_be_written_is_counted_not_raised(
    make_settings: SettingsFactory,
) -> None:
    """A failing write is logged and counted; record() returns normally."""
    sightings = Sightings(_Broken(), parked_ttl_s=86_400)
    sighting = QueueSighting(DLQ, build_chain(make_settings()))
    sightings.saw(sighting, [_letter(1, "Timeout")])
    anyio.run(sightings.record, sighting)
    assert sightings.write_errors == 1


def test_an_empty_dlq_is_recorded_once_then_left_alone(make_settings: SettingsFactory) -> None:
    """An empty DLQ's view is written, and not again on the next cycle while it stays empty."""
    store = MemoryControlStore(MemoryDocs())
    sightings = Sightings(store, parked_ttl_s=86_400)
    chain = build_chain(make_settings())

    async def run() -> None:
        await sightings.record(QueueSighting(DLQ, chain))
        first = (await store.get(["view/dlqs"]))["view/dlqs"].version
        await sightings.record(QueueSighting(DLQ, chain))
        assert (await store.get(["view/dlqs"]))["view/dlqs"].version == first
        assert [v.groups for v in await read_dlqs(store)] == [[]]

    anyio.run(run)


@given(
    st.lists(
        st.lists(
            st.tuples(
                st.integers(0, 5),
                st.sampled_from(
                    [
                        (Outcome.DEFERRED, "backoff"),
                        (Outcome.DEFERRED, "rate-limited"),
                        (Outcome.DEFERRED, "paused"),
                        (Outcome.FAILED, "transient-error"),
                        (Outcome.RESUBMITTED, ""),
                    ]
                ),
            ),
            max_size=6,
        ),
        max_size=6,
    )
)
def test_a_message_judged_again_in_the_cycle_counts_as_its_last_decision(
    batches: list[list[tuple[int, tuple[Outcome, str]]]],
) -> None:
    """A deferred message (not paused) comes back due and is decided again in the same cycle:
    the groups count what it became, once, not every deferral on the way."""
    chain = build_chain(sandbox_settings())
    sighting = QueueSighting(DLQ, chain)
    sightings = Sightings(MemoryControlStore(MemoryDocs()), parked_ttl_s=86_400)
    last: dict[int, tuple[Outcome, str]] = {}
    counted: set[int] = set()
    for batch in batches:
        decisions = []
        for n, (outcome, reason) in dict(batch).items():
            # Only a message judged again can be decided again: not one paused or failed.
            if n in last and last[n] not in JUDGED_AGAIN:
                continue
            decisions.append(Decision(_letter(n, "Timeout").letter, outcome, reason=reason))
            last[n] = (outcome, reason)
            counted.add(n)
        sightings.saw(sighting, decisions)
    left = sum(1 for n in counted if last[n][0] is not Outcome.RESUBMITTED)
    assert sum(g.count for g in sighting.groups.values()) == left
