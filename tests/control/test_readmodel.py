"""The console's read model: recorded by the daemon, read by the console, bounded and expiring."""

from __future__ import annotations

import anyio
from hypothesis import given
from hypothesis import strategies as st

from retryd.console.documents import Sources, parking_document
from retryd.control.memory import MemoryControlStore, MemoryDocs
from retryd.control.readmodel import (
    GROUPS_PER_DLQ_KEEP,
    PARKED_BUCKET_S,
    PARKED_PER_HOUR,
    TEXT_MAX_CHARS,
    DlqView,
    ParkedCopy,
    ParkingQuery,
    read_dlqs,
    read_parked,
    record_dlq,
    record_parked,
    search,
)
from retryd.settings import Settings
from tests.control.test_store import (
    opened,
    settings,  # noqa: F401 - the backend fixture, used by name
)

NOW_S = 1_800_000_000.0
DAY_S = 86_400


def _view(name: str, at_s: float, counts: list[int]) -> DlqView:
    arn = f"arn:aws:sqs:us-east-1:123456789012:{name}"
    groups = [
        {
            "id": f"g{n}",
            "target": "arn:aws:lambda:us-east-1:123456789012:function:f",
            "signature": f"E{n}",
            "count": count,
            "oldest": None,
            "newest": None,
            "example_message_id": "m",
            "source_attempts_max": None,
        }
        for n, count in enumerate(counts)
    ]
    return DlqView(
        name, f"https://sqs/{name}", arn, at_s, groups, [{"type": "lambda"}], None, sum(counts)
    )


def _copy(n: int, at_s: float, **fields: str) -> ParkedCopy:
    base = {
        "message_id": f"m-{n}",
        "reason": "target-rejected",
        "target": "arn:aws:lambda:f",
        "group": "g0",
        "source_queue": "retry-orders",
        "key": f"k-{n}",
        "error": "boom",
    }
    base.update(fields)
    return ParkedCopy(**base, at_s=at_s, size_bytes=100 + n)


def test_each_backend_keeps_the_latest_cycle_per_dlq_and_the_parked_copies(
    settings: Settings,  # noqa: F811 - the backend fixture
) -> None:
    """Memory, SQLite, DynamoDB: a DLQ's view is replaced by the next cycle; copies read back."""

    async def body() -> None:
        async with opened(settings) as store:
            await record_dlq(store, _view("retry-a", NOW_S - 60, [3, 1]))
            await record_dlq(store, _view("retry-b", NOW_S - 60, [2]))
            await record_dlq(store, _view("retry-a", NOW_S, [5]))
            views = await read_dlqs(store)
            assert [(v.name, [g["count"] for g in v.groups]) for v in views] == [
                ("retry-a", [5]),
                ("retry-b", [2]),
            ]
            copies = [_copy(n, NOW_S - n * 600) for n in range(8)]
            await record_parked(store, copies, ttl_s=DAY_S)
            index = await read_parked(store, ttl_s=DAY_S, now_s=NOW_S)
            assert [c.message_id for c in index.copies] == [f"m-{n}" for n in range(8)]
            assert index.copies[0] == copies[0]

    anyio.run(body)


def test_parked_copies_are_bounded_per_hour_and_the_rest_counted() -> None:
    """More than PARKED_PER_HOUR in one hour: the newest kept, the others counted as dropped."""
    store = MemoryControlStore(MemoryDocs(), clock=lambda: NOW_S)
    hour_start = NOW_S - NOW_S % PARKED_BUCKET_S
    copies = [_copy(n, hour_start + n * 0.001) for n in range(PARKED_PER_HOUR + 7)]

    async def body() -> None:
        await record_parked(store, copies[:100], ttl_s=DAY_S)
        await record_parked(store, copies[100:], ttl_s=DAY_S)
        index = await read_parked(store, ttl_s=DAY_S, now_s=NOW_S)
        assert len(index.copies) == PARKED_PER_HOUR
        assert index.dropped == 7
        assert {c.message_id for c in index.copies} == {c.message_id for c in copies[7:]}

    anyio.run(body)


def test_parked_copies_older_than_the_retention_are_not_read() -> None:
    """An entry parked before now - ttl is not shown, and its document expires with the TTL."""
    clock = [NOW_S - 2 * DAY_S]
    docs = MemoryDocs()
    store = MemoryControlStore(docs, clock=lambda: clock[0])

    async def body() -> None:
        await record_parked(store, [_copy(1, clock[0])], ttl_s=DAY_S)
        clock[0] = NOW_S
        await record_parked(store, [_copy(2, NOW_S)], ttl_s=DAY_S)
        index = await read_parked(store, ttl_s=DAY_S, now_s=NOW_S)
        assert [c.message_id for c in index.copies] == ["m-2"]

    anyio.run(body)
    assert all(expires <= NOW_S + DAY_S for _, expires in docs.rows.values())


def test_long_texts_are_clipped_and_groups_bounded() -> None:
    """A huge error or key is clipped on the way in; a DLQ keeps GROUPS_PER_DLQ_KEEP groups."""
    store = MemoryControlStore(MemoryDocs(), clock=lambda: NOW_S)

    async def body() -> None:
        await record_parked(
            store, [_copy(1, NOW_S, error="x" * 1_048_576, key="k" * 5000)], ttl_s=DAY_S
        )
        await record_dlq(store, _view("retry-a", NOW_S, [1] * (GROUPS_PER_DLQ_KEEP + 5)))
        [copy] = (await read_parked(store, ttl_s=DAY_S, now_s=NOW_S)).copies
        assert len(copy.error) == TEXT_MAX_CHARS
        assert len(copy.key) == TEXT_MAX_CHARS
        [view] = await read_dlqs(store)
        assert len(view.groups) == GROUPS_PER_DLQ_KEEP

    anyio.run(body)


def test_search_filters_by_reason_target_queue_time_and_text() -> None:
    """Each filter narrows; text matches the error, the message id or the key, any case."""
    copies = [
        _copy(1, NOW_S, reason="target-rejected", error="Timeout talking to charge"),
        _copy(2, NOW_S - 10, reason="loop-detected", target="arn:aws:sqs:orders"),
        _copy(3, NOW_S - 20, source_queue="retry-payments", key="order-42"),
    ]

    def ids(query: ParkingQuery) -> list[str]:
        return [c.message_id for c in search(copies, query)]

    assert ids(ParkingQuery(reason="loop-detected")) == ["m-2"]
    assert ids(ParkingQuery(target="sqs:orders")) == ["m-2"]
    assert ids(ParkingQuery(source_queue="payments")) == ["m-3"]
    assert ids(ParkingQuery(text="TIMEOUT")) == ["m-1"]
    assert ids(ParkingQuery(text="order-42")) == ["m-3"]
    assert ids(ParkingQuery(text="m-2")) == ["m-2"]
    assert ids(ParkingQuery(since_s=NOW_S - 15)) == ["m-1", "m-2"]
    assert ids(ParkingQuery(until_s=NOW_S - 15)) == ["m-3"]
    assert ids(ParkingQuery()) == ["m-1", "m-2", "m-3"]


@given(total=st.integers(0, 60), page_size=st.integers(1, 25))
def test_pages_cover_every_match_once(total: int, page_size: int) -> None:
    """Walking the parking search's pages yields every match exactly once, newest first."""
    store = MemoryControlStore(MemoryDocs())
    plain = Settings(
        discovery={"queue_prefixes": ["retry-"]},
        guards={"allow_targets": ["arn:aws:lambda:*:*:*"]},
        ledger={"backend": "memory"},
    )
    sources = Sources(plain, store, None)

    async def body() -> list[str]:
        import time  # noqa: PLC0415 - the real clock: the index is read up to now

        now_s = time.time()
        await record_parked(store, [_copy(n, now_s - n) for n in range(total)], ttl_s=DAY_S)
        first = await parking_document(sources, ParkingQuery(), 1, page_size)
        seen: list[str] = []
        for page in range(1, first["pages"] + 1):
            doc = await parking_document(sources, ParkingQuery(), page, page_size)
            assert doc["total"] == total
            seen.extend(c["message_id"] for c in doc["copies"])
        return seen

    assert anyio.run(body) == [f"m-{n}" for n in range(total)]
