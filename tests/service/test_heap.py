"""service.heap: the collector is set by retryd's own processes, once the engine is built, and
by nothing that embeds the engine."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

from retryd.service.heap import YOUNG_THRESHOLD
from tests.operator_helpers import PARKING, config_file
from tests.world import ACCOUNT, REGION, World, envelope

# What the child prints after its run: the youngest threshold and how many objects are frozen.
_REPORT = "import gc; print(gc.get_threshold()[0], gc.get_freeze_count())"


def _python(code: str) -> tuple[int, int]:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    young, frozen = done.stdout.split()[-2:]
    return int(young), int(frozen)


def _world(world: World, tmp_path: Path) -> str:
    """One DLQ holding one message for `dest`; the config file's path."""
    world.create_queue(PARKING)
    world.create_queue("dest")
    world.create_queue("retry-a")
    world.send("retry-a", envelope("sqs", f"arn:aws:sqs:{REGION}:{ACCOUNT}:dest", {"n": 1}))
    return config_file(tmp_path)


def test_settle_freezes_what_exists_and_collects_the_young_less_often() -> None:
    young, frozen = _python(
        "import gc; from retryd.service import heap; before = gc.get_threshold();"
        "heap.settle(); after = gc.get_threshold();"
        "assert after[1:] == before[1:], (before, after);"
        # Garbage made after the freeze is still the collector's.
        "a = []; a.append(a); del a; assert gc.collect() >= 1;"
        f"{_REPORT}"
    )
    assert young == YOUNG_THRESHOLD
    assert frozen > 1_000


# In a child: cycles that live through two young passes (so reach the oldest generation)
# and then die, with the heap settled; True when a full pass collected them in time.
_OLD_GARBAGE = """
import gc, weakref, anyio
from retryd.service import heap
heap.FULL_PASS_EVERY_S = 0.2

class Node:
    pass

async def main() -> None:
    with heap.settled():
        nodes = [Node() for _ in range(100)]
        for node in nodes:
            node.me = node
        alive = [weakref.ref(node) for node in nodes]
        gc.collect(1)
        gc.collect(1)
        del nodes, node
        await anyio.sleep(1.0)
        print(sum(ref() is not None for ref in alive), gc.get_threshold()[0])

anyio.run(main)
"""


def test_settled_collects_garbage_that_reached_the_oldest_generation() -> None:
    """Left to CPython once settled, such garbage waited for a full pass that rarely came
    (a 100,000-message drain grew by 9 MB); settled, a full pass comes within its period."""
    done = subprocess.run(
        [sys.executable, "-c", _OLD_GARBAGE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    still_alive, young = (int(word) for word in done.stdout.split())
    assert young == YOUNG_THRESHOLD, "the child did not settle the heap"
    assert still_alive == 0


def test_the_once_command_settles_the_heap_after_building_the_engine(
    world: World, tmp_path: Path
) -> None:
    config = _world(world, tmp_path)
    young, frozen = _python(
        "from retryd.commands.cli import main;"
        f"assert main(['once', '--config', {config!r}]) == 0;"
        f"{_REPORT}"
    )
    assert young == YOUNG_THRESHOLD
    # The engine's modules, its settings and its SQS client's service model among them.
    assert frozen > 20_000
    assert len(world.drain("dest")) == 1, "the cycle ran: its message reached the target"


def test_the_engine_run_for_a_caller_leaves_its_collector_alone(
    world: World, tmp_path: Path
) -> None:
    config = _world(world, tmp_path)
    young, frozen = _python(
        "import anyio, gc; from pathlib import Path; from retryd.settings import load_settings;"
        "from retryd.service.lifecycle import run_once; before = gc.get_threshold();"
        f"anyio.run(run_once, load_settings(Path({config!r})));"
        "assert gc.get_threshold() == before, (before, gc.get_threshold());"
        f"{_REPORT}"
    )
    assert young != YOUNG_THRESHOLD
    assert frozen == 0
    assert len(world.drain("dest")) == 1, "the cycle ran: its message reached the target"


def test_the_command_run_in_process_settles_that_process_s_heap(
    world: World, tmp_path: Path
) -> None:
    """The CLI owns its process, whoever calls it; the suite's keep_collector_settings
    fixture puts the test worker's collector back once this test ends."""
    from retryd.commands.cli import main  # noqa: PLC0415 - the command, in this process

    assert main(["once", "--config", _world(world, tmp_path)]) == 0
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    assert gc.get_freeze_count() > 0
