"""Fixtures of the reliability suites: their own moto server behind the front, sizes, figures.

Sizes: CI runs moderate ones; RETRYD_RELIABILITY=full runs the sizes issue 12 names.
Each suite records one closing figures line; they are printed in the terminal summary
and, with RETRYD_RELIABILITY_RESULTS=PATH, appended to that file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from retryd.sandbox.emulator import MotoServer
from tests.reliability.front import Front
from tests.stepfunctions_front import redrive_front
from tests.world import World

FULL = os.environ.get("RETRYD_RELIABILITY") == "full"
RESULTS_ENV = "RETRYD_RELIABILITY_RESULTS"
# Set by tests/conftest.py in the controlling process: the suites may run in xdist
# workers, whose memory the terminal summary cannot see, so figures go through a file.
FIGURES_ENV = "PYTEST_RETRYD_FIGURES"


def size(moderate: int, full: int) -> int:
    """The moderate size on CI, the full one with RETRYD_RELIABILITY=full."""
    return full if FULL else moderate


def record_figures(line: str) -> None:
    """Keep a suite's closing figures line for the terminal summary (and the results file)."""
    for path in (os.environ.get(FIGURES_ENV), os.environ.get(RESULTS_ENV)):
        if path:
            with Path(path).open("a") as results:
                results.write(line + "\n")


@pytest.fixture(scope="session")
def front() -> Front:
    return Front()


@pytest.fixture(scope="session")
def rel_server(front: Front) -> Iterator[MotoServer]:
    # RedriveExecution, which moto lacks, is answered as tests/ answer it everywhere.
    with MotoServer(middleware=lambda app: front.middleware(redrive_front(app))) as server:
        yield server


@pytest.fixture(scope="module")
def rel_world(rel_server: MotoServer, front: Front) -> Iterator[World]:
    """An empty world on the front's server, for one suite (module): moto's state is global."""
    rel_server.reset()
    front.reset()
    yield World(rel_server, front.faults)
    front.reset()


@pytest.fixture
def fresh_world(rel_server: MotoServer, front: Front) -> Iterator[World]:
    """An empty world for one test, on the same server as the suites' worlds."""
    rel_server.reset()
    front.reset()
    yield World(rel_server, front.faults)
    front.reset()
