"""What a command imports to start: the facts behind its start-up time (bench's `startup` world)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Each over 10 ms to import here, and none needed to print a version.
HEAVY = ("botocore", "pydantic_settings", "rich", "structlog", "aiobotocore", "jsonschema")

# Runs the command line in a fresh interpreter and prints the top-level modules it loaded.
PROBE = """
import json, sys
from retryd.commands.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
sys.stdout.flush()
print("\\nMODULES " + json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def loaded(*args: str) -> set[str]:
    """The top-level modules loaded by `retryd ARGS` in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("MODULES "), done.stdout
    return set(json.loads(last.removeprefix("MODULES ")))


def test_version_imports_neither_the_sdk_nor_the_settings_nor_rich() -> None:
    """`retryd --version` loads no botocore, pydantic_settings, rich or structlog."""
    assert not loaded("--version") & set(HEAVY)


def test_help_imports_neither_the_sdk_nor_the_settings_nor_rich() -> None:
    """`retryd --help` builds the whole command line without botocore, pydantic settings, rich
    or structlog (the console's subcommand once pulled in the settings for its parser)."""
    assert not loaded("--help") & set(HEAVY)


# The AWS SDK's async stack: a quarter of a second to import, needed only to open clients.
SDK = ("aioboto3", "aiobotocore", "aiohttp", "boto3", "jmespath")


def test_config_check_imports_no_aws_sdk(tmp_path: Path) -> None:
    """`retryd config check` loads no aioboto3, aiobotocore, aiohttp, boto3 or jmespath: it
    reaches retryd.cluster (for the per-worker rates), whose DynamoDB modules once imported
    retryd.aws for their clients' types."""
    config = tmp_path / "retryd.toml"
    config.write_text(
        '[discovery]\nqueue_prefixes = ["retry-"]\n\n'
        '[guards]\nallow_targets = ["arn:aws:sqs:*:*:*"]\n'
    )
    modules = loaded("config", "check", "--config", str(config))
    assert "pydantic_settings" in modules, "the probe did not reach the settings"
    assert not modules & set(SDK)


def test_config_check_imports_neither_rich_nor_prometheus(tmp_path: Path) -> None:
    """`retryd config check` prints JSON and serves nothing: it loads no rich (structlog,
    reached through the breaker, once brought it) and no prometheus_client (the breaker's
    Metrics, needed for annotations alone), and no DynamoDB cluster (the cluster
    package once imported every member to give out `share`)."""
    config = tmp_path / "retryd.toml"
    config.write_text(
        '[discovery]\nqueue_prefixes = ["retry-"]\n\n'
        '[guards]\nallow_targets = ["arn:aws:sqs:*:*:*"]\n'
    )
    probe = PROBE.replace('{name.split(".")[0] for name in sys.modules}', "set(sys.modules)")
    done = subprocess.run(
        [sys.executable, "-c", probe, "config", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    modules = set(json.loads(done.stdout.strip().splitlines()[-1].removeprefix("MODULES ")))
    assert "retryd.cluster.agree" in modules, "the probe did not reach the rate split"
    assert "rich" not in modules
    assert "prometheus_client" not in modules
    assert "retryd.cluster.dynamodb" not in modules


def drain_modules() -> set[str]:
    """Every module (dotted names) loaded by importing what `retryd once` and `run` drain with."""
    probe = (
        "import json, sys, retryd.commands.cli, retryd.service.lifecycle\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    modules = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "botocore" in modules, "the probe did not reach the drain"
    return modules


def test_a_drain_without_schema_hooks_imports_no_jsonschema() -> None:
    """What `retryd once` and `run` import to drain loads no jsonschema (50 ms with its
    dependencies) until a `[[hooks]]` rule names a schema file."""
    assert not {name for name in drain_modules() if name.split(".")[0] == "jsonschema"}


def test_a_drain_imports_no_web_server_until_it_serves() -> None:
    """What `retryd once` and `run` import to drain loads no `aiohttp.web` (the listener's
    server, about 10 ms): the scheduler's Health lives apart from it, and the listener is
    imported only when `[http]` is on. Health once lived in the listener's module."""
    modules = drain_modules()
    assert "aiohttp" in modules, "the probe did not reach the SDK's HTTP client"
    assert "aiohttp.web" not in modules


def test_json_lines_load_structlog_without_rich_and_a_console_later_gets_it_back() -> None:
    """Logging as JSON lines loads structlog but not rich (60 ms nothing uses); a console
    configured afterwards in the same process formats its tracebacks with rich again."""
    probe = (
        "import sys\n"
        "from retryd.logs import configure_logging\n"
        "configure_logging('info', 'json')\n"
        "print('json', 'structlog' in sys.modules, 'rich' in sys.modules)\n"
        "configure_logging('info', 'console')\n"
        "import structlog\n"
        "renderer = structlog.get_config()['processors'][-1]\n"
        "print('console', type(renderer.exception_formatter).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines() == ["json True False", "console RichTracebackFormatter"]
