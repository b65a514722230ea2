"""A target that breaks hands its claims back and leaves the batch's other targets alone
(issue 12, defect 2, the sender's side)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.lowlevel

from retryd.ledger.base import Record
from retryd.models import Decision, Job, Outcome, Target
from retryd.service.lifecycle import run_once
from retryd.targets import Delivery
from retryd.targets.router import OnAnswer
from retryd.targets.sender import Sender, Sent
from tests.conftest import SettingsFactory
from tests.drain.test_settling_rules import (
    CHARGE,
    ScriptedRouter,
    decisions,
    gos_for,
    half_open_breakers,
    make_visible,
    memory_ledger,
    unit_guards,
    unit_job,
)
from tests.faults import Fault
from tests.world import ACCOUNT, REGION, World, envelope

PARKING = "retryd-parking"
REFUND = Target.from_arn(f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:refund")


def by_payload(found: Sequence[Decision]) -> dict[str, tuple[Outcome, str]]:
    return {json.loads(d.letter.body)["payload"]["n"]: (d.outcome, str(d.reason)) for d in found}


def test_a_malformed_answer_fails_its_target_alone_and_leaves_no_live_claim(
    world: World, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """GetQueueUrl answers 200 without a QueueUrl: that target's message fails, a slower
    Lambda target and another queue in the same batch still go, and the next process (a new
    ledger owner) resubmits the failed one at once instead of deferring it claimed-elsewhere."""
    world.create_queue(PARKING)
    world.create_queue("retry-mixed")
    world.create_queue("dest-broken")
    world.create_queue("dest-ok")
    function_arn = world.create_function("slow")
    world.send("retry-mixed", envelope("sqs", world.queue_arn("dest-broken"), {"n": "broken"}))
    world.send("retry-mixed", envelope("sqs", world.queue_arn("dest-ok"), {"n": "ok"}))
    world.send("retry-mixed", envelope("lambda", function_arn, {"n": "slow"}))
    world.faults.add(Fault("sqs", "GetQueueUrl", contains='"dest-broken"', answer="{}"))
    # Still in flight when the broken lookup has failed.
    world.faults.add(Fault("lambda", "Invoke", code=None, delay_s=2))
    settings = make_settings(
        ledger={"backend": "sqlite", "path": str(tmp_path / "ledger.sqlite3")},
        drain={"workers_per_queue": 1},
    )

    first = anyio.run(lambda: run_once(settings, collect=True))
    world.faults.clear()
    make_visible(world, "retry-mixed", first)
    second = anyio.run(lambda: run_once(settings, collect=True))

    outcomes = by_payload(decisions(first))
    # internal-error while the SQS target raises for it; transient-error once it reads the
    # malformed answer as a failed call (the other half of defect 2, in the target itself).
    assert outcomes.pop("broken") in {
        (Outcome.FAILED, "internal-error"),
        (Outcome.FAILED, "transient-error"),
    }
    assert outcomes == {"ok": (Outcome.RESUBMITTED, ""), "slow": (Outcome.RESUBMITTED, "")}
    assert by_payload(decisions(second)) == {"broken": (Outcome.RESUBMITTED, "")}
    assert [json.loads(m["Body"])["n"] for m in world.drain("dest-broken")] == ["broken"]
    assert world.depth("retry-mixed") == 0


class BrokenRouter(ScriptedRouter):
    """Raises for every job of `broken`, as a resubmitter with a bug would; answers the rest."""

    def __init__(self, broken: Target) -> None:
        super().__init__({})
        self._broken = broken

    async def submit(
        self, jobs: Sequence[Job], on_answer: OnAnswer | None = None
    ) -> list[Delivery]:
        await anyio.lowlevel.checkpoint()
        if any(job.target == self._broken for job in jobs):
            raise KeyError("QueueUrl")
        return await super().submit(jobs, on_answer)


def test_a_raising_resubmitter_releases_its_claims_and_permits() -> None:
    """A resubmitter that raises: its jobs are held internal-error with their ledger claims and
    breaker permits handed back; the other target's job in the same send is accepted."""

    async def main() -> tuple[Sent, dict[str, Record], int]:
        breakers, _, breaker = half_open_breakers(canaries=1)
        ledger = memory_ledger()
        guards = unit_guards(breakers, ledger)
        sender = Sender(targets=BrokenRouter(CHARGE), guards=guards)
        refund = Job(unit_job("r").letter, REFUND, "{}", "key-r")
        gos = await gos_for(guards, [unit_job("a"), refund])
        sent = await sender.send(gos, anyio.current_time() + 60)
        free = breaker.peek(1)
        return sent, await ledger.read(["key-a", "key-r"]), free

    sent, records, free = anyio.run(main)
    assert [(h.job.key, h.reason) for h in sent.held] == [("key-a", "internal-error")]
    assert [(d.job.key, d.error) for d in sent.deliveries] == [("key-r", None)]
    assert (records["key-a"].claim_state, records["key-a"].attempts) == (None, 0)
    assert records["key-r"].attempts == 1
    assert free == 1
