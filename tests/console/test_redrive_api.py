"""`POST /api/redrives` on the moto server: the CLI's plan, the CLI's job, the plan's cutoff."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import anyio
import pytest

from retryd.aws import open_clients
from retryd.commands.cli import main
from retryd.console.auth import NoAuth
from retryd.control.jobs import JobState, JobStore, RedriveJob, new_job_id
from retryd.control.memory import MemoryControlStore
from retryd.control.sqlite import SqliteControlStore
from retryd.drain.redrive import Spec
from retryd.sandbox.world import SANDBOX_CONFIG_TOML, build_world, sandbox_settings
from retryd.settings import load_settings
from tests.console.harness import SAME_ORIGIN, Caller, console_for, serving
from tests.world import World


def _sandbox(tmp_path: Path) -> Path:
    config = tmp_path / "sandbox.toml"
    config.write_text(SANDBOX_CONFIG_TOML)
    settings = sandbox_settings()

    async def build() -> None:
        async with open_clients(settings.aws) as clients:
            await build_world(clients, 2)

    anyio.run(build)
    return config


def test_the_apis_plan_is_the_commands_and_execute_runs_its_job_audited(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Plan counts equal `retryd redrive`'s; execute starts the job with the plan's cutoff."""
    config = _sandbox(tmp_path)
    capsys.readouterr()
    assert main(
        ["redrive", "--from", "retry-payments", "--output", "json", "--config", str(config)]
    ) in (0, 1)
    out = capsys.readouterr().out
    cli_plan = json.JSONDecoder().raw_decode(out)[0]["plan"]
    settings = sandbox_settings()
    body: dict[str, Any] = {"sources": ["retry-payments"], "canary_wait_s": 0}
    with anyio.from_thread.start_blocking_portal() as portal:
        clients = portal.wrap_async_context_manager(open_clients(settings.aws))
        with (
            clients as opened,
            serving(console_for(settings, MemoryControlStore(), opened), NoAuth(), portal) as base,
        ):
            call = Caller(base, dict(SAME_ORIGIN))
            planned = call("/api/redrives", "POST", body)
            assert planned.status == 200, planned.text
            plan = planned.json()["plan"]
            assert plan["groups"] == cli_plan["groups"]
            assert plan["selected"] == cli_plan["selected"] > 0
            planned_at_s = planned.json()["planned_at_s"]
            started = call(
                "/api/redrives", "POST", {**body, "execute": True, "planned_at_s": planned_at_s}
            )
            assert started.status == 200, started.text
            job = started.json()["job"]
            assert job["spec"]["selector"]["until_s"] == math.ceil(planned_at_s)
            for _ in range(600):
                shown = call(f"/api/jobs/{job['id']}").json()["job"]
                if shown["state"] != "running":
                    break
                portal.call(anyio.sleep, 0.1)
            assert shown["state"] in ("done", "stopped"), shown
            records = call("/api/audit").json()["records"]
    actions = [(r["action"], r["person"], r["outcome"]) for r in records]
    assert ("redrive-plan", "local", "ok") in actions
    assert ("redrive-execute", "local", "started") in actions
    assert ("redrive-execute", "local", shown["state"]) in actions


def test_resuming_a_job_another_live_process_runs_is_refused_with_409(
    world: World, tmp_path: Path
) -> None:
    """The console's resume of a job running elsewhere: 409 naming the runner, nothing started
    and the job still that runner's."""
    _sandbox(tmp_path)
    settings = sandbox_settings()
    store = MemoryControlStore()
    spec = Spec(sources=("retry-payments",), canary_wait_s=0)
    job = RedriveJob(new_job_id(), spec.kind, spec.to_json(), "someone")
    jobs = JobStore(store, settings.ledger.ttl_s)
    anyio.run(jobs.take, job, "elsewhere-host:4242:abcd")
    with anyio.from_thread.start_blocking_portal() as portal:
        clients = portal.wrap_async_context_manager(open_clients(settings.aws))
        with (
            clients as opened,
            serving(console_for(settings, store, opened), NoAuth(), portal) as base,
        ):
            answer = Caller(base, dict(SAME_ORIGIN))(f"/api/jobs/{job.id}/resume", "POST")
    assert answer.status == 409, answer.text
    assert "is running in elsewhere-host:4242" in answer.json()["error"]
    stored = anyio.run(jobs.load, job.id)
    assert (stored.state, stored.runner) == (JobState.RUNNING, "elsewhere-host:4242:abcd")


def test_jobs_pauses_and_audit_are_the_clis_documents(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A page, a script and the CLI never disagree: after a CLI redrive and a CLI pause,
    /api/jobs, /api/jobs/{id}, /api/pauses and /api/audit equal what the CLI prints."""
    config = _sandbox(tmp_path)
    # Operator state that outlives each command: the sandbox's, in a SQLite file.
    ledger = tmp_path / "ledger.sqlite3"
    config.write_text(
        config.read_text().replace(
            'backend = "memory"', f'backend = "sqlite"\npath = "{ledger}"', 1
        )
    )
    assert main(
        [
            "redrive",
            "--from",
            "retry-payments",
            "--execute",
            "--canary-wait-s",
            "0",
            "--config",
            str(config),
        ]
    ) in (0, 1)
    assert main(["pause", "--all", "--reason", "the same", "--config", str(config)]) == 0
    capsys.readouterr()

    def cli(*args: str) -> Any:
        assert main([*args, "--output", "json", "--config", str(config)]) == 0
        return json.loads(capsys.readouterr().out)

    listed = cli("jobs")
    [job] = listed["jobs"]
    shown = cli("jobs", "show", job["id"])
    pauses = cli("pauses")
    audited = cli("audit")
    settings = load_settings(config)
    with serving(console_for(settings, SqliteControlStore(ledger)), NoAuth()) as base:
        call = Caller(base)
        assert call("/api/jobs").json() == listed
        assert call(f"/api/jobs/{job['id']}").json() == shown
        assert call("/api/pauses").json() == pauses
        assert call("/api/audit").json() == audited
    assert [r["action"] for r in audited["records"]][:2] == ["pause", "redrive-execute"]
