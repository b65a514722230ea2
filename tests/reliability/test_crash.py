"""crash: `retryd run` killed with SIGKILL at seeded random moments and restarted, over and over.

The ledger is SQLite on disk, so a restarted process finds what the killed one
began. Lost must be 0; a message may reach its target twice only when a kill fell
between the send and the ledger commit, and then both copies carry the same key
and attempt (so a deduplicating target can tell).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass

import pytest

from retryd.sandbox.emulator import MotoServer
from tests.reliability.conftest import record_figures, size
from tests.reliability.front import Front
from tests.reliability.mixed import Copy, MixedWorld, Tally, base_tables, write_config
from tests.reliability.replicas import fleet, retryd_env, wait_until
from tests.world import World

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(900)]

MESSAGES = size(300, 1500)
KILLS = size(6, 20)
SEED = 12
LEASE_S = 20


@dataclass
class CrashRun:
    tally: Tally
    kills_s: list[float]
    exit_code: int
    lease_expired: int = 0


# A request already on the wire when its sender is killed is still carried out by the
# emulator: a first copy may be stamped this long after the kill that explains it. A Lambda
# copy is stamped when it reached the emulator; an SQS, SNS or EventBridge one when moto
# served it, which can be later, since moto serves one request at a time (a Lambda copy
# stamped when served once came 1.005 s after its kill, with three test workers).
IN_FLIGHT_GRACE_S = 2.0


def explained(copies: list[Copy], kills_s: list[float]) -> bool:
    """A kill fell after the first copy was sent and before the last one was."""
    first = min(copy.at_s for copy in copies)
    last = max(copy.at_s for copy in copies)
    return any(first - IN_FLIGHT_GRACE_S <= kill_s <= last for kill_s in kills_s)


@pytest.fixture(scope="module")
def crash(
    rel_world: World, front: Front, rel_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> CrashRun:
    tmp = tmp_path_factory.mktemp("crash")
    mixed = MixedWorld.build(rel_world, front)
    # A killed process's claims hold their keys for claim_s; short, so its successor
    # resumes them within the test instead of deferring them for the default 300 s.
    # Leases are long enough that, even on a loaded machine, only a kill leaves a batch
    # unsettled: a duplicate must then be the kill's doing.
    tables = base_tables(
        tmp,
        drain={"visibility_timeout_s": LEASE_S, "workers_per_queue": 2},
        ledger={"claim_s": 6},
    )
    config = write_config(tmp / "retryd.toml", tables)
    rng = random.Random(SEED)
    chunk = MESSAGES // (KILLS + 1)
    kills_s: list[float] = []
    with fleet(config, retryd_env(rel_server.url), tmp / "logs") as processes:
        for kill in range(KILLS):
            # A fresh chunk before every start: each process has work in flight when killed.
            mixed.fill(chunk, seed=SEED + kill, start=kill * chunk)
            replica = processes.start()
            wait_until(replica.started, 60, "retryd to start")
            time.sleep(rng.uniform(0.1, 2.5))
            assert replica.alive(), f"retryd died on its own:\n{replica.text()[-3000:]}"
            replica.kill()
            kills_s.append(time.time())
        mixed.fill(MESSAGES - KILLS * chunk, seed=SEED + KILLS, start=KILLS * chunk)
        final = processes.start()
        wait_until(lambda: mixed.dlq_depth() == 0, 240, "the DLQs to empty after the last start")
        exit_code = final.stop()
        lease_expired = sum(
            1
            for event in processes.events()
            if event.get("event") == "failed" and event.get("reason") == "lease-expired"
        )
    run = CrashRun(mixed.tally(), kills_s, exit_code, lease_expired)
    tally = run.tally
    same = sum(len(c) - 1 for c in tally.duplicated.values() if tally.same_stamps(c))
    known = sum(len(c) - 1 for c in tally.duplicated.values() if explained(c, kills_s))
    record_figures(
        f"crash: {len(tally.planned)} messages, {len(kills_s)} kills, {len(tally.lost)} lost, "
        f"{tally.duplicates} duplicates ({same} same-key, {known} explained); "
        f"{len(tally.copies)} delivered, {len(tally.parked)} parked, "
        f"{lease_expired} lease-expired failures"
    )
    return run


def test_nothing_is_lost(crash: CrashRun) -> None:
    """Every message is at a target, parked, or still in a DLQ; no copy of an unknown message."""
    assert crash.tally.lost == []
    assert crash.tally.strangers == []
    assert sum(crash.tally.in_dlq.values()) == 0, "the last process left messages behind"


def test_duplicates_share_key_and_attempt_and_follow_a_kill(crash: CrashRun) -> None:
    """A second copy carries the first one's key and attempt, and a kill fell between them."""
    unexplained = {
        uid: copies
        for uid, copies in crash.tally.duplicated.items()
        if not (crash.tally.same_stamps(copies) and explained(copies, crash.kills_s))
    }
    kills = [round(k, 3) for k in crash.kills_s]
    targets = Counter(copies[0].target for copies in unexplained.values())
    assert unexplained == {}, f"{targets}; {crash.lease_expired} lease-expired; kills at {kills}"


def test_only_poison_is_parked_and_poison_never_delivered(crash: CrashRun) -> None:
    """Poison and over-limit messages are parked for their own reason; nothing else is."""
    assert crash.tally.wrongly_parked() == {}
    assert crash.tally.wrongly_delivered() == []


def test_last_process_stops_cleanly(crash: CrashRun) -> None:
    """After all the kills, a SIGTERM still ends the process with exit code 0."""
    assert crash.exit_code == 0
