"""`--resume` is explicit, and an interrupted job says where it left things."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from retryd.commands.cli import main
from retryd.errors import ExitCode
from tests.e2e.test_redrive import cli_json, config, park_rejected
from tests.operator_helpers import PARKING
from tests.world import World

pytestmark = pytest.mark.usefixtures("keep_logging_config")

SELECTION = ["--from", "parking", "--reason", "target-rejected", "--canary-wait-s", "0"]


def stopped_job(world: World, cfg: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Four parked copies whose target still refuses them: the first canary stops the job."""
    park_rejected(world, cfg, capsys)
    code, documents = cli_json(capsys, "redrive", "--config", cfg, *SELECTION, "--execute")
    assert code == ExitCode.CYCLE_FAILED
    job: dict[str, Any] = documents[1]["job"]
    assert job["state"] == "stopped"
    return str(job["id"])


def job_in_its_canary_wait(
    world: World, cfg: str, capsys: pytest.CaptureFixture[str]
) -> subprocess.Popen[str]:
    """A redrive job in another process that will wait 600 s after its first canary."""
    park_rejected(world, cfg, capsys)
    world.faults.clear()
    command = [sys.executable, "-m", "retryd", "redrive", "--config", cfg, *SELECTION[:4]]
    command += ["--execute", "--ramp", "1", "--canary-wait-s", "600"]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )


def first_step_done(
    process: subprocess.Popen[str], cfg: str, capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    """The job `process` runs, once `retryd jobs` shows its first step settled (60 s at most)."""
    deadline = time.monotonic() + 60
    started: list[dict[str, Any]] = []
    while not started:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the job never finished its first step"
        _, [listed] = cli_json(capsys, "jobs", "--config", cfg)
        started = [j for j in listed["jobs"] if j["messages"] == 1]
        time.sleep(0.2)
    [job] = started
    return job


def test_options_that_cannot_change_on_resume_are_refused_by_name(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--resume JOB --from x --where bogus`: exit 2 naming both, nothing sent."""
    cfg = config(tmp_path)
    job = stopped_job(world, cfg, capsys)
    world.faults.clear()
    argv = ["redrive", "--config", cfg, "--resume", job, "--from", "x", "--where", "bogus"]
    assert main(argv) == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert f"--resume {job}: --from, --where cannot change on resume" in err
    assert world.depth("dest-a") == 0
    assert world.depth(PARKING) == 5


def test_options_that_may_change_on_resume_are_applied_and_recorded(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--ramp none --max-refail 100 on resume: the job and its audit record hold them."""
    cfg = config(tmp_path)
    job = stopped_job(world, cfg, capsys)
    world.faults.clear()
    code, [resumed] = cli_json(
        capsys, "redrive", "--config", cfg, "--resume", job, "--ramp", "none", "--max-refail", "100"
    )
    assert code == 0, resumed
    spec = resumed["job"]["spec"]
    assert (spec["ramp"], spec["max_refail"], spec["canary_wait_s"]) == ([], 100, 0.0)
    _, [audit] = cli_json(capsys, "audit", "--config", cfg)
    latest = audit["records"][0]
    assert latest["action"] == "redrive-resume"
    assert latest["what"]["changed"] == {"ramp": [], "max_refail": 100}
    assert latest["what"]["max_refail"] == 100
    assert world.depth("dest-a") == 4


def test_a_resume_repeats_the_step_its_canaries_stopped_at_that_size(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stopped at step 1 (1 message), resumed with the fault still on: again 1 message, not 5."""
    cfg = config(tmp_path)
    job = stopped_job(world, cfg, capsys)
    code, [resumed] = cli_json(capsys, "redrive", "--config", cfg, "--resume", job)
    assert code == ExitCode.CYCLE_FAILED
    assert resumed["job"]["stop_reason"].startswith("step 1 (1 message(s)): 1 canary failure(s)")
    assert world.depth(PARKING) == 5


@pytest.mark.parametrize(
    ("signum", "code"),
    [(signal.SIGINT, ExitCode.INTERRUPTED), (signal.SIGTERM, ExitCode.TERMINATED)],
)
def test_a_signal_during_a_job_says_where_it_left_things(
    signum: int,
    code: ExitCode,
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SIGINT/SIGTERM in the canary wait: stderr names the job, its state, the resume command."""
    cfg = config(tmp_path)
    process = job_in_its_canary_wait(world, cfg, capsys)
    try:
        job = first_step_done(process, cfg, capsys)
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == code, err
    lines = [line for line in err.splitlines() if not line.startswith("{")]
    assert lines == [
        f"retryd: {signal.Signals(signum).name}: job {job['id']} is stopped after 1 step(s); "
        f"go on with: retryd redrive --resume {job['id']} --config {cfg}"
    ]
    _, [listed] = cli_json(capsys, "jobs", "--config", cfg)
    assert [j["state"] for j in listed["jobs"]] == ["stopped"]


def test_a_job_running_in_another_process_is_not_resumed_beside_it(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--resume` of a job another live process is running (here in its canary wait): exit 2
    naming the job and its runner, nothing sent; once that process stops, the resume goes on."""
    cfg = config(tmp_path)
    process = job_in_its_canary_wait(world, cfg, capsys)
    try:
        job = first_step_done(process, cfg, capsys)
        assert main(["redrive", "--config", cfg, "--resume", job["id"]]) == ExitCode.CONFIG
        err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("{")]
        assert len(err) == 1, err
        assert f"job {job['id']} is running in" in err[0], err
        assert world.depth("dest-a") == 1
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == ExitCode.INTERRUPTED
    code, [resumed] = cli_json(capsys, "redrive", "--config", cfg, "--resume", job["id"])
    assert code == 0, resumed
    assert world.depth("dest-a") == 4
