"""bad input: thousands of hostile messages from a seeded generator, drained by one `retryd run`.

Every one must end parked with a reason or resubmitted to an allowlisted target;
the process must never die, log a traceback or grow without bound.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import pytest

from retryd.sandbox.emulator import MotoServer
from tests.reliability.badinput import Generator, allowed_arns, well_formed
from tests.reliability.conftest import record_figures, size
from tests.reliability.front import Front
from tests.reliability.mixed import (
    FUNCTION,
    ROUTED_DLQ,
    MixedWorld,
    Planned,
    Tally,
    base_tables,
    uid,
    write_config,
)
from tests.reliability.replicas import fleet, retryd_env
from tests.world import ACCOUNT, REGION, World

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(900)]

MESSAGES = size(600, 3000)
SEED = 3000
ALLOWED = f"arn:aws:*:{REGION}:{ACCOUNT}:*"
RSS_LIMIT_BYTES = 256 * 1024 * 1024
DRAIN_TIMEOUT_S = 600


@dataclass
class FuzzRun:
    tally: Tally
    families: Counter[str]
    rss_samples: list[int]
    world_targets: frozenset[str]
    alive_to_the_end: bool
    exit_code: int
    tracebacks: list[str]
    resubmitted_to: Counter[str] = field(default_factory=Counter)
    invoked: Counter[str] = field(default_factory=Counter)
    log_tail: str = ""
    touched: Counter[str] = field(default_factory=Counter)


@pytest.fixture(scope="module")
def fuzzed(
    rel_world: World, front: Front, rel_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> FuzzRun:
    tmp = tmp_path_factory.mktemp("bad-input")
    mixed = MixedWorld.build(rel_world, front)
    generator = Generator(SEED, mixed.machine_arn)
    by_dlq: dict[str, list[tuple[Planned, str, dict[str, dict[str, object]] | None]]] = {}
    families: Counter[str] = Counter()
    for number in range(MESSAGES):
        hostile = generator.draw(uid(number))
        dlq = ROUTED_DLQ if hostile.routed else mixed.dlqs[number % len(mixed.dlqs)]
        families[hostile.family] += 1
        planned = Planned(uid(number), hostile.family, dlq)
        by_dlq.setdefault(dlq, []).append((planned, hostile.body, hostile.attributes or None))
    for dlq, items in by_dlq.items():
        mixed.send_bodies(dlq, items)
    tables = base_tables(tmp, drain={"visibility_timeout_s": 10, "workers_per_queue": 2})
    config = write_config(tmp / "retryd.toml", tables)
    rss: list[int] = []
    with fleet(config, retryd_env(rel_server.url), tmp / "logs") as processes:
        replica = processes.start()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        alive = True
        while mixed.dlq_depth() and time.monotonic() < deadline:
            alive = alive and replica.alive()
            if not alive:
                break
            rss.append(replica.rss_bytes())
            time.sleep(0.5)
        alive = alive and replica.alive()
        exit_code = replica.stop() if alive else replica.process.returncode
        events = processes.events()
        tally = mixed.tally()
        world_targets = frozenset(allowed_arns(mixed.machine_arn))
        for event in events:
            target = str(event.get("target"))
            if event.get("event") == "resubmitted" and target not in world_targets:
                tally.elsewhere[mixed.uid_of[str(event["message_id"])]] = target
        run = FuzzRun(
            tally,
            families,
            rss,
            world_targets,
            alive,
            exit_code,
            processes.tracebacks(),
            Counter(
                str(event.get("target")) for event in events if event.get("event") == "resubmitted"
            ),
            Counter(invocation.function for invocation in front.invocations),
            replica.text()[-3000:],
            Counter(front.touched),
        )
    reasons = Counter(reason for reasons in tally.parked.values() for reason in reasons)
    record_figures(
        f"bad input: {len(tally.planned)} messages in {len(families)} families, "
        f"{len(tally.lost)} lost, {len(tally.copies)} resubmitted to the world's targets, "
        f"{len(tally.elsewhere)} to other allowlisted ARNs, {len(tally.parked)} parked "
        f"({', '.join(f'{r} {n}' for r, n in reasons.most_common())}), "
        f"{sum(1 for t in run.resubmitted_to if not fnmatchcase(t, ALLOWED))} forged targets "
        f"called, peak RSS {max(rss, default=0) / 2**20:.0f} MiB, "
        f"process {'alive' if alive else 'DIED'}"
    )
    return run


def test_process_never_dies(fuzzed: FuzzRun) -> None:
    """The process survives every message and stops cleanly on SIGTERM."""
    assert fuzzed.alive_to_the_end, fuzzed.log_tail
    assert fuzzed.exit_code == 0, fuzzed.log_tail


def test_every_message_is_parked_with_a_reason_or_resubmitted(fuzzed: FuzzRun) -> None:
    """No message is lost or left behind; each parked one says why."""
    tally = fuzzed.tally
    lost = Counter(tally.planned[u].kind for u in tally.lost)
    assert tally.lost == [], lost
    assert sum(tally.in_dlq.values()) == 0
    assert tally.strangers == []
    assert all("?" not in reasons for reasons in tally.parked.values())


def test_only_allowlisted_targets_are_called(fuzzed: FuzzRun) -> None:
    """Every resubmission went to an ARN the allowlist matches."""
    assert fuzzed.resubmitted_to, "nothing was resubmitted: the generator made only poison"
    forged = [t for t in fuzzed.resubmitted_to if not fnmatchcase(t, ALLOWED)]
    assert forged == []


def test_malformed_arns_are_never_sent_to(fuzzed: FuzzRun) -> None:
    """A target ARN that no AWS resource could have is parked, never called."""
    malformed = [t for t in fuzzed.resubmitted_to if not well_formed(t)]
    assert malformed == []
    assert set(fuzzed.invoked) <= {FUNCTION}


def test_no_stream_or_execution_outside_the_allowlist_is_read(fuzzed: FuzzRun) -> None:
    """Forged stream pointers and execution ARNs (events and envelopes): only allowlisted ones
    are read or redriven."""
    assert fuzzed.families["execution-change"]
    assert fuzzed.families["execution-envelope"]
    assert fuzzed.families["stream-pointer"]
    assert fuzzed.touched, "no stream or execution was ever looked at: the check is vacuous"
    outside = [arn for arn in fuzzed.touched if not fnmatchcase(arn, ALLOWED)]
    assert outside == []


def test_memory_stays_bounded(fuzzed: FuzzRun) -> None:
    """Peak RSS stays under the limit through the whole run."""
    assert fuzzed.rss_samples
    assert max(fuzzed.rss_samples) < RSS_LIMIT_BYTES


def test_no_traceback_reaches_the_logs(fuzzed: FuzzRun) -> None:
    """Hostile input is handled, never crashes a batch."""
    assert fuzzed.tracebacks == []
