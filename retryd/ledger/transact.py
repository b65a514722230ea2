"""DynamoDB transactions for a group of ledger calls: whose writes go together, within the limits.

The calls of a group (`group.py`) write one item per key, whatever number of
calls touched it: their decisions are applied in order to one record, so no two
actions of a transaction ever name the same item, which DynamoDB refuses. The
items are then packed into `TransactWriteItems` requests of at most 100 items
and 4 MB: the keys of calls that share a key travel together where they fit (a
call is answered once every request that carried its items was), a set of keys
too large for one request is split, and each piece goes into the first request
with room for it, so no two requests could have been one.

References: TransactWriteItems' 100 actions and 4 MB, and one action per item,
https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html;
item sizes, https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# TransactWriteItems takes at most 100 actions, and items of at most 4 MB in all.
TRANSACT_MAX_ITEMS = 100
TRANSACT_MAX_BYTES = 4_000_000
# What a number or a list/map costs at most in an item's size, besides its contents.
_NUMBER_BYTES = 21
_CONTAINER_BYTES = 3


def item_bytes(item: Mapping[str, Any]) -> int:
    """An upper estimate of an item's size as DynamoDB counts it: names plus values."""
    return sum(len(name.encode()) + _value_bytes(value) for name, value in item.items())


def _value_bytes(value: Mapping[str, Any]) -> int:
    if "S" in value:
        text: str = value["S"]
        # Ascii, by far the common case, is one byte a character; else count exactly.
        return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    if "N" in value:
        return _NUMBER_BYTES
    if "L" in value:
        return _CONTAINER_BYTES + sum(1 + _value_bytes(entry) for entry in value["L"])
    if "M" in value:
        return _CONTAINER_BYTES + sum(1 + n + _value_bytes(v) for n, v in _named(value["M"]))
    # Types the ledger never writes (binary, sets, null, bool): counted as their repr.
    return len(repr(value))


def _named(members: Mapping[str, Any]) -> list[tuple[int, Any]]:
    return [(len(name.encode()), member) for name, member in members.items()]


def together(calls: Sequence[Sequence[str]], written: Sequence[str]) -> list[list[str]]:
    """The written keys in sets that calls join: two keys of one call, or of two calls
    sharing a key, are in one set. Each set in the order its keys first appear."""
    wanted = dict.fromkeys(written)
    parent: dict[str, str] = {key: key for key in wanted}

    def root(key: str) -> str:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for call in calls:
        mine = [key for key in call if key in wanted]
        for key in mine[1:]:
            parent[root(key)] = root(mine[0])
    sets: dict[str, list[str]] = {}
    for key in wanted:
        sets.setdefault(root(key), []).append(key)
    return list(sets.values())


def pack(
    calls: Sequence[Sequence[str]],
    sizes: Mapping[str, int],
    *,
    max_items: int = TRANSACT_MAX_ITEMS,
    max_bytes: int = TRANSACT_MAX_BYTES,
) -> list[list[str]]:
    """The keys of `sizes` (each key's item size) in transactions within the limits.

    Every key is in exactly one transaction. The keys `together` puts in one set
    share a transaction when they fit in one; a larger set is cut, in order, into
    pieces as full as the limits allow. Each set or piece goes into the first
    transaction with room for it (first fit), so any two transactions together
    exceed a limit: none could have been spared. A single item larger than
    `max_bytes` goes alone (DynamoDB refuses it, and says so to its callers only).
    """
    transactions: list[list[str]] = []
    # Items and bytes in each transaction so far.
    room: list[tuple[int, int]] = []
    for keys in together(calls, list(sizes)):
        for piece in _pieces(keys, sizes, max_items, max_bytes):
            piece_bytes = sum(sizes[key] for key in piece)
            for index, (items, used) in enumerate(room):
                if items + len(piece) <= max_items and used + piece_bytes <= max_bytes:
                    transactions[index].extend(piece)
                    room[index] = (items + len(piece), used + piece_bytes)
                    break
            else:
                transactions.append(list(piece))
                room.append((len(piece), piece_bytes))
    return transactions


def _pieces(
    keys: list[str], sizes: Mapping[str, int], max_items: int, max_bytes: int
) -> list[list[str]]:
    """`keys` whole if they fit in one transaction, else cut in order into full pieces."""
    if len(keys) <= max_items and sum(sizes[key] for key in keys) <= max_bytes:
        return [keys]
    pieces: list[list[str]] = [[]]
    used = 0
    for key in keys:
        current = pieces[-1]
        if current and (len(current) >= max_items or used + sizes[key] > max_bytes):
            pieces.append([])
            current, used = pieces[-1], 0
        current.append(key)
        used += sizes[key]
    return pieces
