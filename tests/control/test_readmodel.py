"""The console's read model: recorded by the daemon, read by the console, bounded and expiring."""

from __future__ import annotations

import sqlite3
import time
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import anyio
from hypothesis import given
from hypothesis import strategies as st

from retryd.console.auth import NoAuth
from retryd.console.documents import Sources, parking_document
from retryd.control.memory import MemoryControlStore, MemoryDocs
from retryd.control.readmodel import (
    GROUPS_PER_DLQ_KEEP,
    PARKED_BUCKET_S,
    PARKED_PER_HOUR,
    PARKED_SUM_PREFIX,
    TEXT_MAX_CHARS,
    Cursor,
    DlqView,
    ParkedCopy,
    ParkingQuery,
    read_dlqs,
    read_model_of,
    read_parked,
    record_dlq,
    record_parked,
    search,
)
from retryd.control.sqlite import SqliteControlStore
from retryd.control.store import Doc
from retryd.settings import Settings
from tests.conftest import SettingsFactory
from tests.console.harness import Caller, console_for, serving
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


def _world_copies() -> list[ParkedCopy]:
    """Copies over three hours, with every field varied so each filter selects something."""
    reasons = ["target-rejected", "loop-detected", "attempts-exhausted"]
    return [
        _copy(
            n,
            NOW_S - n * 700,
            reason=reasons[n % 3],
            target=f"arn:aws:lambda:f-{n % 4}",
            group=f"g{n % 5}",
            source_queue=f"retry-{'orders' if n % 2 else 'payments'}",
            key=f"Order-{n}",
            error=f"{'Timeout' if n % 3 else 'Denied'} talking to f-{n % 4}",
        )
        for n in range(15)
    ]


QUERIES = [
    ParkingQuery(),
    ParkingQuery(reason="loop-detected"),
    ParkingQuery(target="f-2"),
    ParkingQuery(source_queue="payments"),
    ParkingQuery(group="g3"),
    ParkingQuery(text="timeout"),
    ParkingQuery(text="ORDER-1"),
    ParkingQuery(text="m-7"),
    ParkingQuery(since_s=NOW_S - 3_000),
    ParkingQuery(until_s=NOW_S - 3_000, reason="target-rejected"),
    ParkingQuery(text="no such text"),
]


def test_each_backend_answers_a_search_and_the_counts_as_the_plain_filter_does(
    settings: Settings,  # noqa: F811 - the backend fixture
) -> None:
    """Memory, SQLite, DynamoDB: every query selects what ParkingQuery.matches selects, in order,
    and the overview's counts by reason and target are the copies' own counts."""
    copies = _world_copies()

    async def body() -> None:
        async with opened(settings) as store:
            await record_parked(store, copies, ttl_s=DAY_S)
            model = read_model_of(store)
            for query in QUERIES:
                page = await model.parked(query, since_s=NOW_S - DAY_S, now_s=NOW_S, page_size=100)
                wanted = [c.message_id for c in search(copies, query)]
                assert [c.message_id for c in page.copies] == wanted, query
                assert page.total == len(wanted)
            counts = await model.parked_counts(since_s=NOW_S - DAY_S, now_s=NOW_S)
            assert counts.total == len(copies)
            assert dict(counts.by_reason) == {
                "target-rejected": 5,
                "loop-detected": 5,
                "attempts-exhausted": 5,
            }
            assert dict(counts.by_target) == {
                f"arn:aws:lambda:f-{n}": len([c for c in copies if c.target.endswith(f"f-{n}")])
                for n in range(4)
            }
            assert [n for _, n in counts.by_target] == sorted(
                (n for _, n in counts.by_target), reverse=True
            )

    anyio.run(body)


def test_each_backend_pages_by_keyset_and_by_number_alike(
    settings: Settings,  # noqa: F811 - the backend fixture
) -> None:
    """Following `next` from page 1, and asking for pages 1, 2, 3..., give each copy once."""
    copies = _world_copies()

    async def body() -> None:
        async with opened(settings) as store:
            await record_parked(store, copies, ttl_s=DAY_S)
            model = read_model_of(store)
            by_cursor: list[str] = []
            page = await model.parked(
                ParkingQuery(), since_s=NOW_S - DAY_S, now_s=NOW_S, page_size=4
            )
            by_cursor.extend(c.message_id for c in page.copies)
            while page.next is not None:
                cursor = Cursor.from_text(page.next.to_text())
                page = await model.parked(
                    ParkingQuery(), since_s=NOW_S - DAY_S, now_s=NOW_S, page_size=4, after=cursor
                )
                by_cursor.extend(c.message_id for c in page.copies)
            by_number: list[str] = []
            for n in range(4):
                numbered = await model.parked(
                    ParkingQuery(), since_s=NOW_S - DAY_S, now_s=NOW_S, page_size=4, offset=n * 4
                )
                by_number.extend(c.message_id for c in numbered.copies)
            assert by_cursor == by_number == [f"m-{n}" for n in range(15)]

    anyio.run(body)


def test_each_backend_bounds_an_hour_and_counts_what_it_left_out(
    settings: Settings,  # noqa: F811 - the backend fixture
) -> None:
    """Every backend: an hour keeps its newest PARKED_PER_HOUR copies and counts the rest."""
    hour_start = NOW_S - NOW_S % PARKED_BUCKET_S
    copies = [_copy(n, hour_start + n * 0.001) for n in range(PARKED_PER_HOUR + 7)]

    async def body() -> None:
        async with opened(settings) as store:
            await record_parked(store, copies[:100], ttl_s=DAY_S)
            await record_parked(store, copies[100:], ttl_s=DAY_S)
            index = await read_parked(store, ttl_s=DAY_S, now_s=NOW_S)
            assert len(index.copies) == PARKED_PER_HOUR
            assert index.dropped == 7
            assert {c.message_id for c in index.copies} == {c.message_id for c in copies[7:]}
            counts = await read_model_of(store).parked_counts(since_s=NOW_S - DAY_S, now_s=NOW_S)
            assert (counts.total, counts.not_indexed) == (PARKED_PER_HOUR, 7)

    anyio.run(body)


def test_sqlite_forgets_expired_rows_as_it_writes(tmp_path: Path) -> None:
    """SQLite needs no sweeper: a write deletes the rows that expired, and reads skip them."""
    clock = [NOW_S - 2 * DAY_S]
    store = SqliteControlStore(tmp_path / "l.sqlite3", clock=lambda: clock[0])

    async def body() -> None:
        await record_parked(store, [_copy(1, clock[0])], ttl_s=DAY_S)
        await record_dlq(store, _view("retry-old", clock[0], [1]))
        clock[0] = NOW_S
        assert await read_dlqs(store) == []
        assert (await read_parked(store, ttl_s=3 * DAY_S, now_s=NOW_S)).copies == []
        await record_parked(store, [_copy(2, NOW_S)], ttl_s=DAY_S)
        await record_dlq(store, _view("retry-new", NOW_S, [1]))

    anyio.run(body)
    with sqlite3.connect(tmp_path / "l.sqlite3") as conn:
        assert conn.execute("SELECT message_id FROM view_parked").fetchall() == [("m-2",)]
        assert conn.execute("SELECT name FROM view_dlqs").fetchall() == [("retry-new",)]


def test_a_bad_cursor_is_refused() -> None:
    """A cursor that is not `<seconds>/<id>` is a ValueError (the API answers 400)."""
    for text in ("", "abc", "x/m-1"):
        try:
            Cursor.from_text(text)
        except ValueError:
            continue
        raise AssertionError(text)
    assert Cursor.from_text("12.5/m/1") == Cursor(12.5, "m/1")


class _Watched(MemoryControlStore):
    """A memory store that notes every document name read."""

    def __init__(self) -> None:
        super().__init__(MemoryDocs(), clock=lambda: NOW_S)
        self.read: list[str] = []

    async def get(self, names: Sequence[str]) -> dict[str, Doc]:
        self.read.extend(names)
        return await super().get(names)


def test_the_documents_overview_reads_the_hours_counts_never_their_copies() -> None:
    """Memory and DynamoDB: parked counts come from each hour's summary, not its copies."""
    store = _Watched()
    copies = _world_copies()

    async def body() -> None:
        await record_parked(store, copies, ttl_s=DAY_S)
        store.read.clear()
        counts = await read_model_of(store).parked_counts(since_s=NOW_S - DAY_S, now_s=NOW_S)
        assert counts.total == len(copies)
        assert dict(counts.by_reason) == Counter(c.reason for c in copies)

    anyio.run(body)
    assert store.read
    assert all(name.startswith(PARKED_SUM_PREFIX) for name in store.read), store.read


def test_the_api_reads_every_filter_and_the_cursor(make_settings: SettingsFactory) -> None:
    """/api/parking takes group=, after= and the other filters; a bad `after` is a 400."""
    store = MemoryControlStore(MemoryDocs())
    plain = make_settings(console={"auth": "none", "page_size": 2})
    now_s = time.time()

    async def fill() -> None:
        await record_parked(
            store, [_copy(n, now_s - n, group=f"g{n % 2}") for n in range(5)], ttl_s=DAY_S
        )

    anyio.run(fill)
    with serving(console_for(plain, store), NoAuth()) as base:
        call = Caller(base)
        first = call("/api/parking?group=g0").json()
        assert [c["message_id"] for c in first["copies"]] == ["m-0", "m-2"]
        after = urllib.parse.quote(first["next"])
        second = call(f"/api/parking?group=g0&after={after}").json()
        assert [c["message_id"] for c in second["copies"]] == ["m-4"]
        assert second["next"] is None
        assert call("/api/parking?after=nonsense").status == 400
