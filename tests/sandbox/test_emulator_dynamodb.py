"""The embedded emulator's DynamoDB answers concurrent requests as DynamoDB would: no 500s.

moto's TransactWriteItems deep-copies the whole table while another request may add an
item to it; the copy then fails (a 500). Before the emulator handled DynamoDB requests
one at a time, eight threads writing new items into a table of 500 for two seconds met it
every run. A server of its own: the suite's shared one is reset by other tests.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from botocore.config import Config

from retryd.sandbox.emulator import MotoServer
from tests.world import emulator_client

WRITERS = 8
READERS = 2
RUN_S = 2.0
PREFILLED = 500
VALUE = {"M": {"list": {"L": [{"S": "x"}] * 5}, "n": {"N": "1"}}}


def test_transactions_adding_items_side_by_side_never_fail() -> None:
    with MotoServer() as server:
        _hammer(server.url)


def _hammer(url: str) -> None:
    config = Config(retries={"max_attempts": 1}, max_pool_connections=WRITERS + READERS)
    dynamodb: Any = emulator_client(url, "dynamodb", config)
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
    errors: list[str] = []
    written = [0] * WRITERS
    stop_at = time.monotonic() + RUN_S

    def write(writer: int) -> None:
        while time.monotonic() < stop_at:
            batch = written[writer]
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
                dynamodb.transact_write_items(TransactItems=items)
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                errors.append(repr(exc)[:300])
            written[writer] += 1

    def read() -> None:
        keys = [{"k": {"S": f"0-0-{n}"}} for n in range(10)]
        while time.monotonic() < stop_at:
            try:
                dynamodb.batch_get_item(RequestItems={"side-by-side": {"Keys": keys}})
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc)[:300])

    threads = [threading.Thread(target=write, args=(n,)) for n in range(WRITERS)]
    threads += [threading.Thread(target=read) for _ in range(READERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(written) > WRITERS, "the writers wrote side by side"
