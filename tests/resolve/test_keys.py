"""Idempotency keys: declared keys win; derived keys follow a payload's meaning, not spelling."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from retryd.resolve.keys import (
    NOT_JSON,
    canonical_payload,
    compact_json,
    hashed_key,
    idempotency_key,
    parsed_json,
)
from tests import strategies

LAMBDA_ARN = "arn:aws:lambda:us-east-1:123456789012:function:charge"

json_values = strategies.json_values(max_leaves=20, max_size=4)
arns = st.builds(
    "arn:aws:{}:us-east-1:{}:{}".format,
    st.sampled_from(["lambda", "sqs", "sns", "states", "events"]),
    st.from_regex(r"\d{12}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9:/_-]{1,30}", fullmatch=True),
)


def _reorder(value: Any, rng: random.Random) -> Any:
    """The same JSON value with every object's keys in a shuffled order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {key: _reorder(inner, rng) for key, inner in items}
    if isinstance(value, list):
        return [_reorder(inner, rng) for inner in value]
    return value


def test_declared_key_is_used_verbatim() -> None:
    """A declared key is the key, whatever the payload."""
    assert idempotency_key(LAMBDA_ARN, '{"a": 1}', "order-42-charge") == "order-42-charge"


def test_empty_declared_key_counts_as_none() -> None:
    """An empty declared key falls back to the hash rather than keying every message the same."""
    assert idempotency_key(LAMBDA_ARN, "x", "") == hashed_key(LAMBDA_ARN, "x")


def test_hash_key_is_sha256_of_target_and_canonical_payload() -> None:
    """The derived key is exactly sha256(target ARN, newline, sorted compact JSON)."""
    expected = hashlib.sha256(f'{LAMBDA_ARN}\n{{"a":1,"b":[true,null]}}'.encode()).hexdigest()
    key = idempotency_key(LAMBDA_ARN, '{ "b": [true, null],\n "a": 1 }', None)
    assert key == f"sha256:{expected}"


def test_non_json_body_is_hashed_as_its_exact_text() -> None:
    """Text that is not JSON keeps its whitespace: it is its own identity."""
    assert canonical_payload(" card declined ") == " card declined "
    assert hashed_key(LAMBDA_ARN, "card declined") != hashed_key(LAMBDA_ARN, " card declined")


def test_json_scalars_are_canonical_too() -> None:
    """A JSON scalar body is re-serialised, so padding around it does not change the key."""
    assert canonical_payload(" 42 \n") == "42"
    assert canonical_payload('"text"') == '"text"'


def test_too_deep_json_falls_back_to_raw_text() -> None:
    """A body nested beyond the parser's recursion limit is hashed raw instead of raising."""
    body = "[" * 100_000 + "]" * 100_000
    assert canonical_payload(body) == body
    assert hashed_key(LAMBDA_ARN, body).startswith("sha256:")


def test_lone_surrogate_escape_still_hashes() -> None:
    """A JSON escape for half a surrogate pair yields a key and a UTF-8-safe canonical form."""
    canonical = canonical_payload('{"a": "\\ud800"}')
    canonical.encode("utf-8")
    assert hashed_key(LAMBDA_ARN, '"\\ud800"').startswith("sha256:")


def test_compact_json_keeps_non_ascii_text() -> None:
    """Non-ASCII characters stay themselves, keeping bodies small."""
    assert compact_json({"name": "Zoë"}) == '{"name":"Zoë"}'


@given(value=json_values, rng=st.randoms(), indent=st.sampled_from([None, 0, 2, "\t"]))
def test_key_is_stable_under_reordering_and_whitespace(
    value: Any, rng: random.Random, indent: Any
) -> None:
    """Reordered keys and different whitespace give the same derived key."""
    plain = json.dumps(value)
    respelled = json.dumps(_reorder(value, rng), indent=indent)
    assert idempotency_key(LAMBDA_ARN, plain, None) == idempotency_key(LAMBDA_ARN, respelled, None)


@given(first=arns, second=arns, body=st.text() | json_values.map(json.dumps))
def test_key_differs_for_different_targets(first: str, second: str, body: str) -> None:
    """The same payload bound for two targets is two pieces of work."""
    same = idempotency_key(first, body, None) == idempotency_key(second, body, None)
    assert same == (first == second)


@given(first=json_values, second=json_values)
def test_key_differs_for_different_payloads(first: Any, second: Any) -> None:
    """Payloads with different canonical forms never share a derived key."""
    first_body, second_body = json.dumps(first), json.dumps(second)
    same_payload = canonical_payload(first_body) == canonical_payload(second_body)
    same_key = hashed_key(LAMBDA_ARN, first_body) == hashed_key(LAMBDA_ARN, second_body)
    assert same_key == same_payload


def test_a_declared_key_that_is_not_valid_unicode_is_replaced_by_the_hash() -> None:
    """A lone surrogate cannot be stored by any ledger: the derived key is used instead."""
    key = idempotency_key("arn:aws:sqs:us-east-1:123456789012:q", '{"a": 1}', "bad\ud800key")
    assert key == hashed_key("arn:aws:sqs:us-east-1:123456789012:q", '{"a": 1}')


@given(rest=st.text(max_size=20))
def test_a_declared_key_in_retryds_own_item_space_is_not_used(rest: str) -> None:
    """A producer's key under retryd-cluster/ or retryd-control/ would land on retryd's own
    items in the ledger table: the derived key is used instead."""
    for prefix in ("retryd-cluster/", "retryd-control/"):
        declared = prefix + rest
        assert idempotency_key(LAMBDA_ARN, "x", declared) == hashed_key(LAMBDA_ARN, "x")


def _canonical_parsing_each_time(body: str) -> str:
    """canonical_payload as it was before bodies were parsed once (the reference)."""
    try:
        return compact_json(json.loads(body), sort_keys=True)
    except (ValueError, RecursionError):
        return body


@given(body=st.text() | json_values.map(json.dumps) | st.sampled_from(["null", " null ", "[]"]))
def test_canonical_payload_is_what_parsing_each_time_gave(body: str) -> None:
    """The shared parse changes no key: the canonical form is the one a fresh parse gives."""
    assert canonical_payload(body) == _canonical_parsing_each_time(body)
    # Asked again (now from the shared parse), the same answer.
    assert canonical_payload(body) == _canonical_parsing_each_time(body)


def test_parsed_json_tells_json_null_from_not_json() -> None:
    """`null` is JSON (None); text that is not JSON, or nested too deep, is NOT_JSON."""
    assert parsed_json("null") is None
    assert parsed_json("card declined") is NOT_JSON
    assert parsed_json("[" * 100_000 + "]" * 100_000) is NOT_JSON
