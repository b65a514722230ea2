"""Adversarial review of the critical path: loss, double sends, miscounts, leaked permits, cancels.

Each test states one property of the promise in docs/design.md (a message leaves its
DLQ only once its copy is safe; one decision per message per cycle; begin ->
resubmit -> commit -> delete is crash-safe). Seven of them showed real bugs (each
was an `xfail(strict=True)` until its fix landed); the others pin down properties
that had no test yet.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from retryd.admission.backoff import Backoff, jitter_fraction
from retryd.admission.breaker import Breakers, BreakerState, CircuitBreaker
from retryd.admission.guards import Guards
from retryd.admission.ratelimit import RateLimits
from retryd.admission.verdicts import Defer, DeferReason, Go, Hold, Park
from retryd.aws import open_clients
from retryd.drain.cycle import Cycle, CycleReport
from retryd.ledger import MemoryLedger, create_table, open_ledger
from retryd.ledger.base import BeginStatus, Claim, LedgerError, Record
from retryd.metrics import Metrics
from retryd.models import (
    DeadLetter,
    Decision,
    ErrorClass,
    Job,
    Outcome,
    ParkReason,
    QueueRef,
    SendError,
    Target,
)
from retryd.service.lifecycle import run_once
from retryd.settings import (
    BackoffSettings,
    BreakerSettings,
    GuardSettings,
    RateLimitSettings,
    Settings,
)
from retryd.targets import Delivery, TargetRouter
from retryd.targets.router import OnAnswer
from retryd.targets.sender import Sender, Sent
from tests.clock_helpers import FakeClock
from tests.conftest import SettingsFactory
from tests.faults import Fault
from tests.world import ACCOUNT, REGION, World, envelope

PARKING = "retryd-parking"
WALL_NOW_S = 1_700_000_000.0
UNIT_QUEUE = QueueRef(
    "retry-unit",
    f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/retry-unit",
    f"arn:aws:sqs:{REGION}:{ACCOUNT}:retry-unit",
)
CHARGE = Target.from_arn(f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:charge")
PERMANENT = SendError(ErrorClass.PERMANENT, "ResourceNotFoundException", "no such function")
TRANSIENT = SendError(ErrorClass.TRANSIENT, "TooManyRequestsException", "slow down")


# -- helpers: several cycles of one long-lived Cycle, as `retryd run` keeps one -------------------


def run_cycles(
    settings: Settings,
    count: int,
    between: Callable[[CycleReport], None] | None = None,
) -> list[CycleReport]:
    """`count` cycles sharing one Cycle and one ledger; `between(report)` runs after each."""

    async def main() -> list[CycleReport]:
        metrics = Metrics(CollectorRegistry())
        async with (
            open_clients(settings.aws) as clients,
            open_ledger(settings.ledger, clients, metrics) as ledger,
        ):
            cycle = Cycle(settings, clients, metrics, ledger=ledger)
            reports = []
            for _ in range(count):
                report = await cycle.run(anyio.Event(), collect=True)
                reports.append(report)
                if between is not None:
                    await anyio.to_thread.run_sync(between, report)
        return reports

    return anyio.run(main)


def decisions(report: CycleReport) -> list[Decision]:
    assert report.decisions is not None
    return report.decisions


def make_visible(world: World, queue: str, report: CycleReport) -> None:
    """End the lease of every message the cycle received, so the next cycle sees them at once."""
    sqs = world.client("sqs")
    url = world.queue_url(queue)
    for decision in decisions(report):
        try:
            sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=decision.letter.receipt_handle, VisibilityTimeout=0
            )
        except sqs.exceptions.ReceiptHandleIsInvalid:
            continue  # deleted by the cycle: nothing to show again


def by_payload(report: CycleReport, field: str) -> dict[Any, Decision]:
    """Decisions keyed by one field of their envelope's payload."""
    out = {}
    for decision in decisions(report):
        body = json.loads(decision.letter.body)
        out[body["payload"][field]] = decision
    return out


def bodies(world: World, queue: str) -> list[Any]:
    return [json.loads(m["Body"]) for m in world.drain(queue)]


# -- helpers: the Sender without AWS (a router that answers as told) ------------------------------


class ScriptedRouter(TargetRouter):
    """Answers each job by its key; jobs whose key is in `gated` wait for `gate` first."""

    def __init__(
        self,
        answers: Mapping[str, SendError | None],
        gate: anyio.Event | None = None,
        gated: frozenset[str] = frozenset(),
    ) -> None:
        self._answers = dict(answers)
        self._gate = gate
        self._gated = gated
        self.calls: list[str] = []

    async def submit(
        self, jobs: Sequence[Job], on_answer: OnAnswer | None = None
    ) -> list[Delivery]:
        self.calls.extend(job.key for job in jobs)
        if self._gate is not None and any(job.key in self._gated for job in jobs):
            await self._gate.wait()
        await anyio.lowlevel.checkpoint()
        return [Delivery(job, self._answers.get(job.key)) for job in jobs]


def unit_job(name: str, *, sent_at_s: float | None = None, queue: QueueRef = UNIT_QUEUE) -> Job:
    attributes = {"SentTimestamp": str(int(sent_at_s * 1000))} if sent_at_s is not None else {}
    letter = DeadLetter(queue, f"m-{name}", f"rh-{name}", "{}", system_attributes=attributes)
    return Job(letter, CHARGE, "{}", f"key-{name}")


def half_open_breakers(canaries: int) -> tuple[Breakers, FakeClock, CircuitBreaker]:
    """Breakers whose CHARGE breaker has just turned half-open with `canaries` slots."""
    clock = FakeClock()
    settings = BreakerSettings(
        window_calls=1, min_calls=1, failure_rate=1.0, cooldown_s=10, half_open_calls=canaries
    )
    breakers = Breakers(settings, clock)
    breaker = breakers.for_target(CHARGE)
    assert breaker.permits(1) == 1
    breaker.record(success=False)
    clock.advance(10)
    assert breaker.state is BreakerState.HALF_OPEN
    return breakers, clock, breaker


def unit_guards(breakers: Breakers | None, ledger: Any = None, **extra: Any) -> Guards:
    return Guards(
        GuardSettings(allow_any_target=True),
        breakers=breakers,
        ledger=ledger,
        clock_s=lambda: WALL_NOW_S,
        **extra,
    )


def memory_ledger() -> MemoryLedger:
    return MemoryLedger(claim_s=300, ttl_s=86_400, owner="me", clock=lambda: WALL_NOW_S)


async def gos_for(guards: Guards, jobs: Sequence[Job]) -> list[Go]:
    verdicts = await guards.assess(list(jobs))
    gos = [verdict for verdict in verdicts if isinstance(verdict, Go)]
    assert len(gos) == len(jobs), verdicts
    return gos


# == findings that fail today ======================================================================


def test_a_lost_delete_never_resends_a_message_whose_key_another_message_shares(
    world: World, make_settings: SettingsFactory
) -> None:
    """Two dead letters with one idempotency key in one batch, their delete lost: by the next
    cycle each has reached the target exactly once, never a second time."""
    world.create_queue(PARKING)
    world.create_queue("retry-dup")
    world.create_queue("dest")
    for n in (1, 2):
        world.send(
            "retry-dup", envelope("sqs", world.queue_arn("dest"), {"n": n}, idempotencyKey="o-42")
        )
    world.faults.add(
        Fault("sqs", "DeleteMessageBatch", code="ServiceUnavailable", status=503, times=1)
    )
    settings = make_settings(drain={"workers_per_queue": 1})

    run_cycles(settings, 2, lambda r: make_visible(world, "retry-dup", r))

    # Whatever the fix (one claim per key per batch, or committed message ids kept per key),
    # two cycles later each dead letter has reached the target once and left its DLQ.
    assert sorted(body["n"] for body in bodies(world, "dest")) == [1, 2]
    assert world.depth("retry-dup") == 0


def test_a_committed_last_attempt_whose_delete_was_lost_is_only_deleted(
    world: World, make_settings: SettingsFactory
) -> None:
    """The target took the last allowed attempt but the delete was lost: next cycle it is only
    deleted (already-resubmitted), not also copied to the parking queue."""
    world.create_queue(PARKING)
    world.create_queue("retry-last")
    world.create_queue("dest")
    world.send("retry-last", envelope("sqs", world.queue_arn("dest"), {"n": 1}))
    world.faults.add(
        Fault("sqs", "DeleteMessageBatch", code="ServiceUnavailable", status=503, times=1)
    )
    settings = make_settings(guards={"max_attempts": 1})

    first, second = run_cycles(settings, 2, lambda r: make_visible(world, "retry-last", r))

    assert first.outcomes == {"resubmitted": 1}
    assert len(bodies(world, "dest")) == 1
    [decision] = decisions(second)
    assert (decision.outcome, decision.reason) == (Outcome.RESUBMITTED, "already-resubmitted")
    assert world.depth(PARKING) == 0
    assert world.depth("retry-last") == 0


def slow_batch_world(world: World) -> None:
    """retry-mix: a poison message, one for a fast queue, one for a queue slower than the lease."""
    world.create_queue(PARKING)
    world.create_queue("retry-mix")
    world.create_queue("fast-dest")
    world.create_queue("slow-dest")
    world.send("retry-mix", "poison: no envelope, no route")
    world.send("retry-mix", envelope("sqs", world.queue_arn("fast-dest"), {"n": "fast"}))
    world.send("retry-mix", envelope("sqs", world.queue_arn("slow-dest"), {"n": "slow"}))
    # Matched on the QueueUrl of the slow target only; held past the batch's lease.
    world.faults.add(
        Fault("sqs", "SendMessageBatch", code=None, delay_s=8, contains=f'{ACCOUNT}/slow-dest"')
    )


# Not extended past its first lease (the cap is the lease): the slow call is cut off there,
# as at drain.max_lease_s.
SLOW_BATCH = {"drain": {"visibility_timeout_s": 5, "max_lease_s": 5, "workers_per_queue": 1}}


def test_a_slow_target_does_not_undo_a_parking_copy_already_written(
    world: World, make_settings: SettingsFactory
) -> None:
    """A batch whose lease runs out on a slow target: the poison message already copied to
    parking is deleted (or at least never parked twice)."""
    slow_batch_world(world)

    def after(report: CycleReport) -> None:
        world.faults.clear()  # the held call is abandoned, never lands
        make_visible(world, "retry-mix", report)

    first, _ = run_cycles(make_settings(**SLOW_BATCH), 2, after)

    assert ("failed", "lease-expired") in first.reasons  # the slow one, rightly
    parked = world.drain(PARKING)
    assert [m["Body"] for m in parked] == ["poison: no envelope, no route"]


def test_a_slow_target_does_not_undo_another_targets_accepted_resubmission(
    world: World, make_settings: SettingsFactory
) -> None:
    """In one batch, a fast target's accepted copy is reported resubmitted and deleted even
    though another target of the batch outlives the lease."""
    slow_batch_world(world)

    [report] = run_cycles(make_settings(**SLOW_BATCH), 1)

    world.faults.clear()
    assert [body["n"] for body in bodies(world, "fast-dest")] == ["fast"]
    fast = [d for d in decisions(report) if '"fast"' in d.letter.body]
    assert [(d.outcome, d.reason) for d in fast] == [(Outcome.RESUBMITTED, "")]


def test_a_lease_expired_batch_with_a_committed_copy_is_not_sent_twice(
    world: World, make_settings: SettingsFactory
) -> None:
    """The safety net under the bug above: the accepted copy left in its DLQ by the lease
    expiry is only deleted next cycle (ledger DONE), not sent to its target again."""
    slow_batch_world(world)

    def after(report: CycleReport) -> None:
        world.faults.clear()
        make_visible(world, "retry-mix", report)

    _, second = run_cycles(make_settings(**SLOW_BATCH), 2, after)

    assert [body["n"] for body in bodies(world, "fast-dest")] == ["fast"]
    assert [body["n"] for body in bodies(world, "slow-dest")] == ["slow"]
    assert world.depth("retry-mix") == 0
    # Deleted in the first cycle once the bug above is fixed; only deleted in the second today.
    fast = [d for d in decisions(second) if '"fast"' in d.letter.body]
    assert [d.reason for d in fast] in ([], ["already-resubmitted"])


def test_a_breaker_deferral_never_hides_a_message_past_its_rescue() -> None:
    """An open breaker with a long cool-down must not hide a message until after SQS deletes it:
    it is parked retention-expiring, or hidden only while it can still be rescued."""
    clock = FakeClock()
    breakers = Breakers(
        BreakerSettings(window_calls=1, min_calls=1, cooldown_s=3_600, half_open_calls=1), clock
    )
    breaker = breakers.for_target(CHARGE)
    breaker.permits(1)
    breaker.record(success=False)
    horizon_s = 360.0
    retention_s = 345_600
    # SQS deletes it in 600 s: past the horizon, so the retention guard lets it by.
    deleted_at_s = WALL_NOW_S + 600
    queue = QueueRef(UNIT_QUEUE.name, UNIT_QUEUE.url, UNIT_QUEUE.arn, retention_s=retention_s)
    job = unit_job("old", sent_at_s=deleted_at_s - retention_s, queue=queue)
    guards = unit_guards(breakers, retention_horizon_s=horizon_s)

    [verdict] = anyio.run(guards.assess, [job])

    if isinstance(verdict, Park):
        assert verdict.reason is ParkReason.RETENTION_EXPIRING
    else:
        assert isinstance(verdict, Defer)
        assert verdict.reason is DeferReason.BREAKER_OPEN
        assert WALL_NOW_S + verdict.delay_s + horizon_s <= deleted_at_s


def commit_outage_world(world: World, make_settings: SettingsFactory) -> Settings:
    """One Lambda target: one message it accepts, one it throttles; every ledger commit fails."""
    world.create_queue(PARKING)
    world.create_queue("retry-fn")
    function_arn = world.create_function("fn")
    world.send("retry-fn", envelope("lambda", function_arn, {"n": "ok"}, idempotencyKey="k-ok"))
    world.send("retry-fn", envelope("lambda", function_arn, {"n": "boom"}, idempotencyKey="k-boom"))
    settings = make_settings(
        ledger={"backend": "dynamodb", "table": "retryd-ledger-review"},
        drain={"workers_per_queue": 1},
    )
    anyio.run(create_table, settings)
    world.faults.add(Fault("lambda", "Invoke", code="TooManyRequestsException", contains="boom"))
    # Only commits write a "committed" claim state; begins write "begun".
    world.faults.add(
        Fault(
            "dynamodb",
            "TransactWriteItems",
            code="InternalServerError",
            status=500,
            contains='"committed"',
        )
    )
    return settings


def test_a_failed_ledger_commit_still_deletes_the_accepted_copy(
    world: World, make_settings: SettingsFactory
) -> None:
    """The target has the copy, so a commit outage does not keep it in the DLQ (no resend);
    the outage is logged as ledger-settle-failed."""
    settings = commit_outage_world(world, make_settings)

    with capture_logs() as logs:
        report: CycleReport = anyio.run(lambda: run_once(settings, collect=True))

    outcomes = {n: (d.outcome, d.reason) for n, d in by_payload(report, "n").items()}
    assert outcomes == {
        "ok": (Outcome.RESUBMITTED, ""),
        "boom": (Outcome.FAILED, "transient-error"),
    }
    assert world.depth("retry-fn") == 1
    assert any(line["event"] == "ledger-settle-failed" for line in logs)


def test_a_failed_ledger_commit_still_releases_the_transient_failures_claims(
    world: World, make_settings: SettingsFactory
) -> None:
    """After a commit outage, the throttled message's claim is released: another replica
    (a new owner on the same table) resubmits it at once instead of deferring it."""
    settings = commit_outage_world(world, make_settings)
    first: CycleReport = anyio.run(lambda: run_once(settings, collect=True))
    world.faults.clear()
    make_visible(world, "retry-fn", first)

    second: CycleReport = anyio.run(lambda: run_once(settings, collect=True))

    [decision] = decisions(second)
    assert (decision.outcome, decision.reason) == (Outcome.RESUBMITTED, "")


def test_a_late_permanent_error_does_not_free_a_canary_slot_of_a_later_episode() -> None:
    """A canary from one half-open episode that ends in a permanent error after the breaker
    reopened and half-opened again must not hand a slot of the new episode back."""

    async def main() -> int:
        breakers, clock, breaker = half_open_breakers(canaries=2)
        ledger = memory_ledger()
        guards = unit_guards(breakers, ledger)
        gate = anyio.Event()
        router = ScriptedRouter(
            {"key-fail": TRANSIENT, "key-late": PERMANENT}, gate, frozenset({"key-late"})
        )
        sender = Sender(targets=router, guards=guards)
        act_by = anyio.current_time() + 60
        late = await gos_for(guards, [unit_job("late")])
        fail = await gos_for(guards, [unit_job("fail")])
        async with anyio.create_task_group() as group:
            group.start_soon(sender.send, late, act_by)
            await sender.send(fail, act_by)  # a canary fails: open again
            assert breaker.state is BreakerState.OPEN
            clock.advance(10)
            new_canaries = await gos_for(guards, [unit_job("c1"), unit_job("c2")])
            assert len(new_canaries) == 2
            gate.set()  # the first episode's slow canary ends in a permanent error
        return breaker.peek(1)

    # Both slots of the new episode are held by c1 and c2: a third canary must wait.
    assert anyio.run(main) == 0


# == properties that hold today and had no test ====================================================


def test_a_permanent_error_on_a_half_open_canary_frees_its_slot_and_its_claim() -> None:
    """A canary refused permanently says nothing about the target: its slot goes back unjudged
    (still half-open, slot free) and its ledger claim is released without an attempt."""

    async def main() -> tuple[BreakerState, int, Record | None]:
        breakers, _, breaker = half_open_breakers(canaries=1)
        ledger = memory_ledger()
        guards = unit_guards(breakers, ledger)
        sender = Sender(targets=ScriptedRouter({"key-a": PERMANENT}), guards=guards)
        gos = await gos_for(guards, [unit_job("a")])
        assert breaker.peek(1) == 0
        sent = await sender.send(gos, anyio.current_time() + 60)
        assert [d.error for d in sent.deliveries] == [PERMANENT]
        return breaker.state, breaker.peek(1), (await ledger.read(["key-a"])).get("key-a")

    state, free, record = anyio.run(main)
    assert (state, free) == (BreakerState.HALF_OPEN, 1)
    assert record is not None
    assert (record.attempts, record.claim_state) == (0, None)


def test_cancelled_mid_send_returns_every_permit_and_leaves_a_resumable_claim() -> None:
    """SIGTERM or a lease running out while the target call is in flight: the canary slots come
    back, and the begun claims resume later under the same key and attempt."""

    async def main() -> tuple[int, list[Any]]:
        breakers, _, breaker = half_open_breakers(canaries=2)
        ledger = memory_ledger()
        guards = unit_guards(breakers, ledger)
        router = ScriptedRouter({}, anyio.Event(), frozenset({"key-a", "key-b"}))
        sender = Sender(targets=router, guards=guards)
        gos = await gos_for(guards, [unit_job("a"), unit_job("b")])
        with anyio.move_on_after(0.2) as scope:
            await sender.send(gos, anyio.current_time() + 60)
        assert scope.cancelled_caught
        assert router.calls == ["key-a", "key-b"]
        again = await ledger.begin(
            [Claim(g.job.key, g.job.letter.message_id, 1, None) for g in gos]
        )
        return breaker.peek(2), [(b.status, b.attempt) for b in again]

    free, again = anyio.run(main)
    assert free == 2
    assert again == [(BeginStatus.RESUMED, 1), (BeginStatus.RESUMED, 1)]


class BrokenLedger(MemoryLedger):
    """A memory ledger whose reads or begins fail, as a ledger outage would."""

    def __init__(self, failing: str) -> None:
        super().__init__(claim_s=300, ttl_s=86_400, owner="me", clock=lambda: WALL_NOW_S)
        self._failing = failing

    def _fail(self, operation: str) -> None:
        if operation == self._failing:
            raise LedgerError(
                "memory", operation, SendError(ErrorClass.TRANSIENT, "Down", "injected")
            )

    async def read(self, keys: Sequence[str]) -> dict[str, Record]:
        self._fail("read")
        return await super().read(keys)

    async def begin(self, claims: Sequence[Claim]) -> list[Any]:
        self._fail("begin")
        return await super().begin(claims)


@pytest.mark.parametrize("failing", ["read", "begin"])
def test_a_ledger_outage_holds_the_message_sends_nothing_and_keeps_no_canary_slot(
    failing: str,
) -> None:
    """With the ledger down (read or begin), nothing is sent, the message is held untouched,
    and no half-open canary slot stays taken."""

    async def main() -> tuple[list[Any], Sent | None, list[str], int]:
        breakers, _, breaker = half_open_breakers(canaries=1)
        ledger = BrokenLedger(failing)
        guards = unit_guards(breakers, ledger)
        router = ScriptedRouter({})
        sender = Sender(targets=router, guards=guards)
        verdicts = await guards.assess([unit_job("a")])
        gos = [v for v in verdicts if isinstance(v, Go)]
        sent = await sender.send(gos, anyio.current_time() + 60) if gos else None
        return verdicts, sent, router.calls, breaker.peek(1)

    verdicts, sent, calls, free = anyio.run(main)
    assert calls == []
    assert free == 1
    if failing == "read":
        assert [type(v) for v in verdicts] == [Hold]
    else:
        assert sent is not None
        assert [h.reason for h in sent.held] == ["ledger-unavailable"]


def test_the_ledger_count_is_what_an_sqs_copy_is_stamped_with(
    world: World, make_settings: SettingsFactory, tmp_path: Any
) -> None:
    """The ledger counts 2 resubmissions of a key whose message says 0: the copy goes out as
    retryd.attempt 3 and the ledger then counts 3."""
    world.create_queue(PARKING)
    world.create_queue("retry-count")
    world.create_queue("dest")
    world.send(
        "retry-count", envelope("sqs", world.queue_arn("dest"), {"n": 1}, idempotencyKey="k")
    )
    settings = make_settings(ledger={"backend": "sqlite", "path": str(tmp_path / "ledger")})

    async def earlier_attempts() -> None:
        async with open_ledger(settings.ledger, None) as ledger:
            for attempt in (1, 2):
                claim = Claim("k", f"earlier-{attempt}", attempt, None)
                await ledger.begin([claim])
                await ledger.commit([claim], time.time() - 60)

    async def count() -> int:
        async with open_ledger(settings.ledger, None) as ledger:
            return (await ledger.read(["k"]))["k"].attempts

    anyio.run(earlier_attempts)
    report: CycleReport = anyio.run(lambda: run_once(settings, collect=True))

    [decision] = decisions(report)
    assert (decision.outcome, decision.attempt) == (Outcome.RESUBMITTED, 3)
    [copy] = world.drain("dest")
    assert copy["MessageAttributes"]["retryd.attempt"]["StringValue"] == "3"
    assert anyio.run(count) == 3


def test_a_refused_visibility_change_still_defers_and_sends_nothing(
    world: World, make_settings: SettingsFactory
) -> None:
    """ChangeMessageVisibilityBatch fails for a message not yet due: it is still deferred
    (only back sooner), never sent early, never deleted, and the failure is logged."""
    world.create_queue(PARKING)
    world.create_queue("retry-wait")
    world.create_queue("dest")
    key = next(f"k{i}" for i in range(1000) if jitter_fraction(f"k{i}", 0) > 0.5)
    world.send("retry-wait", envelope("sqs", world.queue_arn("dest"), {"n": 1}, idempotencyKey=key))
    world.faults.add(Fault("sqs", "ChangeMessageVisibilityBatch", code="InternalError", status=500))
    settings = make_settings(backoff={"base_s": 3_600, "max_s": 3_600})

    with capture_logs() as logs:
        report: CycleReport = anyio.run(lambda: run_once(settings, collect=True))

    [decision] = decisions(report)
    assert (decision.outcome, decision.reason) == (Outcome.DEFERRED, "backoff")
    assert world.depth("dest") == 0
    assert world.depth("retry-wait") == 1
    assert any(line["event"] == "defer-hide-failed" for line in logs)


def test_a_claim_left_by_a_crashed_owner_on_this_message_defers_until_it_expires() -> None:
    """Another owner's live claim on this very message: deferred claimed-elsewhere, nothing
    sent and no canary slot kept; once the claim has expired it resumes as the same attempt."""

    async def main() -> tuple[list[str], list[Any], int]:
        clock_s = [WALL_NOW_S]
        store_ledger = MemoryLedger(
            claim_s=300, ttl_s=86_400, owner="dead", clock=lambda: clock_s[0]
        )
        mine = MemoryLedger(
            claim_s=300,
            ttl_s=86_400,
            owner="me",
            clock=lambda: clock_s[0],
            store=store_ledger.store,
        )
        job = unit_job("a")
        await store_ledger.begin([Claim(job.key, job.letter.message_id, 1, None)])
        breakers, _, breaker = half_open_breakers(canaries=1)
        guards = unit_guards(breakers, mine)
        router = ScriptedRouter({})
        sender = Sender(targets=router, guards=guards)
        busy = await sender.send(await gos_for(guards, [job]), anyio.current_time() + 60)
        free = breaker.peek(1)
        clock_s[0] += 301
        resumed = await sender.send(await gos_for(guards, [job]), anyio.current_time() + 60)
        reasons = [d.reason.value for d in busy.deferred]
        return reasons, [(d.job.next_attempt, d.error) for d in resumed.deliveries], free

    reasons, resumed, free = anyio.run(main)
    assert reasons == ["claimed-elsewhere"]
    assert free == 1
    assert resumed == [(1, None)]


def test_the_record_of_a_released_claim_keeps_no_attempt() -> None:
    """A transient failure uses no attempt: the key's count stays 0 and its claim is gone."""

    async def main() -> Record:
        ledger = memory_ledger()
        guards = unit_guards(None, ledger)
        sender = Sender(targets=ScriptedRouter({"key-a": TRANSIENT}), guards=guards)
        await sender.send(await gos_for(guards, [unit_job("a")]), anyio.current_time() + 60)
        return (await ledger.read(["key-a"]))["key-a"]

    record = anyio.run(main)
    assert (record.attempts, record.claim_state, record.claim_message_id) == (0, None, None)


def test_rate_limited_jobs_are_deferred_unsent_and_return_their_canary_slots() -> None:
    """A bucket with one token and no refill within the lease: one canary goes, the others are
    deferred rate-limited without a call or a claim, and their slots go back."""

    async def main() -> tuple[Sent, list[str], int, dict[str, Record]]:
        breakers, _, breaker = half_open_breakers(canaries=3)
        ledger = memory_ledger()
        # Buckets start empty: this one has gained its one token before the batch.
        bucket_clock = FakeClock()
        rates = RateLimits(RateLimitSettings(per_s=0.001, burst=1), bucket_clock)
        rates.for_target(CHARGE.arn)
        bucket_clock.advance(1_000.0)
        guards = unit_guards(breakers, ledger, rates=rates)
        router = ScriptedRouter({})
        sender = Sender(targets=router, guards=guards)
        jobs = [unit_job("a"), unit_job("b"), unit_job("c")]
        sent = await sender.send(await gos_for(guards, jobs), anyio.current_time() + 30)
        records = await ledger.read([job.key for job in jobs])
        return sent, router.calls, breaker.peek(3), records

    sent, calls, free, records = anyio.run(main)
    assert calls == ["key-a"]
    assert [(d.job.key, d.reason) for d in sent.deferred] == [
        ("key-b", DeferReason.RATE_LIMITED),
        ("key-c", DeferReason.RATE_LIMITED),
    ]
    # One canary succeeded and keeps its slot; the two that never went give theirs back.
    assert free == 2
    assert sorted(records) == ["key-a"]


def test_a_message_whose_backoff_outlasts_its_retention_is_parked_not_hidden() -> None:
    """Retention rescue counts the backoff wait: a message SQS deletes before its next attempt
    would be due is parked retention-expiring instead of hidden until after its deletion."""
    key = next(f"k{i}" for i in range(1000) if jitter_fraction(f"k{i}", 1) > 0.5)
    horizon_s = 360.0
    retention_s = 345_600
    deleted_at_s = WALL_NOW_S + horizon_s + 1_000  # after the horizon, before the backoff ends
    queue = QueueRef(UNIT_QUEUE.name, UNIT_QUEUE.url, UNIT_QUEUE.arn, retention_s=retention_s)
    job = replace(unit_job("a", sent_at_s=deleted_at_s - retention_s, queue=queue), key=key)

    async def main() -> list[Any]:
        ledger = memory_ledger()
        earlier = Claim(key, "m-earlier", 1, None)
        await ledger.begin([earlier])
        await ledger.commit([earlier], WALL_NOW_S)
        guards = unit_guards(
            None,
            ledger,
            backoff=Backoff(BackoffSettings(base_s=3_600, max_s=3_600)),
            retention_horizon_s=horizon_s,
        )
        return await guards.assess([job])

    [verdict] = anyio.run(main)
    assert isinstance(verdict, Park)
    assert verdict.reason is ParkReason.RETENTION_EXPIRING


def test_a_claim_begun_as_counted_keeps_its_go_and_one_resumed_takes_the_ledgers_attempt() -> None:
    """A fresh claim sends the Go as admission made it; a claim left begun at a later
    attempt (a crashed owner's, expired) is resumed as that attempt, job and claim alike."""

    async def main() -> tuple[list[Go], list[Go]]:
        clock_s = [WALL_NOW_S]
        dead = MemoryLedger(claim_s=300, ttl_s=86_400, owner="dead", clock=lambda: clock_s[0])
        mine = MemoryLedger(
            claim_s=300, ttl_s=86_400, owner="me", clock=lambda: clock_s[0], store=dead.store
        )
        fresh, left = unit_job("fresh"), unit_job("left")
        await dead.begin([Claim(left.key, left.letter.message_id, 3, None)])
        clock_s[0] += 301
        guards = unit_guards(None, mine)
        gos = await gos_for(guards, [fresh, left])
        admitted = [part async for part in guards.admit(CHARGE, gos, anyio.current_time() + 60)]
        return gos, [go for part in admitted for go in part.go]

    asked, sent = anyio.run(main)
    assert sent[0] is asked[0]
    assert (sent[0].attempt, sent[0].job.attempt) == (1, 0)
    assert sent[0].permit.claim is not None
    assert sent[0].permit.claim.attempt == 1
    assert (sent[1].attempt, sent[1].job.attempt) == (3, 2)
    assert sent[1].permit.claim is not None
    assert sent[1].permit.claim.attempt == 3
