"""Idempotency keys: the identity under which the ledger counts a message's attempts.

A key must survive round trips that drop retryd's attribute stamps (a Lambda DLQ
keeps only the event), so when nobody declared one it is derived from what is
sent and where: the same payload to the same target is the same piece of work,
however its JSON happens to be spelled.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any, Final

HASH_PREFIX = "sha256:"
# Keys of retryd's own items in the ledger table (retryd.cluster's state, operator
# controls): a declared key there would read or overwrite them, so it is not used.
RESERVED_PREFIXES = ("retryd-cluster/", "retryd-control/")
# Keys retryd writes are at most this long (a hash key is 71 characters), which
# also keeps them well inside a DynamoDB partition key's 2048-byte limit.
MAX_KEY_CHARS = 512

# What parsed_json answers for text that is not JSON (or nested deeper than the parser
# follows). Not None: a body of `null` is JSON.
NOT_JSON: Final = object()
# Bodies whose parse is kept: a letter is resolved in one go (every resolver that reads
# its body, then its key), so the last two (a body and an SNS notification's Message)
# cover it; more would only hold large documents longer.
PARSES_KEPT = 2


@functools.lru_cache(maxsize=PARSES_KEPT)
def parsed_json(text: str) -> Any:
    """`text` parsed as JSON, or NOT_JSON: parsed once however many resolvers ask.

    Every resolver that recognises its shape by the body, and then the key, used to
    parse the same body again (four times for a plain JSON body). The document is
    shared between them: read it, never change it.
    """
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return NOT_JSON


def compact_json(value: Any, *, sort_keys: bool = False) -> str:
    """JSON with no insignificant whitespace, non-ASCII kept as itself where it can be.

    A JSON `\\ud800` escape decodes to a lone surrogate, which cannot be encoded as
    UTF-8 for the wire; such values keep their escapes instead.
    """
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=True, sort_keys=sort_keys)
    return text


def canonical_payload(body: str) -> str:
    """The body as sorted, compact JSON when it is JSON; otherwise the body itself."""
    document = parsed_json(body)
    if document is NOT_JSON:
        # Not JSON: its exact text is its identity.
        return body
    try:
        return compact_json(document, sort_keys=True)
    except (ValueError, RecursionError):
        # Nested too deep to re-serialise: its exact text is its identity.
        return body


def hashed_key(target_arn: str, body: str) -> str:
    """The key derived from (target, canonical payload) when none was declared."""
    material = f"{target_arn}\n{canonical_payload(body)}"
    # surrogatepass: a body with a lone surrogate must still hash, not raise.
    digest = hashlib.sha256(material.encode("utf-8", errors="surrogatepass")).hexdigest()
    return HASH_PREFIX + digest


def parking_key(queue_arn: str, body: str) -> str:
    """The key a letter no resolver could turn into a job is parked under.

    It has no target to derive a key from, so its DLQ stands in for one: the same
    body in the same DLQ is the same piece of work, parked once per message.
    """
    return hashed_key(queue_arn, body)


def idempotency_key(target_arn: str, body: str, declared: str | None) -> str:
    """The declared key when there is a usable one, else the hash.

    An empty key counts as none, and so does one that is not valid Unicode (a JSON
    `\\ud800` escape decodes to a lone surrogate): no ledger can store it, and a key
    that fails every ledger write would hold its message back forever. So does a key
    under one of RESERVED_PREFIXES, where retryd keeps items of its own.
    """
    if declared and _encodable(declared) and not declared.startswith(RESERVED_PREFIXES):
        return declared
    return hashed_key(target_arn, body)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
