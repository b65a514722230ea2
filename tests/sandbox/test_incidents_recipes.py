"""Every Incidents recipe, run as written against `retryd sandbox --serve`: the page cannot drift.

The page's console blocks are replayed in order, each `$ retryd ...` line as a
user types it (the settings come from the RETRYD_CONFIG the sandbox's export line
sets), and each output line is compared with the page's once the values that
differ from run to run (times, message and job ids, seconds) are masked.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.commands.test_exit_codes import clean_env

PAGE = Path(__file__).resolve().parents[2] / "docs" / "incidents.md"
JOB_ID = re.compile(r"rd-[0-9a-f]{10}")
# What differs between two runs of the same recipe, and what it is shown as.
VARYING = (
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<message-id>"),
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\dZ"), "<time>"),
    (JOB_ID, "<job>"),
    (re.compile(r"\[[0-9a-f]{8}\]"), "[<pause>]"),
    (re.compile(r"\(\d+s left\)"), "(<n>s left)"),
    (re.compile(r"\| \d+\.\d+s$"), "| <duration>"),
)


def recipes(page: str) -> list[tuple[str, list[str]]]:
    """Each `$ command` of the page's console blocks, with the output the page shows."""
    found: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", page, flags=re.DOTALL):
        for line in block.splitlines():
            if line.startswith("$ "):
                found.append((line[2:], []))
            elif found and line.strip():
                found[-1][1].append(line)
    return found


def shape(line: str) -> str:
    for pattern, shown in VARYING:
        line = pattern.sub(shown, line)
    return " ".join(line.split())


@pytest.fixture
def sandbox_env() -> Iterator[dict[str, str]]:
    """`retryd sandbox --serve` running; the environment its export line sets."""
    server = subprocess.Popen(
        [sys.executable, "-m", "retryd", "sandbox", "--serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=clean_env(),
    )
    try:
        assert server.stdout is not None
        exports: dict[str, str] = {}
        for line in server.stdout:
            if line.strip().startswith("export "):
                exports = dict(item.split("=", 1) for item in line.split()[1:])
            if line.startswith("Serving until Ctrl-C"):
                break
        assert "RETRYD_CONFIG" in exports, "the sandbox printed no export line"
        yield clean_env(**exports)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()


def test_the_page_has_recipes_to_replay() -> None:
    """The parser finds the page's commands (a change of format would skip them all)."""
    commands = [command for command, _ in recipes(PAGE.read_text())]
    assert len(commands) >= 10
    assert all(command.startswith("retryd ") for command in commands)


def test_every_incidents_recipe_runs_verbatim_against_the_sandbox(
    sandbox_env: dict[str, str],
) -> None:
    """Each command exits 0 and prints what the page shows, line for line, in shape."""
    jobs: dict[str, str] = {}
    for command, expected in recipes(PAGE.read_text()):
        # A job id the page shows stands for the one this run made in its place.
        typed = JOB_ID.sub(lambda found: jobs.get(found.group(0), found.group(0)), command)
        argv = shlex.split(typed)
        done = subprocess.run(
            [sys.executable, "-m", "retryd", *argv[1:]],
            capture_output=True,
            text=True,
            timeout=120,
            env=sandbox_env,
            cwd=os.path.dirname(sandbox_env["RETRYD_CONFIG"]),
            check=False,
        )
        assert done.returncode == 0, f"{command}: {done.stderr}"
        printed = done.stdout.rstrip("\n").splitlines()
        for page_line, real_line in zip(expected, printed, strict=False):
            for page_id, real_id in zip(
                JOB_ID.findall(page_line), JOB_ID.findall(real_line), strict=False
            ):
                jobs.setdefault(page_id, real_id)
        assert [shape(line) for line in printed] == [shape(line) for line in expected], command
