"""Each accepted job is settled the moment its own answer is in (issue 12, defect 1).

Lambda and Step Functions have no batch API: ten jobs for one function are ten calls.
One slow call must not hold the other nine answers back until the lease deadline
cancels them all, or the nine are left in the DLQ and sent again.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from retryd.models import Outcome
from tests.conftest import SettingsFactory
from tests.drain.test_settling_rules import decisions, make_visible, run_cycles
from tests.faults import Fault
from tests.world import World, envelope

PARKING = "retryd-parking"
# The lease (5 s) ends while one call is held 8 s; the other nine answer at once. The cap
# on extending it is the lease itself, so the held call is cut off as at drain.max_lease_s.
SHORT_LEASE = {"drain": {"visibility_timeout_s": 5, "max_lease_s": 5, "workers_per_queue": 1}}
SLOW_HELD_S = 8


def recorded_ids(world: World, is_call: Callable[[dict[str, Any]], bool]) -> list[str]:
    """The payload ids of the calls moto recorded and `is_call` picks, one per call."""
    ids = []
    for entry in world.server.recording():
        if not is_call(entry):
            continue
        body = entry.get("body") or ""
        if entry.get("body_encoded"):
            body = base64.b64decode(body).decode()
        if "/invocations" in entry.get("url", ""):
            ids.append(json.loads(body)["id"])
        else:
            ids.append(json.loads(json.loads(body)["input"])["id"])
    return ids


def is_invoke(entry: dict[str, Any]) -> bool:
    return "/invocations" in entry.get("url", "")


def is_start_execution(entry: dict[str, Any]) -> bool:
    target = entry.get("headers", {}).get("X-Amz-Target", "")
    return str(target).endswith(".StartExecution")


def slow_sibling_world(world: World, target_type: str) -> str:
    """retry-ten: ten envelopes for one function or state machine; the call for id-9 is held."""
    world.create_queue(PARKING)
    world.create_queue("retry-ten")
    if target_type == "lambda":
        arn = world.create_function("charge")
        service, operation = "lambda", "Invoke"
    else:
        arn = world.create_state_machine("charge")
        service, operation = "states", "StartExecution"
    for n in range(10):
        world.send("retry-ten", envelope(target_type, arn, {"id": f"id-{n}"}))
    # Held past the lease, then passed on to moto: a slow but working target.
    world.faults.add(
        Fault(service, operation, code=None, delay_s=SLOW_HELD_S, contains="id-9", times=1)
    )
    world.record()
    return arn


@pytest.mark.parametrize(
    ("target_type", "is_call"),
    [("lambda", is_invoke), ("stepfunctions", is_start_execution)],
)
def test_a_slow_sibling_does_not_send_the_accepted_jobs_again(
    world: World,
    make_settings: SettingsFactory,
    target_type: str,
    is_call: Callable[[dict[str, Any]], bool],
) -> None:
    """Ten jobs for one target, one answer held past the lease: the nine accepted are decided
    resubmitted and deleted in that cycle, and over two cycles none of them is sent twice."""
    slow_sibling_world(world, target_type)

    def after(report: Any) -> None:
        world.faults.clear()  # the held call is abandoned before it reaches moto
        make_visible(world, "retry-ten", report)

    first, second = run_cycles(make_settings(**SHORT_LEASE), 2, after)

    outcomes = Counter((d.outcome, d.reason) for d in decisions(first))
    assert outcomes == {(Outcome.RESUBMITTED, ""): 9, (Outcome.FAILED, "lease-expired"): 1}
    assert [json.loads(d.letter.body)["payload"]["id"] for d in decisions(second)] == ["id-9"]
    assert world.depth("retry-ten") == 0
    calls = recorded_ids(world, is_call)
    assert sorted(calls) == sorted(f"id-{n}" for n in range(10))
