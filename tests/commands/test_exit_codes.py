"""Every way a user can get it wrong: one line on stderr, the documented exit code, no traceback."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import NoCredentialsError

from retryd import classify
from retryd.commands import cli
from retryd.errors import (
    AwsSetupError,
    ConfigError,
    ExitCode,
    ParkingQueueMissingError,
    RetrydError,
    SandboxUnavailableError,
    UsageError,
)
from retryd.models import ErrorClass
from tests.commands.test_cli import CONFIG, write_config
from tests.faults import Fault
from tests.world import World, envelope

NO_REGION = "no AWS region: set AWS_REGION"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any AWS_* or RETRYD_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RETRYD_"))}
    env["AWS_CONFIG_FILE"] = "/nonexistent/retryd-test-config"
    env["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent/retryd-test-credentials"
    return {**env, **extra}


def retryd(
    *args: str, env: dict[str, str] | None = None, stdout: int | None = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "retryd", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (no traceback, no JSON log noise)."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("retryd: "), lines[0]
    return lines[0]


# --- the codes themselves -------------------------------------------------------------------


def test_help_lists_every_exit_code_with_its_meaning() -> None:
    """The --help epilog is generated from ExitCode: every number and meaning is in it."""
    done = retryd("--help")
    assert done.returncode == 0
    for code in ExitCode:
        assert f"{int(code):>3}  {code.meaning}"[:60] in done.stdout


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (RetrydError("x"), ExitCode.CYCLE_FAILED),
        (ConfigError(["x: y"]), ExitCode.CONFIG),
        (UsageError("x"), ExitCode.CONFIG),
        (SandboxUnavailableError("x"), ExitCode.SANDBOX_EXTRA_MISSING),
        (ParkingQueueMissingError("p"), ExitCode.PARKING_QUEUE_MISSING),
        (AwsSetupError("x"), ExitCode.AWS),
    ],
)
def test_each_error_class_maps_to_one_exit_code(error: RetrydError, code: ExitCode) -> None:
    """Each RetrydError subclass carries exactly the code the table documents."""
    assert error.exit_code is code


def test_the_exit_codes_keep_their_documented_numbers() -> None:
    """Scripts depend on the numbers: 0-4 as before, 5 AWS, 130 Ctrl-C, 143 SIGTERM."""
    assert [int(code) for code in ExitCode] == [0, 1, 2, 3, 4, 5, 130, 143]


def test_ctrl_c_exits_130_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """KeyboardInterrupt anywhere in a command is exit 130 and nothing printed."""

    def interrupted(_args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setitem(cli._HANDLERS, "config", interrupted)
    assert cli.main(["config", "check"]) == ExitCode.INTERRUPTED
    assert capsys.readouterr().err == ""


def test_a_failed_cycle_exits_1(world: World, tmp_path: Path) -> None:
    """A DLQ that cannot be read makes the cycle fail: exit 1, with the error on stderr."""
    world.create_queue("retryd-parking")
    world.create_queue("retry-a")
    world.send("retry-a", "poison")
    world.faults.add(Fault("sqs", "ReceiveMessage", code="InternalError", status=500))
    done = retryd("once", "--config", str(write_config(tmp_path)))
    assert done.returncode == ExitCode.CYCLE_FAILED, done.stderr
    assert "error: retry-a: InternalError" in done.stderr


# --- AWS set-up -----------------------------------------------------------------------------


def test_aws_region_alone_is_honoured(world: World, tmp_path: Path) -> None:
    """Only AWS_REGION set (as the README, ECS and systemd examples do): `once` works."""
    world.create_queue("retryd-parking")
    world.create_queue("retry-a")
    world.create_queue("dest")
    world.send("retry-a", envelope("sqs", world.queue_arn("dest"), "hello"))
    env = {k: v for k, v in os.environ.items() if k != "AWS_DEFAULT_REGION"}
    done = retryd("once", "--config", str(write_config(tmp_path)), env=env)
    assert done.returncode == 0, done.stderr
    assert world.depth("dest") == 1


@pytest.mark.parametrize(
    "command", [["once"], ["plan"], ["inspect"], ["ledger", "create-table"], ["run"]]
)
def test_no_region_is_one_line_and_exit_5(command: list[str], tmp_path: Path) -> None:
    """No region anywhere: every AWS command says to set AWS_REGION, exit 5."""
    env = clean_env(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x")
    done = retryd(*command, "--config", str(write_config(tmp_path)), env=env)
    assert done.returncode == ExitCode.AWS
    assert NO_REGION in one_line_error(done)


def test_unknown_profile_is_one_line_and_exit_5(tmp_path: Path) -> None:
    """AWS_PROFILE naming no profile: one line naming it, exit 5."""
    env = clean_env(AWS_PROFILE="nosuch", AWS_REGION="eu-west-1")
    done = retryd("once", "--config", str(write_config(tmp_path)), env=env)
    assert done.returncode == ExitCode.AWS
    assert "nosuch" in one_line_error(done)


def test_unreachable_aws_exits_5(tmp_path: Path) -> None:
    """An endpoint nothing listens on: `once` cannot even list the DLQs, exit 5 (not 1)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = clean_env(
        AWS_REGION="eu-west-1",
        AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY="x",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
    )
    done = retryd("once", "--config", str(write_config(tmp_path)), env=env)
    assert done.returncode == ExitCode.AWS, done.stderr
    assert "Traceback" not in done.stderr


def test_no_credentials_is_a_configuration_problem() -> None:
    """NoCredentialsError is classed `config`: retrying later will not fix it."""
    assert classify.from_exception(NoCredentialsError()).error_class is ErrorClass.CONFIG


def test_missing_ledger_table_fails_once_as_a_configuration_problem(
    world: World, tmp_path: Path
) -> None:
    """The DynamoDB ledger table is missing: messages stay, reason says config, exit 2."""
    world.create_queue("retryd-parking")
    world.create_queue("retry-a")
    world.create_queue("dest")
    world.send("retry-a", envelope("sqs", world.queue_arn("dest"), "hello"))
    text = CONFIG.replace('backend = "memory"', 'backend = "dynamodb"\ntable = "no-such-table"')
    done = retryd("once", "--config", str(write_config(tmp_path, text)))
    assert done.returncode == ExitCode.CONFIG, done.stdout + done.stderr
    assert "failed:ledger-misconfigured=1" in done.stdout
    assert "failed for a configuration reason" in done.stderr
    logged = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert any("(config)" in str(entry.get("detail")) for entry in logged)
    assert world.depth("retry-a") == 1
    assert world.depth("dest") == 0


def test_a_prefix_that_matches_nothing_is_warned_about(world: World, tmp_path: Path) -> None:
    """No queue matches discovery: a warning saying so, instead of a silent `queues=0`."""
    world.create_queue("retryd-parking")
    done = retryd("once", "--config", str(write_config(tmp_path)))
    assert done.returncode == 0, done.stderr
    warnings = [
        json.loads(line)
        for line in done.stderr.splitlines()
        if line.startswith("{") and json.loads(line)["level"] == "warning"
    ]
    assert [w["event"] for w in warnings] == ["no-queues-found"]
    assert warnings[0]["queue_prefixes"] == ["retry-"]


def test_create_table_for_a_config_that_will_not_use_it_says_so(
    world: World, tmp_path: Path
) -> None:
    """`ledger create-table` with backend = "memory": the table is made, with a warning."""
    done = retryd("ledger", "create-table", "--config", str(write_config(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert "ledger.backend is 'memory'" in done.stderr
    assert "will not use the table" in done.stderr


# --- the listener ---------------------------------------------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_metrics_port_in_use_is_one_line_and_exit_2(busy_port: int, tmp_path: Path) -> None:
    """`run` with http.port taken: one line naming http.port, not a 48-line ExceptionGroup."""
    text = CONFIG.replace(
        "enabled = false", f'enabled = true\nhost = "127.0.0.1"\nport = {busy_port}'
    )
    env = clean_env(AWS_REGION="eu-west-1", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x")
    done = retryd("run", "--config", str(write_config(tmp_path, text)), env=env)
    assert done.returncode == ExitCode.CONFIG
    errors = [line for line in done.stderr.splitlines() if not line.startswith("{")]
    assert errors == [
        f"retryd: invalid configuration: http.port: cannot listen on 127.0.0.1:{busy_port}: "
        f"{os.strerror(errno.EADDRINUSE)}"
    ]


# --- configuration files and variables ------------------------------------------------------


def test_config_naming_a_directory_is_one_line(tmp_path: Path) -> None:
    """--config DIR: exit 2, 'is a directory'."""
    done = retryd("config", "check", "--config", str(tmp_path), env=clean_env())
    assert done.returncode == ExitCode.CONFIG
    assert "is a directory" in one_line_error(done)


def test_config_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    """A Latin-1 file: exit 2, 'not UTF-8'."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[log]\nlevel = "d\xe9bug"\n')
    done = retryd("config", "check", "--config", str(path), env=clean_env())
    assert done.returncode == ExitCode.CONFIG
    assert "not UTF-8" in one_line_error(done)


def test_env_list_that_is_not_json_names_the_variable(tmp_path: Path) -> None:
    """RETRYD_GUARDS__ALLOW_TARGETS='arn:...' (not a JSON list): the variable named, exit 2."""
    env = clean_env(RETRYD_GUARDS__ALLOW_TARGETS="arn:aws:lambda:*")
    done = retryd("config", "check", "--config", str(write_config(tmp_path)), env=env)
    assert done.returncode == ExitCode.CONFIG
    line = one_line_error(done)
    assert "RETRYD_GUARDS__ALLOW_TARGETS: not valid JSON" in line


# --- output that nobody reads ---------------------------------------------------------------


@pytest.mark.parametrize("command", [["config", "check"], ["iam-policy"]])
def test_a_closed_pipe_ends_quietly_with_0(command: list[str], tmp_path: Path) -> None:
    """`... | head` closing early: exit 0 and nothing on stderr, not a BrokenPipeError."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = retryd(*command, "--config", str(write_config(tmp_path)), stdout=write_end)
    finally:
        os.close(write_end)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_plan_into_a_closed_pipe_ends_quietly_with_0(world: World, tmp_path: Path) -> None:
    """`plan | head -2` against real DLQs: exit 0, no traceback."""
    world.create_queue("retryd-parking")
    world.create_queue("retry-a")
    world.send("retry-a", "poison")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = retryd("plan", "--config", str(write_config(tmp_path)), stdout=write_end)
    finally:
        os.close(write_end)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "BrokenPipe" not in done.stderr


# --- the sandbox ----------------------------------------------------------------------------


def test_sandbox_without_werkzeug_says_how_to_install_it() -> None:
    """The extra is half there (no werkzeug): exit 3 and the install hint, no traceback."""
    code = (
        "import sys; sys.modules['werkzeug'] = None; "
        "from retryd.commands.cli import main; raise SystemExit(main(['sandbox']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == ExitCode.SANDBOX_EXTRA_MISSING
    assert "pip install 'retryd-aws[sandbox]'" in one_line_error(done)


def test_sandbox_port_without_serve_is_a_usage_error() -> None:
    """`sandbox --port 4566` without --serve was silently ignored: now exit 2, one line."""
    done = retryd("sandbox", "--port", "4566", env=clean_env())
    assert done.returncode == ExitCode.CONFIG
    assert "--port only applies with --serve" in one_line_error(done)
