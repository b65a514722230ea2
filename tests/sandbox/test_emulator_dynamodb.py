"""The embedded emulator's DynamoDB answers concurrent requests as DynamoDB would: no 500s.

moto's TransactWriteItems deep-copies the whole table while another request may add an
item to it; the copy then fails (a 500). Before the emulator handled DynamoDB requests
one at a time, eight threads writing new items into a table of 500 met it every run.
A server of its own: the suite's shared one is reset by other tests.

The writers write a fixed number of batches, not for a fixed time: on a loaded CI
machine each writer managed a single transaction in two seconds, and a check of how
much was written then failed a run that had found nothing wrong.
"""

from __future__ import annotations

import threading
from typing import Any

from botocore.config import Config

from retryd.sandbox.emulator import MotoServer
from tests.world import emulator_client

WRITERS = 8
READERS = 2
BATCHES = 4
PREFILLED = 500
VALUE = {"M": {"list": {"L": [{"S": "x"}] * 5}, "n": {"N": "1"}}}


def test_transactions_adding_items_side_by_side_never_fail() -> None:
    with MotoServer() as server:
        config = Config(retries={"max_attempts": 1}, max_pool_connections=WRITERS + READERS)
        dynamodb: Any = emulator_client(server.url, "dynamodb", config)
        _prefill(dynamodb)
        hammer = _Hammer(dynamodb)
        hammer.run()
        assert hammer.errors == []
        assert hammer.written == [BATCHES] * WRITERS
        assert hammer.most_in_flight > 1, "the writers' transactions were never in flight together"
        count = dynamodb.scan(TableName="side-by-side", Select="COUNT")["Count"]
        assert count == PREFILLED + WRITERS * BATCHES * 10


def _prefill(dynamodb: Any) -> None:
    dynamodb.create_table(
        TableName="side-by-side",
        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    # A table of some size: the longer moto's copy of it takes, the likelier a write meets it.
    for start in range(0, PREFILLED, 25):
        dynamodb.batch_write_item(
            RequestItems={
                "side-by-side": [
                    {"PutRequest": {"Item": {"k": {"S": f"old-{n}"}, "v": VALUE}}}
                    for n in range(start, start + 25)
                ]
            }
        )


class _Hammer:
    """Writers adding items in transactions while readers read, all at one server."""

    def __init__(self, dynamodb: Any) -> None:
        self.dynamodb = dynamodb
        self.errors: list[str] = []
        self.written = [0] * WRITERS
        self.most_in_flight = 0
        self._in_flight = 0
        self._counting = threading.Lock()
        # All writers send their first transaction together, so requests meet at the server.
        self._start = threading.Barrier(WRITERS)
        self._writing = threading.Event()

    def run(self) -> None:
        self._writing.set()
        writers = [threading.Thread(target=self._write, args=(n,)) for n in range(WRITERS)]
        readers = [threading.Thread(target=self._read) for _ in range(READERS)]
        for thread in writers + readers:
            thread.start()
        for thread in writers:
            thread.join()
        self._writing.clear()
        for thread in readers:
            thread.join()

    def _write(self, writer: int) -> None:
        self._start.wait()
        for batch in range(BATCHES):
            items = [
                {
                    "Put": {
                        "TableName": "side-by-side",
                        "Item": {"k": {"S": f"{writer}-{batch}-{n}"}},
                    }
                }
                for n in range(10)
            ]
            try:
                self._transact(items)
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                self.errors.append(repr(exc)[:300])
            self.written[writer] += 1

    def _transact(self, items: list[dict[str, Any]]) -> None:
        with self._counting:
            self._in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self._in_flight)
        try:
            self.dynamodb.transact_write_items(TransactItems=items)
        finally:
            with self._counting:
                self._in_flight -= 1

    def _read(self) -> None:
        keys = [{"k": {"S": f"0-0-{n}"}} for n in range(10)]
        while self._writing.is_set():
            try:
                self.dynamodb.batch_get_item(RequestItems={"side-by-side": {"Keys": keys}})
            except Exception as exc:  # noqa: BLE001
                self.errors.append(repr(exc)[:300])
