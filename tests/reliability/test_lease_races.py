"""Two races around a lease running out, each set up on purpose rather than left to chance.

* A slow sibling: ten messages to one function in one batch, one invoke held past
  the lease. The nine answered at once must each reach the function exactly once.
* An abandoned sibling: two messages share a key; the first one's send is held past
  its lease (not extended: the cap is the lease) and claim, the second takes the key
  and commits, then the first comes back. Every copy of it must carry the same
  attempt (resumed, not started anew), or a target deduplicating on (key, attempt)
  sees it twice.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from retryd.sandbox.emulator import MotoServer
from tests.faults import Fault
from tests.reliability.conftest import record_figures
from tests.reliability.front import Front
from tests.reliability.mixed import (
    DEST,
    LAMBDA,
    SQS,
    MixedWorld,
    Planned,
    base_tables,
    uid,
    write_config,
)
from tests.reliability.replicas import fleet, retryd_env, wait_until
from tests.world import World, envelope

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]

LEASE_S = 5
HELD_S = 7.0


def test_a_slow_invoke_does_not_resend_its_accepted_siblings(
    fresh_world: World,
    front: Front,
    rel_server: MotoServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Nine invokes answered at once are sent once, though the tenth outlives the lease."""
    tmp = tmp_path_factory.mktemp("slow-sibling")
    mixed = MixedWorld.build(fresh_world, front)
    dlq = mixed.dlqs[0]
    items = [
        (
            Planned(uid(n), LAMBDA, dlq),
            json.dumps(envelope("lambda", mixed.target_arn(LAMBDA), {"uid": uid(n)})),
            None,
        )
        for n in range(10)
    ]
    mixed.send_bodies(dlq, items)
    fresh_world.faults.add(
        Fault("lambda", "Invoke", None, contains=uid(9), times=1, delay_s=HELD_S)
    )
    tables = base_tables(tmp, drain={"visibility_timeout_s": LEASE_S, "workers_per_queue": 1})
    config = write_config(tmp / "retryd.toml", tables)
    with fleet(config, retryd_env(rel_server.url), tmp / "logs") as processes:
        replica = processes.start()
        wait_until(lambda: mixed.dlq_depth() == 0, 120, "the DLQ to empty")
        replica.stop()
    invoked = Counter(u for copy in mixed.tally().copies.values() for u in {c.uid for c in copy})
    copies = {u: len(c) for u, c in mixed.tally().copies.items()}
    record_figures(
        f"slow sibling: 10 invokes in one batch, one held {HELD_S:.0f}s past a {LEASE_S}s lease; "
        f"copies of the nine fast ones: {sorted(copies.get(uid(n), 0) for n in range(9))}"
    )
    assert set(invoked) == {uid(n) for n in range(10)}
    assert all(copies[uid(n)] == 1 for n in range(9)), copies


def test_an_abandoned_resubmission_comes_back_under_its_own_attempt(
    fresh_world: World,
    front: Front,
    rel_server: MotoServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Both copies of the abandoned message carry the same key and attempt."""
    tmp = tmp_path_factory.mktemp("abandoned-sibling")
    mixed = MixedWorld.build(fresh_world, front)
    first, second = uid(0), uid(1)

    def put(number: int) -> None:
        dlq = mixed.dlqs[number]
        body = envelope(
            "sqs", mixed.target_arn(SQS), {"uid": uid(number)}, idempotencyKey="shared-key"
        )
        mixed.send_bodies(dlq, [(Planned(uid(number), SQS, dlq), json.dumps(body), None)])

    put(0)
    # The first message's send lands, but only after its lease and its claim have run out.
    held = [
        fresh_world.faults.add(Fault("sqs", op, None, contains=first, times=1, delay_s=HELD_S))
        for op in ("SendMessageBatch", "SendMessage")
    ]
    tables = base_tables(
        tmp,
        # Not extended past its first lease (the cap is the lease), so the held send is
        # abandoned as at drain.max_lease_s; and its claim lapses 3 s after it was taken.
        drain={"visibility_timeout_s": LEASE_S, "max_lease_s": LEASE_S, "workers_per_queue": 1},
        ledger={"claim_renew_s": 3},
    )
    config = write_config(tmp / "retryd.toml", tables)
    with fleet(config, retryd_env(rel_server.url), tmp / "logs") as processes:
        replica = processes.start()
        # The sibling arrives while the first one's claim is live and its send held.
        wait_until(lambda: any(fault.hits for fault in held), 60, "the first send to be held")
        put(1)
        wait_until(lambda: mixed.dlq_depth() == 0, 120, "the DLQs to empty")
        wait_until(
            lambda: len(mixed.tally().copies.get(first, [])) >= 2, 30, "the held send to land"
        )
        replica.stop()
    tally = mixed.tally()
    attempts = sorted(str(c.attempt) for c in tally.copies[first])
    record_figures(
        f"abandoned sibling: the held message reached {DEST} {len(tally.copies[first])} times "
        f"with attempts {attempts}; its sibling {len(tally.copies.get(second, []))} time(s)"
    )
    assert tally.lost == []
    assert tally.same_stamps(tally.copies[first]), attempts
