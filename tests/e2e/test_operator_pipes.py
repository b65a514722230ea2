"""A closed pipe never cuts work short or fakes success: `retryd ... 2>&1 | head -1` for real."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from retryd.commands.cli import main
from tests.e2e.test_redrive import DLQ, cli_json, config
from tests.operator_helpers import PARKING, depth
from tests.world import World, envelope

pytestmark = pytest.mark.usefixtures("keep_logging_config")

MESSAGES = 30


def piped(*argv: str, keep_lines: int = 1) -> int:
    """Run retryd with stdout and stderr into `head -N`, which exits early; retryd's exit code."""
    command = shlex.join([sys.executable, "-m", "retryd", *argv, "--log-level", "debug"])
    script = f'{command} 2>&1 | head -{keep_lines} >/dev/null; exit "${{PIPESTATUS[0]}}"'
    done = subprocess.run(["bash", "-c", script], env=os.environ.copy(), timeout=180, check=False)
    return done.returncode


def thirty_for_dest(world: World) -> None:
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    world.create_queue("dest-a")
    for n in range(MESSAGES):
        world.send(DLQ, envelope("sqs", world.queue_arn("dest-a"), {"n": n}))


def test_once_into_a_closed_pipe_still_settles_every_message(world: World, tmp_path: Path) -> None:
    """`once 2>&1 | head -1`: exit 0 only because all 30 went; none left in flight."""
    thirty_for_dest(world)
    assert piped("once", "--config", config(tmp_path)) == 0
    assert depth(world, DLQ) == (0, 0)
    assert world.depth("dest-a") == MESSAGES


def test_redrive_into_a_closed_pipe_still_makes_and_audits_its_job(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`redrive --execute 2>&1 | head -2`: the job runs to its end and is saved and audited."""
    thirty_for_dest(world)
    cfg = config(tmp_path)
    argv = ["redrive", "--config", cfg, "--from", DLQ, "--execute", "--ramp", "none"]
    assert piped(*argv, keep_lines=2) == 0
    assert world.depth("dest-a") == MESSAGES
    _, [listed] = cli_json(capsys, "jobs", "--config", cfg)
    assert [(j["state"], j["messages"]) for j in listed["jobs"]] == [("done", MESSAGES)]
    _, [audit] = cli_json(capsys, "audit", "--config", cfg)
    assert [(r["action"], r["outcome"]) for r in audit["records"]] == [
        ("redrive-execute", "done"),
        ("redrive-execute", "started"),
    ]


def test_a_pause_into_a_closed_pipe_is_stored_and_audited(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pause ... | head -0`-like: the reader is gone before the first line; the pause holds."""
    cfg = config(tmp_path)
    assert piped("pause", "--all", "--reason", "deploy", "--config", cfg, keep_lines=0) == 0
    assert main(["pauses", "--config", cfg, "--output", "json"]) == 0
    assert [p["reason"] for p in json.loads(capsys.readouterr().out)["pauses"]] == ["deploy"]
    _, [audit] = cli_json(capsys, "audit", "--config", cfg)
    assert [r["action"] for r in audit["records"]] == ["pause"]
