"""`plan`, `once` and `redrive --execute` decide the same world the same way (one engine)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from retryd.commands.cli import main
from retryd.commands.plan import ACTION_OF
from retryd.drain.redrive_spec import PLAN_ACTION
from retryd.models import Outcome
from retryd.settle import outcome
from tests.operator_helpers import CONFIG, PARKING
from tests.world import REGION, World, envelope

pytestmark = pytest.mark.usefixtures("keep_logging_config")

DLQ = "retry-orders"
FOREIGN = f"arn:aws:sqs:{REGION}:999999999999:foreign"
# The plan's words for the outcomes, as `plan --output json` prints them.
PLAN_WORDS = {"resubmit": "resubmitted", "park": "parked", "defer": "deferred", "hold": "failed"}


def config(tmp_path: Path) -> str:
    """The operator tests' config with a SQLite ledger, shared by the commands of one test."""
    path = tmp_path / "retryd.toml"
    ledger = f'backend = "sqlite"\npath = "{tmp_path / "ledger.sqlite3"}"'
    path.write_text(CONFIG.replace('backend = "memory"', ledger))
    return str(path)


def documents(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, Any]]]:
    """Run one command with --output json; its exit code and every JSON document it printed."""
    code = main([*args, "--output", "json"])
    out = capsys.readouterr().out
    found, index, decoder = [], 0, json.JSONDecoder()
    while index < len(out):
        if out[index].isspace():
            index += 1
            continue
        document, index = decoder.raw_decode(out, index)
        found.append(document)
    return code, found


def build(world: World, cfg: str) -> None:
    """Two messages to resubmit, one outside the allowlist, one unresolvable, one paused target."""
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    world.create_queue("dest")
    world.create_queue("held-dest")
    dest = world.queue_arn("dest")
    world.send(DLQ, envelope("sqs", dest, {"n": 1}))
    world.send(DLQ, envelope("sqs", dest, {"n": 2}))
    world.send(DLQ, envelope("sqs", FOREIGN, {"n": 3}))
    world.send(DLQ, "not json at all")
    world.send(DLQ, envelope("sqs", world.queue_arn("held-dest"), {"n": 5}))
    assert (
        main(["pause", world.queue_arn("held-dest"), "--reason", "migration", "--config", cfg]) == 0
    )


def planned(capsys: pytest.CaptureFixture[str], cfg: str) -> Counter[tuple[str, str]]:
    """`plan`'s predictions, by (outcome, reason)."""
    code, [plan] = documents(capsys, "plan", "--config", cfg)
    assert code == 0, plan
    return Counter(
        (PLAN_WORDS[m["action"]], m["reason"] or "")
        for queue in plan["queues"]
        for m in queue["messages"]
    )


def test_plan_predicts_what_once_does(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every (outcome, reason) `plan` predicts is what `once` then decides, message for message."""
    cfg = config(tmp_path)
    build(world, cfg)
    capsys.readouterr()
    predicted = planned(capsys, cfg)
    code, [report] = documents(capsys, "once", "--config", cfg)
    assert code == 0, report
    done = Counter({o: n for o, n in report["outcomes"].items() if n})
    by_outcome: Counter[str] = Counter()
    for (outcome_value, _), count in predicted.items():
        by_outcome[outcome_value] += count
    assert by_outcome == done
    reasons = Counter({(r["outcome"], r["reason"]): r["count"] for r in report["reasons"]})
    assert reasons == Counter({key: n for key, n in predicted.items() if key[1]})
    assert predicted == Counter(
        {
            ("resubmitted", ""): 2,
            ("parked", "target-not-allowed"): 1,
            ("parked", "unresolvable"): 1,
            ("deferred", "paused"): 1,
        }
    )


def test_redrive_plan_is_what_the_job_reports(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On the same world, `redrive`'s plan equals the job's counts; guard parks are refused."""
    cfg = config(tmp_path)
    build(world, cfg)
    capsys.readouterr()
    predicted = planned(capsys, cfg)
    code, docs = documents(
        capsys, "redrive", "--config", cfg, "--from", DLQ, "--execute", "--ramp", "none"
    )
    plan, job = docs[0]["plan"], docs[1]["job"]
    # The job ended with refused messages: it did less than asked, so it exits 1 (issue 22).
    assert (code, job["state"]) == (1, "done"), docs
    assert plan["groups"] == job["groups"]
    executed = Counter({(g["action"], g["reason"] or ""): g["count"] for g in job["groups"]})
    # The documented override: what the daemon would park on a guard's word, a redrive refuses.
    operator: Counter[tuple[str, str]] = Counter()
    for (outcome_value, reason), count in predicted.items():
        if outcome_value == Outcome.PARKED.value:
            operator[("refuse", reason)] += count
        else:
            operator[(PLAN_ACTION[Outcome(outcome_value)], reason)] += count
    assert executed == operator
    assert len(world.drain("dest")) == 2
    # Refused and deferred messages were handed back where they were.
    assert world.depth(DLQ) == 3


def test_every_plan_word_names_an_outcome() -> None:
    """The plan's actions and the redrive's words are views of the one Outcome vocabulary."""
    assert set(ACTION_OF) == set(Outcome) == set(PLAN_ACTION)
    assert outcome.ALREADY_RESUBMITTED == "already-resubmitted"


def test_a_target_refusal_is_parked_alike_by_the_cycle_and_a_redrive(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A body too large for its target is parked payload-too-large by `once` and by a redrive.

    Before one engine, a redrive parked every permanent refusal as target-rejected.
    """
    cfg = config(tmp_path)
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    world.create_queue("small", MaximumMessageSize="1024")
    small = world.queue_arn("small")
    world.send(DLQ, envelope("sqs", small, {"blob": "x" * 2000}))
    code, [report] = documents(capsys, "once", "--config", cfg)
    assert code == 0, report
    assert report["reasons"] == [{"outcome": "parked", "reason": "payload-too-large", "count": 1}]
    world.send(DLQ, envelope("sqs", small, {"blob": "y" * 2000}))
    code, docs = documents(
        capsys, "redrive", "--config", cfg, "--from", DLQ, "--execute", "--ramp", "none"
    )
    assert code == 0, docs
    groups = {(g["action"], g["reason"]): g["count"] for g in docs[1]["job"]["groups"]}
    assert groups == {("park", "payload-too-large"): 1}
    assert world.depth(DLQ) == 0
    assert world.depth(PARKING) == 2
