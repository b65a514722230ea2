"""Operator state in the ledger's DynamoDB table, under keys `retryd-control/<name>`.

Same table, so no new resource to create or grant; distinct keys, so the ledger
(which only reads the keys of the messages it judges) never meets them. Each
document is one item: `doc` (its JSON), `version` (N), and `expires_at` (the
table's TTL attribute) when it may be forgotten. Writes are conditional on the
version read, as the ledger's are.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from retryd.aws import Client
from retryd.classify import from_exception
from retryd.control.readmodel import DocReadModel, ReadModel
from retryd.control.store import Body, ControlError, Doc
from retryd.ledger.dynamodb import BATCH_GET_MAX_KEYS, KEY_ATTRIBUTE, TTL_ATTRIBUTE

KEY_PREFIX = "retryd-control/"
_CONDITION_FAILED = "ConditionalCheckFailedException"


class DynamoDbControlStore:
    """A ControlStore in the ledger's table."""

    backend = "dynamodb"

    def __init__(self, client: Client, table: str, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self.table = table
        self._clock = clock

    def _error(self, action: str, exc: BaseException) -> ControlError:
        return ControlError(
            f"cannot {action} operator state in DynamoDB table {self.table}: {from_exception(exc)}"
        )

    async def get(self, names: Sequence[str]) -> dict[str, Doc]:
        now_s = self._clock()
        found: dict[str, Doc] = {}
        distinct = list(dict.fromkeys(names))
        for start in range(0, len(distinct), BATCH_GET_MAX_KEYS):
            pending: dict[str, Any] = {
                self.table: {
                    "Keys": [
                        {KEY_ATTRIBUTE: {"S": KEY_PREFIX + name}}
                        for name in distinct[start : start + BATCH_GET_MAX_KEYS]
                    ],
                    "ConsistentRead": True,
                }
            }
            while pending:
                try:
                    response = await self._client.batch_get_item(RequestItems=pending)
                except (BotoCoreError, ClientError) as exc:
                    raise self._error("read", exc) from exc
                for item in response.get("Responses", {}).get(self.table, []):
                    expires = item.get(TTL_ATTRIBUTE)
                    if expires is not None and float(expires["N"]) <= now_s:
                        continue
                    name = item[KEY_ATTRIBUTE]["S"].removeprefix(KEY_PREFIX)
                    found[name] = Doc(json.loads(item["doc"]["S"]), int(item["version"]["N"]))
                pending = response.get("UnprocessedKeys") or {}
        return found

    async def put(self, name: str, body: Body, *, version: int, ttl_s: float | None) -> bool:
        item: dict[str, Any] = {
            KEY_ATTRIBUTE: {"S": KEY_PREFIX + name},
            "doc": {"S": json.dumps(body)},
            "version": {"N": str(version + 1)},
        }
        if ttl_s is not None:
            item[TTL_ATTRIBUTE] = {"N": str(math.ceil(self._clock() + ttl_s))}
        condition: dict[str, Any]
        if version == 0:
            # Absent, or present but past its TTL and not swept yet.
            condition = {
                "ConditionExpression": "attribute_not_exists(#key) OR #ttl <= :now",
                "ExpressionAttributeNames": {"#key": KEY_ATTRIBUTE, "#ttl": TTL_ATTRIBUTE},
                "ExpressionAttributeValues": {":now": {"N": str(math.floor(self._clock()))}},
            }
        else:
            condition = {
                "ConditionExpression": "#version = :read",
                "ExpressionAttributeNames": {"#version": "version"},
                "ExpressionAttributeValues": {":read": {"N": str(version)}},
            }
        try:
            await self._client.put_item(TableName=self.table, Item=item, **condition)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == _CONDITION_FAILED:
                return False
            raise self._error("write", exc) from exc
        except BotoCoreError as exc:
            raise self._error("write", exc) from exc
        return True

    def read_model(self) -> ReadModel:
        # Documents: DynamoDB has no secondary index in the ledger's table to query by,
        # and adding one would be a new resource to create and grant (docs/console.md).
        return DocReadModel(self)
