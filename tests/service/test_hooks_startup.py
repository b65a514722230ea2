"""A hook that cannot be loaded stops `retryd run` and `once` at start-up: exit 2, one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from retryd.commands.cli import main

CONFIG = """
[discovery]
queue_prefixes = ["retry-"]

[guards]
allow_targets = ["arn:aws:sqs:*:123456789012:*"]

[ledger]
backend = "memory"

[http]
enabled = false

[[hooks]]
queue = "retry-orders"
schema_path = "{schema}"
"""


@pytest.mark.parametrize("command", ["run", "once"])
def test_a_missing_schema_file_is_a_config_error(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit status 2, the rule and the problem named, no traceback."""
    missing = tmp_path / "nope.json"
    config = tmp_path / "retryd.toml"
    config.write_text(CONFIG.format(schema=missing))

    status = main([command, "--config", str(config)])

    err = capsys.readouterr().err
    assert status == 2
    assert f"hooks.0.schema_path: {missing}: file not found" in err
    assert "Traceback" not in err
