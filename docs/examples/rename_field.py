"""An example transform: rewrite a renamed field so that old messages fit the new consumer.

The story: the orders consumer now reads `customerId`, and the producer used to
write `customer_id`. Messages that failed before the producer was fixed sit in a
DLQ with the old name; resent as they are, they would fail again. This transform
renames the field on the way back, and parks (rather than guesses) when a
message carries both names with different values.

Use it from a `[[hooks]]` rule, after installing it in your own package and
registering it as an entry point (see docs/hooks.md):

    [[hooks]]
    queue = "retry-orders"
    transform = "rename-customer-id"
"""

from __future__ import annotations

from typing import Any

from retryd.resolve.hooks import FailureContext, ParkInstead

__version__ = "1.0.0"

# Old name -> new name, at the top level of the payload.
RENAMES = {"customer_id": "customerId"}


def transform(payload: Any, context: FailureContext) -> Any:
    """The payload with each old field name replaced by the new one; ParkInstead on a conflict."""
    if not isinstance(payload, dict):
        return ParkInstead(f"expected a JSON object from {context.source_queue}")
    renamed = dict(payload)
    for old, new in RENAMES.items():
        if old not in renamed:
            continue
        value = renamed.pop(old)
        if new in renamed and renamed[new] != value:
            return ParkInstead(f"both {old} and {new} are set, to different values")
        renamed[new] = value
    return renamed
