"""Slow answers: work taking 2-3 leases is kept alive by the batch heartbeat, never sent twice.

Each test slows one step of a batch (the target's answer, the parking write, the
ledger's writes, the DLQ delete) to 2.5 leases, under a cap of many: every message
must be delivered or parked exactly once, with no `lease-expired` failure and the
leases extended. Then the two places where the guarantee ends on purpose: a
process killed between its parked copies and their delete leaves one copy each,
and a target hanging past `drain.max_lease_s` is abandoned there, its message
retried under the same key and attempt.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from retryd.sandbox.emulator import MotoServer
from tests.faults import Fault
from tests.reliability.conftest import record_figures
from tests.reliability.front import Front
from tests.reliability.mixed import (
    ENVELOPE_TYPE,
    LAMBDA,
    PARKING,
    POISON_FORGED,
    SQS,
    MixedWorld,
    Planned,
    Tally,
    base_tables,
    uid,
    write_config,
)
from tests.reliability.replicas import fleet, retryd_env, wait_until
from tests.world import World, envelope

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]

LEASE_S = 5
SLOW_S = 12.5
CAP_S = 60
MESSAGES = 10


@dataclass
class SlowRun:
    """What became of one slowed world: the tally and what retryd's logs said."""

    tally: Tally
    events: list[dict[str, Any]]

    def reasons(self) -> Counter[str]:
        """Decisions by reason, over every process's log."""
        return Counter(
            str(event["reason"])
            for event in self.events
            if event.get("event") in ("resubmitted", "parked", "failed", "deferred")
            and event.get("reason")
        )

    def count(self, name: str) -> int:
        return sum(1 for event in self.events if event.get("event") == name)


def _tables(tmp: Path, **overrides: dict[str, Any]) -> dict[str, Any]:
    drain = {"visibility_timeout_s": LEASE_S, "max_lease_s": CAP_S, "workers_per_queue": 2}
    return base_tables(
        tmp,
        # Answers slower than a lease must still be waited for: the read timeout is above them.
        aws={"max_attempts": 1, "connect_timeout_s": 2, "read_timeout_s": 60},
        drain={**drain, **overrides.pop("drain", {})},
        **overrides,
    )


def _put(mixed: MixedWorld, kind: str, count: int, start: int = 0) -> list[Planned]:
    """`count` messages of `kind` (a target kind, or forged ones that are parked) in one DLQ."""
    rng = random.Random(start)
    dlq = mixed.dlqs[0]
    items = []
    for number in range(start, start + count):
        planned = Planned(uid(number), kind, dlq)
        if kind == POISON_FORGED:
            body = mixed.body(POISON_FORGED, number, rng)
        else:
            data = {"uid": planned.uid}
            body = json.dumps(envelope(ENVELOPE_TYPE[kind], mixed.target_arn(kind), data))
        items.append((planned, body, None))
    mixed.send_bodies(dlq, items)
    return [planned for planned, _, _ in items]


@pytest.fixture
def slow_world(fresh_world: World, front: Front) -> MixedWorld:
    """The reliability world with two DLQs, for one slowed test."""
    return MixedWorld.build(fresh_world, front, dlq_count=2)


def _drain(mixed: MixedWorld, rel_server: MotoServer, tmp: Path, tables: dict[str, Any]) -> SlowRun:
    config = write_config(tmp / "retryd.toml", tables)
    with fleet(config, retryd_env(rel_server.url), tmp / "logs") as processes:
        replica = processes.start()
        wait_until(lambda: mixed.dlq_depth() == 0, 200, "the DLQ to empty")
        assert replica.stop() == 0
        return SlowRun(mixed.tally(), processes.events())


def _exactly_once(run: SlowRun, parked: bool = False) -> None:
    tally = run.tally
    assert tally.lost == []
    if parked:
        assert {u: len(r) for u, r in tally.parked.items()} == dict.fromkeys(tally.planned, 1)
    else:
        assert {u: len(c) for u, c in tally.copies.items()} == dict.fromkeys(tally.planned, 1)
    assert run.reasons()["lease-expired"] == 0
    assert run.count("lease-extended") > 0


def _figures(name: str, run: SlowRun) -> None:
    copies = len(run.tally.copies) or len(run.tally.parked)
    record_figures(
        f"slow {name}: {MESSAGES} messages, each step {SLOW_S}s against a {LEASE_S}s lease "
        f"(cap {CAP_S}s): {copies} safe, {run.tally.duplicates} duplicates, "
        f"{sum(len(r) - 1 for r in run.tally.parked.values())} extra parked copies, "
        f"{run.reasons()['lease-expired']} lease-expired, {run.count('lease-extended')} "
        f"extensions, {run.count('heartbeat-failed')} heartbeat failures"
    )


def test_a_target_answering_in_two_and_a_half_leases_gets_each_message_once(
    slow_world: MixedWorld, rel_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every invoke takes 2.5 leases: each message reaches the function once, none expires."""
    tmp = tmp_path_factory.mktemp("slow-target")
    _put(slow_world, LAMBDA, MESSAGES)
    slow_world.world.faults.add(Fault("lambda", "Invoke", None, delay_s=SLOW_S))
    run = _drain(slow_world, rel_server, tmp, _tables(tmp))
    _figures("target", run)
    _exactly_once(run)


def test_a_slow_parking_write_parks_each_message_once(
    slow_world: MixedWorld, rel_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every parked copy takes 2.5 leases to write: one copy each, none expires."""
    tmp = tmp_path_factory.mktemp("slow-parking")
    _put(slow_world, POISON_FORGED, MESSAGES)
    slow_world.world.faults.add(
        Fault("sqs", "SendMessageBatch", None, contains=PARKING, delay_s=SLOW_S)
    )
    run = _drain(slow_world, rel_server, tmp, _tables(tmp))
    _figures("parking", run)
    _exactly_once(run, parked=True)


def test_slow_ledger_writes_send_each_message_once(
    slow_world: MixedWorld, rel_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every DynamoDB ledger write (begin, commit, renew) takes 2.5 leases: once each."""
    tmp = tmp_path_factory.mktemp("slow-ledger")
    slow_world.create_ledger_table()
    _put(slow_world, SQS, MESSAGES)
    slow_world.world.faults.add(Fault("dynamodb", "TransactWriteItems", None, delay_s=SLOW_S))
    tables = _tables(tmp, ledger={"backend": "dynamodb", "table": "retryd-ledger"})
    run = _drain(slow_world, rel_server, tmp, tables)
    _figures("ledger", run)
    _exactly_once(run)


def test_a_slow_delete_keeps_its_messages_leased_until_it_lands(
    slow_world: MixedWorld, rel_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The DLQ delete takes 2.5 leases: nothing reappears to a second worker, once each."""
    tmp = tmp_path_factory.mktemp("slow-delete")
    _put(slow_world, SQS, MESSAGES)
    slow_world.world.faults.add(
        Fault("sqs", "DeleteMessageBatch", None, contains=slow_world.dlqs[0], delay_s=SLOW_S)
    )
    run = _drain(slow_world, rel_server, tmp, _tables(tmp))
    _figures("delete", run)
    _exactly_once(run)
    # Kept leased while the delete was slow: no second worker received them meanwhile.
    assert run.reasons()["already-resubmitted"] == 0


def test_a_kill_between_parking_and_the_delete_leaves_one_parked_copy(
    slow_world: MixedWorld, rel_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """SIGKILL while the delete after parking is held: the restart only deletes them."""
    tmp = tmp_path_factory.mktemp("park-kill")
    planned = _put(slow_world, POISON_FORGED, MESSAGES)
    held = slow_world.world.faults.add(
        Fault("sqs", "DeleteMessageBatch", None, contains=slow_world.dlqs[0], delay_s=120)
    )
    config = write_config(tmp / "retryd.toml", _tables(tmp))
    with fleet(config, retryd_env(rel_server.url), tmp / "logs") as processes:
        first = processes.start()
        wait_until(lambda: held.hits > 0, 120, "the delete after parking to be held")
        wait_until(lambda: len(slow_world.tally().parked) == len(planned), 60, "every parked copy")
        first.kill()
        # The held delete is abandoned with its process (it fails, reaching nothing).
        slow_world.world.faults.clear()
        second = processes.start()
        wait_until(lambda: slow_world.dlq_depth() == 0, 200, "the DLQ to empty")
        assert second.stop() == 0
        run = SlowRun(slow_world.tally(), processes.events())
    extra = sum(len(reasons) - 1 for reasons in run.tally.parked.values())
    record_figures(
        f"park kill: {len(planned)} messages parked, SIGKILL before their delete; "
        f"{extra} extra parked copies, {run.reasons()['already-parked']} only deleted after"
    )
    assert run.tally.lost == []
    assert {u: len(r) for u, r in run.tally.parked.items()} == {p.uid: 1 for p in planned}
    assert run.reasons()["already-parked"] == len(planned)


def test_a_target_hanging_past_the_cap_is_abandoned_and_retried_as_the_same_attempt(
    slow_world: MixedWorld, rel_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """An invoke hanging past drain.max_lease_s: lease-expired, still in its DLQ, then retried
    under the same key and attempt; nothing lost."""
    tmp = tmp_path_factory.mktemp("cap")
    [planned] = _put(slow_world, LAMBDA, 1)
    slow_world.world.faults.add(
        Fault("lambda", "Invoke", None, contains=planned.uid, times=1, delay_s=30)
    )
    tables = _tables(tmp, drain={"max_lease_s": 12})
    run = _drain(slow_world, rel_server, tmp, tables)
    wait_until(
        lambda: len(slow_world.tally().copies.get(planned.uid, [])) >= 2, 60, "the hung call"
    )
    tally = slow_world.tally()
    copies = tally.copies[planned.uid]
    record_figures(
        f"cap: one invoke hung 30s past a 12s cap; {run.reasons()['lease-expired']} "
        f"lease-expired, {run.count('lease-cap-reached')} cap reached, {len(copies)} copies, "
        f"stamps {sorted({(c.key, c.attempt) for c in copies}, key=str)}"
    )
    assert tally.lost == []
    assert run.reasons()["lease-expired"] >= 1
    assert run.count("lease-cap-reached") >= 1
    assert tally.same_stamps(copies)
