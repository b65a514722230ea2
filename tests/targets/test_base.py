"""What every resubmitter shares (targets/base.py): the batch loop, packing, cancellation."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from retryd.models import ErrorClass, Job, Refusal, SendError, Target
from retryd.targets.base import (
    MAX_BATCH_ENTRIES,
    BatchResubmitter,
    Delivery,
    Destination,
    Entry,
    Prepared,
    RefusedError,
    Resubmitter,
    pack_batches,
)
from retryd.targets.event_bus import EventBusTarget
from retryd.targets.lambda_function import LambdaFunctionTarget
from retryd.targets.sqs_queue import MAX_PAYLOAD_BYTES
from retryd.targets.state_machine import StateMachineTarget
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


# -- the batch loop (BatchResubmitter), on an in-memory target ----------------------------

ENTRY_LIMIT_BYTES = 1_000
CALL_LIMIT_BYTES = 2_500
# What the in-memory target does with a job, as written in its body.
KINDS = ("ok", "ok", "ok", "fail", "refuse", "raise")


class _InMemoryTarget(BatchResubmitter):
    """A batch target whose jobs say, in their body, how big they are and how they fare."""

    def __init__(self) -> None:
        self.calls: list[list[Entry]] = []

    async def open(self, target: Target) -> Destination | SendError:
        return Destination(target.arn, ENTRY_LIMIT_BYTES, CALL_LIMIT_BYTES)

    def prepare(self, target: Target, job: Job) -> Prepared:
        plan = json.loads(job.body)
        if plan["kind"] == "refuse":
            raise RefusedError(SendError.refused(Refusal.INVALID_PAYLOAD, "refused"))
        if plan["kind"] == "raise":
            raise UnicodeEncodeError("utf-8", "x", 0, 1, "unencodable")
        return Prepared({"key": job.key, "kind": plan["kind"]}, plan["size"])

    async def send(self, destination: Destination, entries: list[Entry]) -> list[SendError | None]:
        self.calls.append(entries)
        return [
            SendError(ErrorClass.TRANSIENT, "Failed", entry["key"])
            if entry["kind"] == "fail"
            else None
            for entry in entries
        ]


@given(st.lists(st.tuples(st.integers(0, 1_200), st.sampled_from(KINDS)), max_size=30))
def test_batch_loop_gives_each_job_its_own_verdict_within_the_limits(
    plans: list[tuple[int, str]],
) -> None:
    """One delivery per job in order; refusals fail alone; calls hold only sendable entries."""
    target = Target.from_arn(f"arn:aws:sqs:{REGION}:{ACCOUNT}:memory")
    jobs = [
        make_job(target, json.dumps({"size": size, "kind": kind}), key=f"k{n}")
        for n, (size, kind) in enumerate(plans)
    ]
    resubmitter = _InMemoryTarget()

    deliveries = anyio.run(resubmitter.submit, target, jobs)

    assert [delivery.job for delivery in deliveries] == jobs
    sendable = []
    for job, (size, kind), delivery in zip(jobs, plans, deliveries, strict=True):
        error = delivery.error
        if kind == "refuse":
            assert error == SendError.refused(Refusal.INVALID_PAYLOAD, "refused")
        elif kind == "raise":
            assert error is not None
            assert error.refusal is Refusal.INVALID_PAYLOAD
            assert "UnicodeEncodeError" in error.message
        elif size > ENTRY_LIMIT_BYTES:
            assert error is not None
            assert error.refusal is Refusal.PAYLOAD_TOO_LARGE
        else:
            sendable.append(job.key)
            assert (error is None) == (kind == "ok")
    # Every sendable entry went out exactly once, in order, in calls within both limits.
    assert [entry["key"] for call in resubmitter.calls for entry in call] == sendable
    sizes = {job.key: size for job, (size, _) in zip(jobs, plans, strict=True)}
    for call in resubmitter.calls:
        assert 1 <= len(call) <= MAX_BATCH_ENTRIES
        assert sum(sizes[entry["key"]] for entry in call) <= CALL_LIMIT_BYTES
