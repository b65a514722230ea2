"""A redrive sends what the daemon would: the `[[hooks]]` rule's transform and schema apply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retryd.commands.cli import main
from tests.e2e.test_redrive import DLQ, config
from tests.operator_helpers import PARKING
from tests.world import World, envelope

pytestmark = pytest.mark.usefixtures("keep_logging_config")

HOOK = f"""
[[hooks]]
queue = "{DLQ}"
transform = "tests.hook_transforms:add_flag"
"""


def test_a_redrive_sends_the_transformed_payload(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The DLQ's hook rule rewrites the payload: `redrive --execute` sends the rewritten one,
    as a cycle would, never the original."""
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    world.create_queue("dest-a")
    world.send(DLQ, envelope("sqs", world.queue_arn("dest-a"), {"n": 1}))
    cfg = config(tmp_path, HOOK)

    code = main(["redrive", "--config", cfg, "--from", DLQ, "--execute", "--ramp", "none"])

    assert code == 0, capsys.readouterr()
    [sent] = world.drain("dest-a")
    assert json.loads(sent["Body"])["fixed"] is True
    assert sent["MessageAttributes"]["retryd.transform"]["StringValue"].startswith(
        "tests.hook_transforms:add_flag@"
    )


def test_a_redrive_refuses_what_fails_the_rules_schema(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A payload the DLQ's schema refuses is planned and executed as refused invalid-payload;
    nothing is sent, the message stays in its DLQ for the daemon to park, and the job that
    refused it exits 1."""
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    world.create_queue("dest-a")
    world.send(DLQ, envelope("sqs", world.queue_arn("dest-a"), {"n": "one"}))
    schema = tmp_path / "order.schema.json"
    schema.write_text(json.dumps({"properties": {"n": {"type": "number"}}}))
    cfg = config(tmp_path, f'\n[[hooks]]\nqueue = "{DLQ}"\nschema_path = "{schema}"\n')

    execute = ["--from", DLQ, "--execute", "--ramp", "none", "--output", "json"]
    code = main(["redrive", "--config", cfg, *execute])

    out = capsys.readouterr().out
    assert code == 1, out
    assert '"refused|invalid-payload|' in out
    assert world.depth("dest-a") == 0
    assert world.depth(DLQ) == 1


def test_a_redrive_can_name_a_transform_for_its_job_alone(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--transform` with no [[hooks]] configured: the job's messages go out transformed and
    stamped with the transform's name; the daemon's own configuration is unchanged."""
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    world.create_queue("dest-a")
    world.send(DLQ, envelope("sqs", world.queue_arn("dest-a"), {"n": 1}))
    cfg = config(tmp_path)
    job = ["--transform", "tests.hook_transforms:add_flag", "--ramp", "none"]

    code = main(["redrive", "--config", cfg, "--from", DLQ, "--execute", *job])

    assert code == 0, capsys.readouterr()
    [sent] = world.drain("dest-a")
    assert json.loads(sent["Body"])["fixed"] is True
    assert sent["MessageAttributes"]["retryd.transform"]["StringValue"].startswith(
        "tests.hook_transforms:add_flag@"
    )


def test_a_transform_that_cannot_be_loaded_sends_nothing(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A `--transform` that names nothing importable is a usage error (exit 2); nothing moves."""
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    world.create_queue("dest-a")
    world.send(DLQ, envelope("sqs", world.queue_arn("dest-a"), {"n": 1}))
    cfg = config(tmp_path)
    job = ["--transform", "tests.no_such_module:nothing", "--ramp", "none"]

    code = main(["redrive", "--config", cfg, "--from", DLQ, "--execute", *job])

    assert code == 2, capsys.readouterr()
    assert world.drain("dest-a") == []
