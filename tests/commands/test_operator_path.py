"""The operator path never misleads: refused input is one line and exit 2, state is durable."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from retryd.commands import cli
from retryd.commands.operator_input import OperatorInputError, check_arn_glob
from retryd.commands.sandbox import serve_config_toml
from retryd.environment import CONFIG_ENV
from retryd.errors import ExitCode
from retryd.settings import load_settings
from tests.commands.test_exit_codes import clean_env, one_line_error
from tests.operator_helpers import config_file
from tests.world import World

pytestmark = pytest.mark.usefixtures("keep_logging_config")

BAD_GLOB = "arn:aws:sqs:us-east-1:123:in voices"


def sqlite_config(tmp_path: Path) -> str:
    """The operator tests' config with a SQLite ledger in `tmp_path`."""
    path = Path(config_file(tmp_path))
    path.write_text(
        path.read_text().replace('backend = "memory"', 'backend = "sqlite"\npath = "ledger.db"')
    )
    return str(path)


# --- item 6: no abbreviations, checked globs, `jobs list`, busy port, the --config hint -------


def test_every_parser_in_the_tree_refuses_abbreviations() -> None:
    """allow_abbrev is off on the root parser and on every command and action under it."""
    parsers = cli._parsers(cli.build_parser())
    assert len(parsers) > 20
    assert [p.prog for p in parsers if p.allow_abbrev] == []


@pytest.mark.parametrize(
    "argv",
    [
        ["redrive", "--from", "retry-orders", "--ex"],
        ["plan", "--max", "3"],
        ["pause", "--all", "--rea", "deploy"],
        ["jobs", "show", "--out", "json", "rd-1"],
    ],
)
def test_an_option_prefix_is_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """`--ex` is not `--execute`: argparse refuses it (exit 2) before anything runs."""
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == ExitCode.CONFIG
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["pause", BAD_GLOB, "--reason", "deploy"], "TARGET_GLOB"),
        (["resume", BAD_GLOB], "TARGET_GLOB"),
        (["redrive", "--from", "retry-orders", "--target", BAD_GLOB], "--target"),
        (["redrive", "--from", "retry-orders", "--to", "arn:aws:lambda:*:1:function:x"], "--to"),
    ],
)
def test_a_glob_no_arn_can_match_is_refused(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A short account or a space in an ARN glob: one line naming the option, exit 2."""
    assert cli.main(argv) == ExitCode.CONFIG
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"retryd: {option} ")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (BAD_GLOB, "space"),
        ("arn:aws:sqs:us-east-1:123:invoices", "account '123'"),
        ("arn:aws:sqs:us-east-1:123456789012:", "resource is empty"),
        ("aws:sqs:us-east-1:123456789012:q", "arn:PARTITION"),
        ("arn:aws:SQS:us-east-1:123456789012:q", "service"),
    ],
)
def test_check_arn_glob_says_what_is_wrong(text: str, why: str) -> None:
    """Each malformed glob is refused with the field that is wrong."""
    with pytest.raises(OperatorInputError, match=why):
        check_arn_glob(text, "--target")


@pytest.mark.parametrize(
    "text",
    [
        "*",
        "arn:aws:lambda:*:123456789012:function:*",
        "arn:aws:sqs:us-east-1:123456789012:invoices",
        "arn:*:sns:*:*:alerts",
        "arn:aws-cn:states:cn-north-1:12345678901?:stateMachine:fulfil",
    ],
)
def test_check_arn_glob_accepts_real_globs(text: str) -> None:
    """Globs that can match real ARNs pass unchanged."""
    assert check_arn_glob(text, "--target") == text


def test_to_takes_no_wildcards() -> None:
    """`--to` names one target: a wildcard is refused."""
    with pytest.raises(OperatorInputError, match="wildcards"):
        check_arn_glob("arn:aws:lambda:*:123456789012:function:x", "--to", wildcards=False)


def test_jobs_list_is_the_bare_jobs_listing(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`retryd jobs list` is accepted, as its help says, and lists as `retryd jobs` does."""
    config = sqlite_config(tmp_path)
    assert cli.main(["jobs", "list", "--config", config]) == 0
    listed = capsys.readouterr().out
    assert cli.main(["jobs", "--config", config]) == 0
    assert capsys.readouterr().out == listed == "no redrive jobs\n"


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_sandbox_serve_on_a_busy_port_is_one_line_and_exit_2(busy_port: int) -> None:
    """`sandbox --serve --port <busy>`: one line naming --port, exit 2, not the server's text."""
    done = subprocess.run(
        [sys.executable, "-m", "retryd", "sandbox", "--serve", "--port", str(busy_port)],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == ExitCode.CONFIG
    line = one_line_error(done)
    assert f"--port {busy_port}: cannot listen on 127.0.0.1:{busy_port}" in line


def test_a_missing_setting_without_a_file_points_at_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --config, no $RETRYD_CONFIG, a required setting missing: the error says how."""
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert cli.main(["config", "check"]) == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert "discovery: required setting is missing" in err
    assert "--config PATH" in err
    assert f"${CONFIG_ENV}" in err


def test_a_missing_setting_in_a_given_file_gets_no_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a file given the hint would mislead: the missing field alone is named."""
    path = tmp_path / "retryd.toml"
    path.write_text("[http]\nenabled = false\n")
    assert cli.main(["config", "check", "--config", str(path)]) == ExitCode.CONFIG
    assert "--config PATH" not in capsys.readouterr().err


# --- item 1: operator state needs a durable backend -------------------------------------------


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["pause", "--all", "--reason", "deploy"], "pause"),
        (["resume", "--all"], "resume"),
        (["audit"], "audit"),
        (["jobs"], "jobs"),
        (["jobs", "show", "rd-1"], "jobs"),
        (["redrive", "--from", "retry-orders", "--execute"], "redrive --execute"),
        (["redrive", "--resume", "rd-1"], "redrive --resume"),
    ],
)
def test_operator_state_on_the_memory_backend_is_refused(
    argv: list[str], command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """pause/resume/audit/jobs/redrive --execute on memory: one line saying what to set, exit 2."""
    assert cli.main([*argv, "--config", config_file(tmp_path)]) == ExitCode.CONFIG
    err = capsys.readouterr().err.strip()
    assert err.startswith(f'retryd: {command}: ledger.backend is "memory"')
    assert "RETRYD_LEDGER__BACKEND=sqlite" in err
    assert len(err.splitlines()) == 1


def test_a_relative_sqlite_path_is_taken_from_the_settings_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`path = "ledger.db"` is beside the file from any directory; config check prints it."""
    config = sqlite_config(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_settings(Path(config)).ledger.path == str(tmp_path / "ledger.db")
    assert cli.main(["config", "check", "--config", os.path.relpath(config)]) == 0
    assert json.loads(capsys.readouterr().out)["ledger"]["path"] == str(tmp_path / "ledger.db")


def test_a_pause_made_from_another_directory_is_seen(
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """pause from one directory, pauses from another, same --config: the pause is there."""
    config = sqlite_config(tmp_path)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "a")
    assert cli.main(["pause", "--all", "--reason", "deploy", "--config", config]) == 0
    monkeypatch.chdir(tmp_path / "b")
    capsys.readouterr()
    assert cli.main(["pauses", "--config", config, "--output", "json"]) == 0
    assert [p["reason"] for p in json.loads(capsys.readouterr().out)["pauses"]] == ["deploy"]


def test_the_served_sandbox_keeps_operator_state_beside_its_settings(tmp_path: Path) -> None:
    """`sandbox --serve`'s settings use a SQLite ledger in its work directory."""
    path = tmp_path / "retryd.toml"
    path.write_text(serve_config_toml(8080))
    assert tomllib.loads(path.read_text())["ledger"]["backend"] == "sqlite"
    assert load_settings(path).ledger.path == str(tmp_path / "retryd.sqlite3")
