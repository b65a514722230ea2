"""soak: one `retryd run` for ten minutes under a steady trickle into its DLQs.

Not part of a normal run (it takes the time it says); start it with

    RETRYD_SOAK=1 .venv/bin/python -m pytest tests/reliability/test_soak.py -q -s

(RETRYD_SOAK_S=SECONDS changes the length). RSS, open file descriptors and cycle
duration are sampled all along; the last quarter of the run must look like the
first quarter after warm-up, and every message must be accounted for.
"""

from __future__ import annotations

import os
import re
import statistics
import time
from dataclasses import dataclass

import pytest

from retryd.sandbox.emulator import MotoServer
from tests.reliability.conftest import record_figures
from tests.reliability.front import Front
from tests.reliability.mixed import MixedWorld, base_tables, write_config
from tests.reliability.replicas import fleet, retryd_env, wait_until
from tests.world import World

SOAK_S = float(os.environ.get("RETRYD_SOAK_S", "600"))
pytestmark = [
    pytest.mark.reliability,
    pytest.mark.soak,
    pytest.mark.timeout(int(SOAK_S) + 300),
    pytest.mark.skipif(os.environ.get("RETRYD_SOAK") != "1", reason="set RETRYD_SOAK=1 to soak"),
]

TRICKLE_PER_S = 4
SAMPLE_EVERY_S = 5.0
_CYCLE_TIME = re.compile(r"\| (\d+(?:\.\d+)?)s")


@dataclass
class Sample:
    at_s: float
    rss_bytes: int
    fds: int


def quarter_medians(values: list[float]) -> tuple[float, float]:
    """Median of the first quarter after warm-up (the first tenth) and of the last quarter."""
    warm = values[len(values) // 10 :]
    quarter = max(1, len(warm) // 4)
    return statistics.median(warm[:quarter]), statistics.median(warm[-quarter:])


def test_soak_stays_flat(
    fresh_world: World,
    front: Front,
    rel_server: MotoServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A steady trickle for SOAK_S: RSS, fds and cycle time flat, every message accounted for."""
    tmp = tmp_path_factory.mktemp("soak")
    mixed = MixedWorld.build(fresh_world, front)
    tables = base_tables(tmp, schedule={"interval_s": 1.0}, drain={"visibility_timeout_s": 10})
    config = write_config(tmp / "retryd.toml", tables)
    samples: list[Sample] = []
    sent = 0
    with fleet(config, retryd_env(rel_server.url), tmp / "logs") as processes:
        replica = processes.start()
        wait_until(replica.started, 60, "retryd to start")
        began = time.monotonic()
        next_sample = began
        while time.monotonic() - began < SOAK_S:
            mixed.fill(TRICKLE_PER_S, seed=sent, start=sent)
            sent += TRICKLE_PER_S
            if time.monotonic() >= next_sample:
                assert replica.alive(), replica.text()[-3000:]
                samples.append(
                    Sample(time.monotonic() - began, replica.rss_bytes(), replica.open_fds())
                )
                next_sample += SAMPLE_EVERY_S
            time.sleep(1.0)
        wait_until(lambda: mixed.dlq_depth() == 0, 120, "the last of the trickle to drain")
        exit_code = replica.stop()
        cycles = [
            float(match.group(1))
            for event in replica.events()
            if event.get("event") == "cycle"
            and (match := _CYCLE_TIME.search(str(event.get("summary", ""))))
        ]
    tally = mixed.tally()
    rss_first, rss_last = quarter_medians([float(s.rss_bytes) for s in samples])
    fds_first, fds_last = quarter_medians([float(s.fds) for s in samples])
    cycle_first, cycle_last = quarter_medians(cycles)
    record_figures(
        f"soak: {SOAK_S:.0f}s, {sent} messages trickled, {len(tally.lost)} lost, "
        f"RSS {rss_first / 2**20:.0f} -> {rss_last / 2**20:.0f} MiB, fds {fds_first:.0f} -> "
        f"{fds_last:.0f}, cycle {cycle_first:.2f} -> {cycle_last:.2f}s over {len(cycles)} cycles"
    )
    assert exit_code == 0
    assert tally.lost == []
    assert rss_last <= rss_first * 1.15 + 8 * 2**20, "RSS grew"
    assert fds_last <= fds_first + 4, "file descriptors leak"
    assert cycle_last <= cycle_first * 2 + 0.25, "cycles slow down"
