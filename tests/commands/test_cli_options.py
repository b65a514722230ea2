"""The conventions of the command line: global options anywhere, queue selection, JSON, help."""

from __future__ import annotations

import argparse
import json
from importlib.metadata import version
from pathlib import Path

import pytest

from retryd.commands.cli import build_parser
from tests.commands.test_cli import write_config
from tests.commands.test_exit_codes import clean_env, one_line_error, retryd
from tests.world import World, envelope


def test_version_is_the_installed_distributions() -> None:
    """`retryd --version` prints the version installed as retryd-aws."""
    done = retryd("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"retryd {version('retryd-aws')} (retryd-aws)"


@pytest.mark.parametrize("before", [True, False])
def test_config_is_accepted_before_or_after_the_command(tmp_path: Path, before: bool) -> None:
    """`retryd --config X config check` and `retryd config check --config X` both work."""
    config = ["--config", str(write_config(tmp_path))]
    args = [*config, "config", "check"] if before else ["config", "check", *config]
    done = retryd(*args, env=clean_env())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["discovery"]["queue_prefixes"] == ["retry-"]


@pytest.mark.parametrize("before", [True, False])
def test_region_sets_the_arns_of_the_iam_policy(tmp_path: Path, before: bool) -> None:
    """--region before or after `iam-policy` puts that region in the policy's ARNs."""
    config = ["--config", str(write_config(tmp_path))]
    region = ["--region", "ap-southeast-2"]
    args = [*region, "iam-policy", *config] if before else ["iam-policy", *region, *config]
    done = retryd(*args, env=clean_env())
    assert done.returncode == 0, done.stderr
    assert ":ap-southeast-2:" in done.stdout


def test_profile_option_is_the_aws_profile(tmp_path: Path) -> None:
    """--profile nosuch fails exactly as AWS_PROFILE=nosuch does: one line, exit 5."""
    env = clean_env(AWS_REGION="eu-west-1")
    done = retryd("--profile", "nosuch", "once", "--config", str(write_config(tmp_path)), env=env)
    assert done.returncode == 5
    assert "nosuch" in one_line_error(done)


def test_endpoint_url_and_region_options_reach_every_client(world: World, tmp_path: Path) -> None:
    """With no AWS_ENDPOINT_URL or region in the environment, the options alone find the DLQ."""
    world.create_queue("retryd-parking")
    world.create_queue("retry-a")
    world.create_queue("dest")
    world.send("retry-a", envelope("sqs", world.queue_arn("dest"), "hello"))
    env = clean_env(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    done = retryd(
        "once",
        "--config",
        str(write_config(tmp_path)),
        "--endpoint-url",
        world.url,
        "--region",
        "us-east-1",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert world.depth("dest") == 1


def test_log_level_option_overrides_the_configured_level(world: World, tmp_path: Path) -> None:
    """--log-level error silences the info lines; -v adds debug ones."""
    world.create_queue("retryd-parking")
    config = str(write_config(tmp_path))
    quiet = retryd("--log-level", "error", "once", "--config", config)
    verbose = retryd("once", "-v", "--config", config)
    assert quiet.returncode == verbose.returncode == 0
    assert '"level": "info"' not in quiet.stderr
    assert '"level": "debug"' in verbose.stderr


def test_once_drains_only_the_named_queues(world: World, tmp_path: Path) -> None:
    """`once retry-a` leaves retry-b alone although the prefix matches both."""
    world.create_queue("retryd-parking")
    world.create_queue("dest")
    for dlq in ("retry-a", "retry-b"):
        world.create_queue(dlq)
        world.send(dlq, envelope("sqs", world.queue_arn("dest"), dlq))
    done = retryd("once", "retry-a", "--config", str(write_config(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert [m["Body"] for m in world.drain("dest")] == ["retry-a"]
    assert world.depth("retry-b") == 1


def test_plan_looks_only_at_the_named_queues(world: World, tmp_path: Path) -> None:
    """`plan retry-b --output json` plans retry-b's message and not retry-a's."""
    world.create_queue("retryd-parking")
    world.create_queue("dest")
    for dlq in ("retry-a", "retry-b"):
        world.create_queue(dlq)
        world.send(dlq, envelope("sqs", world.queue_arn("dest"), dlq))
    done = retryd("plan", "retry-b", "--output", "json", "--config", str(write_config(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert '"retry-b"' in done.stdout
    assert '"retry-a"' not in done.stdout


def test_once_output_json_is_the_cycle_summary(world: World, tmp_path: Path) -> None:
    """`once --output json` prints the counts as one JSON object."""
    world.create_queue("retryd-parking")
    world.create_queue("retry-a")
    world.create_queue("dest")
    world.send("retry-a", envelope("sqs", world.queue_arn("dest"), "hello"))
    world.send("retry-a", "poison")
    done = retryd("once", "--output", "json", "--config", str(write_config(tmp_path)))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["queues"] == 1
    assert summary["received"] == 2
    assert summary["outcomes"] == {"resubmitted": 1, "parked": 1, "deferred": 0, "failed": 0}
    assert summary["reasons"] == [{"outcome": "parked", "reason": "unresolvable", "count": 1}]
    assert summary["ok"] is True


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found.extend(_parsers(child))
    return found


def test_every_command_and_option_has_help() -> None:
    """No option or command in `--help` is left without a line saying what it does."""
    parser = build_parser()
    missing = []
    for each in _parsers(parser):
        for action in each._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [
                    f"{each.prog} {choice.dest}"
                    for choice in action._choices_actions
                    if not choice.help
                ]
            elif not action.help:
                missing.append(f"{each.prog} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script_covers_commands_and_options(shell: str) -> None:
    """`retryd completion SHELL` prints a script that knows the commands and their options."""
    done = retryd("completion", shell, env=clean_env())
    assert done.returncode == 0, done.stderr
    for word in ("create-table", "--max-messages", "--endpoint-url", "--output"):
        assert word in done.stdout


def test_sandbox_refuses_aws_options_it_would_ignore() -> None:
    """`retryd --region x sandbox`: the sandbox has its own emulator; say so, exit 2."""
    done = retryd("--region", "eu-west-1", "sandbox", env=clean_env())
    assert done.returncode == 2
    assert "--region do not apply" in one_line_error(done)
