"""bench.profile: where a profiled run's time went, by group, from py-spy's or cProfile's files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench import profile
from bench.__main__ import profiled

LIB = "/usr/lib/python3.11"
SITE = f"{LIB}/site-packages"


def test_py_spy_stacks_count_in_the_group_of_the_code_that_called_the_standard_library(
    tmp_path: Path,
) -> None:
    """Own samples go to the leaf's group; stdlib leaves to their caller's; waits to none."""
    raw = tmp_path / "retryd.txt"
    raw.write_text(
        f"main (/app/retryd/cli.py:1);send (/app/retryd/targets/sqs_queue.py:9) 30\n"
        f"main (/app/retryd/cli.py:1);_make_api_call ({SITE}/aiobotocore/client.py:340);"
        f"__setitem__ ({LIB}/email/message.py:420) 50\n"
        f"main (/app/retryd/cli.py:1);Condition.wait ({LIB}/threading.py:295) 400\n"
        f"main (/app/retryd/cli.py:1);EpollSelector.select ({LIB}/selectors.py:451) 400\n",
        encoding="utf-8",
    )
    read = profile.Profile(raw)
    assert dict(read.groups) == {"retryd": 30, "botocore and aiobotocore": 50}
    table = "\n".join(profile.groups_table([read], messages=1000))
    # 50 samples at 200 a second over 1,000 messages: 250 µs each.
    assert "250.0  botocore and aiobotocore" in table
    assert "400.0  all" in table


def test_cprofile_records_cpu_time_and_counts_calls(tmp_path: Path) -> None:
    """--record runs a module under cProfile; the report lists its functions with call counts."""
    out = tmp_path / "run.prof"
    assert profile.main(["--record", str(out), "-m", "json.tool", "--help"]) == 0
    read = profile.Profile(out)
    assert read.calls
    assert sum(read.groups.values()) > 0
    assert any("json" in label for label in read.calls)


def test_profiled_runs_a_python_module_contender_under_the_profiler(tmp_path: Path) -> None:
    """py-spy wraps the whole command; cProfile runs the module through bench.profile."""
    argv = [sys.executable, "-m", "retryd", "once"]
    spy = profiled(argv, "py-spy", tmp_path / "r")
    assert spy[1:3] == ["record", "--format"]
    assert spy[-5:] == ["--", *argv]
    assert f"{tmp_path / 'r'}.txt" in spy
    counted = profiled(argv, "cprofile", tmp_path / "r")
    assert counted == [
        argv[0],
        "-m",
        "bench.profile",
        "--record",
        f"{tmp_path / 'r'}.prof",
        "-m",
        "retryd",
        "once",
    ]
    with pytest.raises(ValueError, match="python -m"):
        profiled(["node", "server.js"], "py-spy", tmp_path / "r")
