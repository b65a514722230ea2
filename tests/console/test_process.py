"""`retryd console` as a real process: it starts, names its address, answers, reads the store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from retryd.control.pauses import add_pause
from retryd.control.sqlite import SqliteControlStore
from tests.console.harness import SAME_ORIGIN, Caller
from tests.world import World

pytestmark = pytest.mark.slow


def test_console_process_serves_the_ledgers_pauses_on_loopback(
    world: World, tmp_path: Path
) -> None:
    """With auth none on 127.0.0.1:0 it prints its URL; probes, pages and the API answer."""
    ledger = tmp_path / "ledger.sqlite3"
    anyio.run(
        lambda: add_pause(
            SqliteControlStore(ledger), "*", reason="from the CLI", by="ana", until_s=None
        )
    )
    config = tmp_path / "retryd.toml"
    config.write_text(
        '[discovery]\nqueue_prefixes = ["retry-"]\n'
        '[guards]\nallow_targets = ["arn:aws:lambda:*:*:*"]\n'
        f'[ledger]\nbackend = "sqlite"\npath = "{ledger}"\n'
        '[log]\nformat = "json"\n'
        '[console]\nauth = "none"\nlisten = "127.0.0.1:0"\n'
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "retryd", "console", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        assert process.stdout is not None
        line = ""
        while "listening on" not in line:
            line = process.stdout.readline()
            assert line, f"the console stopped: {process.communicate()}"
        call = Caller(line.rsplit(" ", 1)[1].strip().rstrip("/"))
        assert call("/healthz").text == "ok\n"
        assert call("/readyz").status == 200
        [pause] = call("/api/pauses").json()["pauses"]
        assert (pause["pattern"], pause["reason"]) == ("*", "from the CLI")
        assert call(f"/api/pauses/{pause['id']}", "DELETE", headers=SAME_ORIGIN).status == 200
        [record] = call("/api/audit").json()["records"]
        assert (record["action"], record["person"]) == ("resume", "local")
        # The AWS caller as STS (the emulator here) names it.
        assert record["who"].startswith("arn:aws:")
        assert "retryd_console_requests_total" in call("/metrics").text
    finally:
        process.kill()
        process.communicate()
