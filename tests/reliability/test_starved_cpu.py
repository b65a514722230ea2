"""A starved CPU: retryd held to a fraction of one core, and still every message exactly once.

Every retryd process is pinned with `taskset -c 0` to the first core, beside a
CPU-burning sibling pinned to the same core (cgroup `cpu.max` is not writable in
every CI container; `taskset` is). The moto server stays unpinned. Two stages, as
the issue measured them: the steady replicas stage (three `retryd run` on a
DynamoDB ledger, no faults) and the fuzz stage (plain `retryd once` runs on the
SQLite ledger, short leases). Slow answers that a starved loop produces must be
carried by the heartbeat, not cut off and sent again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from retryd.sandbox.emulator import MotoServer
from tests.reliability.conftest import record_figures, size
from tests.reliability.front import Front
from tests.reliability.mixed import MixedWorld, Tally, base_tables, write_config
from tests.reliability.replicas import fleet, retryd_env, wait_until
from tests.world import World

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(1200)]

CORE = "0"
PINNED = ("taskset", "-c", CORE)
REPLICAS = 3
STEADY_MESSAGES = size(90, 600)
FUZZ_MESSAGES = size(200, 3200)
FUZZ_MAX_RUNS = 60


@contextmanager
def burning_sibling() -> Iterator[None]:
    """A busy loop pinned to the same core as retryd, for as long as the block runs."""
    burner = subprocess.Popen([*PINNED, sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        burner.kill()
        burner.wait(timeout=30)


def _extra_parked(tally: Tally) -> int:
    return sum(len(reasons) - 1 for reasons in tally.parked.values())


def _figures(stage: str, tally: Tally, extra: str) -> None:
    record_figures(
        f"starved {stage}: retryd on core {CORE} with a burning sibling; {tally.summary()}, "
        f"{_extra_parked(tally)} extra parked copies; {extra}"
    )


def test_steady_replicas_on_a_starved_core_deliver_exactly_once(
    fresh_world: World,
    front: Front,
    rel_server: MotoServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Three replicas sharing one busy core: every message once, nothing lost."""
    tmp = tmp_path_factory.mktemp("starved-replicas")
    mixed = MixedWorld.build(fresh_world, front)
    mixed.create_ledger_table()
    config = write_config(
        tmp / "retryd.toml",
        base_tables(
            tmp,
            drain={"visibility_timeout_s": 10, "workers_per_queue": 2},
            ledger={"backend": "dynamodb", "table": "retryd-ledger"},
        ),
    )
    planned = {p.uid for p in mixed.fill(STEADY_MESSAGES, seed=2100)}
    with (
        burning_sibling(),
        fleet(config, retryd_env(rel_server.url), tmp / "logs") as processes,
    ):
        replicas = [processes.start(prefix=PINNED) for _ in range(REPLICAS)]
        wait_until(lambda: mixed.dlq_depth() == 0, 900, "the replicas to empty the DLQs")
        codes = [replica.stop() for replica in replicas]
        events = processes.events()
    tally = mixed.tally().only(planned)
    extended = sum(1 for event in events if event.get("event") == "lease-extended")
    expired = sum(1 for event in events if event.get("reason") == "lease-expired")
    _figures(
        "replicas",
        tally,
        f"{extended} lease extensions, {expired} lease-expired, exit codes {codes}",
    )
    assert tally.lost == []
    assert tally.duplicates == 0, {u: c for u, c in tally.duplicated.items()}
    assert _extra_parked(tally) == 0
    assert codes == [0] * REPLICAS


def test_once_runs_on_a_starved_core_deliver_exactly_once(
    fresh_world: World,
    front: Front,
    rel_server: MotoServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Plain `retryd once` runs on one busy core with 5 s leases: every message once."""
    tmp = tmp_path_factory.mktemp("starved-once")
    mixed = MixedWorld.build(fresh_world, front)
    config = write_config(
        tmp / "retryd.toml",
        base_tables(tmp, drain={"visibility_timeout_s": 5, "workers_per_queue": 2}),
    )
    planned = {p.uid for p in mixed.fill(FUZZ_MESSAGES, seed=2200)}
    env = {**retryd_env(rel_server.url), "PYTHONUNBUFFERED": "1"}
    runs = 0
    logs = tmp / "logs"
    logs.mkdir()
    with burning_sibling():
        while mixed.dlq_depth() and runs < FUZZ_MAX_RUNS:
            with (logs / f"once-{runs:03d}.log").open("wb") as log:
                subprocess.run(
                    [*PINNED, sys.executable, "-m", "retryd", "once", "--config", str(config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    timeout=600,
                    check=False,
                )
            runs += 1
    text = "\n".join(path.read_text(errors="replace") for path in sorted(logs.iterdir()))
    tally = mixed.tally().only(planned)
    _figures(
        "once",
        tally,
        f"{runs} runs, {text.count('lease-extended')} lease extensions, "
        f"{text.count('lease-expired')} lease-expired",
    )
    assert tally.lost == []
    assert not tally.in_dlq
    assert tally.duplicates == 0, {u: c for u, c in tally.duplicated.items()}
    assert _extra_parked(tally) == 0


def _unpinned() -> bool:
    return len(os.sched_getaffinity(0)) < 2 or not Path("/usr/bin/taskset").exists()


if _unpinned():  # pragma: no cover - a one-core machine cannot starve one core of two
    pytestmark.append(pytest.mark.skip(reason="needs taskset and at least two cores"))
