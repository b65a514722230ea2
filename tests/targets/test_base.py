"""What every resubmitter shares (targets/base.py): batch packing and cancellation."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from retryd.models import (
    Target,
)
from retryd.targets.base import MAX_BATCH_ENTRIES, Delivery, Resubmitter, pack_batches
from retryd.targets.event_bus import (
    EventBusTarget,
)
from retryd.targets.lambda_function import (
    LambdaFunctionTarget,
)
from retryd.targets.sqs_queue import (
    MAX_PAYLOAD_BYTES,
)
from retryd.targets.state_machine import (
    StateMachineTarget,
)
from tests.targets.helpers import make_job
from tests.world import ACCOUNT, REGION


@given(st.lists(st.integers(0, 150_000), max_size=40))
def test_pack_batches_respects_both_limits_and_order(sizes: list[int]) -> None:
    """Batches keep the order, hold at most 10, and stay within the bytes unless alone."""
    batches = pack_batches(sizes, lambda size: size, MAX_PAYLOAD_BYTES)
    assert [size for batch in batches for size in batch] == sizes
    for batch in batches:
        assert 1 <= len(batch) <= MAX_BATCH_ENTRIES
        assert sum(batch) <= MAX_PAYLOAD_BYTES or len(batch) == 1


class _HangingClient:
    """A client whose calls never answer, to cancel resubmitters mid-call."""

    async def invoke(self, **_: Any) -> dict[str, Any]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def start_execution(self, **_: Any) -> dict[str, Any]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def put_events(self, **_: Any) -> dict[str, Any]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("resubmitter", "arn"),
    [
        (LambdaFunctionTarget, f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:f"),
        (StateMachineTarget, f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:m"),
        (
            lambda client, _limiter: EventBusTarget(client),
            f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/b",
        ),
    ],
)
def test_cancellation_propagates_instead_of_becoming_an_error(
    resubmitter: Callable[[Any, anyio.CapacityLimiter], Resubmitter], arn: str
) -> None:
    """Cancelling a submit mid-call cancels it; it is never reported as a failed delivery."""
    target = Target.from_arn(arn)
    # Valid for all three targets, so each really reaches its (hanging) client.
    body = json.dumps({"Source": "s", "DetailType": "T", "Detail": {}})
    jobs = [make_job(target, body, key=f"k{n}") for n in range(3)]
    returned: list[Delivery] | None = None

    async def main() -> bool:
        nonlocal returned
        with anyio.move_on_after(0.05) as scope:
            returned = await resubmitter(_HangingClient(), anyio.CapacityLimiter(2)).submit(
                target, jobs
            )
        return scope.cancelled_caught

    assert anyio.run(main)
    assert returned is None
