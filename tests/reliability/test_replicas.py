"""replicas: three `retryd run` processes share a DynamoDB ledger (moto) and the same DLQs.

First with nothing in the way: every message exactly once. Then contended: short
leases, slow ledger writes and pairs of messages sharing an idempotency key. Then
0 lost, no copy is sent while another replica holds a live claim on its key
(checked against the ledger writes as moto carried them out, in order), and every
duplicate carries the first copy's key and attempt after a lease ran out.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from retryd.sandbox.emulator import MotoServer
from tests.reliability.conftest import record_figures, size
from tests.reliability.front import SLOW, Chaos, Claimed, Front
from tests.reliability.mixed import (
    ENVELOPE_TYPE,
    LAMBDA,
    SNS,
    SQS,
    MixedWorld,
    Planned,
    Tally,
    base_tables,
    uid,
    write_config,
)
from tests.reliability.replicas import Fleet, fleet, retryd_env, wait_until
from tests.world import World, envelope

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(900)]

REPLICAS = 3
CALM_MESSAGES = size(90, 600)
CONTENDED_PAIRS = size(30, 300)
SEED = 600


@dataclass
class ReplicaRun:
    calm: Tally
    contended: Tally
    under_live_claim: list[str]
    unclaimed: list[str]
    sends_checked: int
    failed_uids: set[str]
    exit_codes: list[int]


def owner_pid(owner: str) -> str:
    """The pid in a ledger owner id (`host-pid-suffix`, retryd.ledger.base.default_owner)."""
    return owner.rsplit("-", 2)[-2]


def claim_breaches(front: Front, processes: Fleet) -> tuple[list[str], list[str], int]:
    """Sends made while another replica held a live claim on the key, sends with no claim,
    and how many sends were checked."""
    pid_of = {replica.signer: str(replica.pid) for replica in processes.replicas}
    latest: dict[str, Claimed] = {}
    under_live_claim: list[str] = []
    unclaimed: list[str] = []
    checked = 0
    for event in list(front.timeline):
        if isinstance(event, Claimed):
            latest[event.key] = event
            continue
        if event.signer not in pid_of:
            continue
        checked += 1
        claim = latest.get(event.key)
        if claim is None:
            unclaimed.append(f"{event.key} by {event.signer} at {event.at_s:.3f}")
        elif (
            claim.state == "begun"
            and claim.expires_at_s > event.at_s
            and owner_pid(claim.owner) != pid_of[event.signer]
        ):
            under_live_claim.append(
                f"{event.key} by {event.signer} at {event.at_s:.3f}, claimed by {claim.owner}"
            )
    return under_live_claim, unclaimed, checked


def drain_with(processes: Fleet, mixed: MixedWorld, config: Path) -> list[int]:
    for _ in range(REPLICAS):
        processes.start(config)
    replicas = processes.replicas[-REPLICAS:]
    wait_until(lambda: mixed.dlq_depth() == 0, 600, "the replicas to empty the DLQs")
    return [replica.stop() for replica in replicas]


def fill_pairs(mixed: MixedWorld, start: int, pairs: int) -> list[Planned]:
    """Pairs of messages sharing an idempotency key, each half in another DLQ."""
    rng = random.Random(SEED)
    planned: list[Planned] = []
    kinds = [SQS, LAMBDA, SNS]
    for pair in range(pairs):
        kind = kinds[pair % len(kinds)]
        key = f"pair-{start}-{pair}"
        for half in range(2):
            number = start + 2 * pair + half
            dlq = mixed.dlqs[(2 * pair + half * 5) % len(mixed.dlqs)]
            item = Planned(uid(number), kind, dlq)
            data = {"uid": item.uid, "blob": "p" * rng.randrange(0, 200)}
            body = json.dumps(
                envelope(ENVELOPE_TYPE[kind], mixed.target_arn(kind), data, idempotencyKey=key)
            )
            mixed.send_bodies(dlq, [(item, body, None)])
            planned.append(item)
    return planned


@pytest.fixture(scope="module")
def replicated(
    rel_world: World, front: Front, rel_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> ReplicaRun:
    tmp = tmp_path_factory.mktemp("replicas")
    mixed = MixedWorld.build(rel_world, front)
    mixed.create_ledger_table()
    ledger = {"backend": "dynamodb", "table": "retryd-ledger"}
    calm_config = write_config(
        tmp / "calm.toml",
        base_tables(
            tmp,
            drain={"visibility_timeout_s": 30, "workers_per_queue": 2},
            ledger={**ledger, "claim_s": 60},
        ),
    )
    contended_config = write_config(
        tmp / "contended.toml",
        base_tables(
            tmp,
            drain={"visibility_timeout_s": 5, "workers_per_queue": 2},
            ledger={**ledger, "claim_s": 8},
        ),
    )
    with fleet(calm_config, retryd_env(rel_server.url), tmp / "logs") as processes:
        calm_uids = {p.uid for p in mixed.fill(CALM_MESSAGES, seed=SEED)}
        codes = drain_with(processes, mixed, calm_config)
        calm = mixed.tally().only(calm_uids)
        contended_uids = {p.uid for p in fill_pairs(mixed, CALM_MESSAGES, CONTENDED_PAIRS)}
        # Slow ledger writes: some take 2 s, so batches outlive their 5 s leases.
        front.reset(
            Chaos(rate=0.3, seed=SEED, kinds=(SLOW,), slow_s=2.0, services=frozenset({"dynamodb"}))
        )
        codes += drain_with(processes, mixed, contended_config)
        front.calm()
        contended = mixed.tally().only(contended_uids)
        under_live_claim, unclaimed, checked = claim_breaches(front, processes)
        failures = [
            event
            for event in processes.events()
            if event.get("event") == "failed" and event.get("message_id") in mixed.uid_of
        ]
        failed = {mixed.uid_of[str(event["message_id"])] for event in failures}
        reasons = Counter(str(event.get("reason")) for event in failures)
    run = ReplicaRun(calm, contended, under_live_claim, unclaimed, checked, failed, codes)
    same = sum(len(c) - 1 for c in contended.duplicated.values() if contended.same_stamps(c))
    record_figures(
        f"replicas: {REPLICAS} processes on a DynamoDB ledger; calm: {len(calm.planned)} messages, "
        f"{len(calm.lost)} lost, {calm.duplicates} duplicates; contended: "
        f"{len(contended.planned)} messages ({CONTENDED_PAIRS} key-sharing pairs), "
        f"{len(contended.lost)} lost, {len(under_live_claim)} sent under another replica's live "
        f"claim, {len(unclaimed)} sent unclaimed, {contended.duplicates} duplicates "
        f"({same} same key and attempt); failed and retried: {dict(reasons)}"
    )
    return run


def test_calm_phase_delivers_exactly_once(replicated: ReplicaRun) -> None:
    """With no contention, three replicas deliver every message exactly once."""
    calm = replicated.calm
    assert calm.lost == []
    assert calm.duplicates == 0, calm.duplicated
    assert calm.wrongly_parked() == {}


def test_contended_phase_loses_nothing(replicated: ReplicaRun) -> None:
    """Short leases and slow ledger writes lose no message."""
    contended = replicated.contended
    assert contended.lost == []
    assert sum(contended.in_dlq.values()) == 0
    assert contended.parked == {}


def test_no_copy_is_sent_under_another_replicas_live_claim(replicated: ReplicaRun) -> None:
    """Every stamped send happened under the sender's own claim or an expired one."""
    # SQS, SNS and Lambda copies carry their key; Step Functions and EventBridge do not.
    assert replicated.sends_checked >= len(replicated.contended.planned)
    assert replicated.under_live_claim == []
    assert replicated.unclaimed == []


def test_every_duplicate_follows_a_lost_lease(replicated: ReplicaRun) -> None:
    """A message reaches its target twice only after a replica lost its lease on it."""
    contended = replicated.contended
    unexplained = sorted(u for u in contended.duplicated if u not in replicated.failed_uids)
    assert unexplained == []


def test_every_duplicate_keeps_its_key_and_attempt(replicated: ReplicaRun) -> None:
    """A second copy carries the first one's key and attempt: it was resumed, not restarted.

    Issue 12 defect 3 breaks this when a key-sharing sibling commits in between; it
    shows at full size (RETRYD_RELIABILITY=full) and is set up on purpose in
    test_lease_races.py.
    """
    contended = replicated.contended
    restarted = {u: c for u, c in contended.duplicated.items() if not contended.same_stamps(c)}
    assert restarted == {}


def test_replicas_stop_cleanly(replicated: ReplicaRun) -> None:
    """Every replica exits 0 on SIGTERM."""
    assert replicated.exit_codes == [0] * (2 * REPLICAS)


def test_figures_count_every_message(replicated: ReplicaRun) -> None:
    """Both phases were really run at the sizes the figures name."""
    assert len(replicated.calm.planned) == CALM_MESSAGES
    assert len(replicated.contended.planned) == 2 * CONTENDED_PAIRS
    assert Counter(p.kind for p in replicated.contended.planned.values())
