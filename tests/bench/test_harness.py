"""The benchmark harness runs end to end on tiny worlds; speed is never asserted here."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.__main__ import WORLDS, compile_contenders, main, parse_args, rss_by_progress
from bench.floor import FAITHFUL_WAIT_S
from bench.ledger import DYNAMODB_VARIANTS
from bench.ledger import VARIANTS as LEDGER_VARIANTS
from bench.ledger import measure as measure_ledger
from bench.steady import Arrival, Throttle, process_cpu_s
from bench.steady import figures as fed_figures
from bench.worlds import build_sqs_world
from tests.world import World


def test_the_contenders_start_from_bytecode_as_an_installed_package_does() -> None:
    """retryd's modules have up-to-date .pyc files once the harness has compiled them."""
    import retryd.drain.batch  # noqa: PLC0415 - only to find its file

    source = retryd.drain.batch.__file__
    assert source is not None
    compile_contenders()
    cached = importlib.util.cache_from_source(source)
    assert os.path.exists(cached)
    assert os.path.getmtime(cached) >= os.path.getmtime(source)


@pytest.mark.slow
def test_the_sqs_world_verifies_every_contender_and_prints_the_ratios(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every contender moves every message once, and the summary names the ratios."""
    world = ["--world", "sqs", "--emulator", "moto", "--messages", "40", "--dlqs", "2"]
    contenders = "floor,floor-faithful,naive-batch,naive,retryd"
    runs = ["--runs", "1", "--latency-ms", "1", "--contenders", contenders]
    code = main([*world, "--naive-messages", "12", *runs])
    out = capsys.readouterr().out
    assert code == 0
    document = json.loads(out[: out.rindex("}") + 1])
    (result,) = document["results"]
    for mode in ("loopback", "+1ms"):
        figures = result["figures"][mode]
        named = ("floor", 40), ("floor-faithful", 40), ("naive-batch", 40), ("naive", 12)
        for name, messages in (*named, ("retryd", 40)):
            assert figures[name]["verified"], (mode, name, figures[name]["checks"])
            assert figures[name]["checks"][0]["delivered"] == messages
            assert figures[name]["cpu_ms_per_msg"] > 0
        assert set(figures["ratios"]) >= {
            "retryd/floor msg_per_s",
            "retryd/floor cpu_per_msg",
            "retryd/floor-faithful msg_per_s",
            "retryd/floor-faithful cpu_per_msg",
            "retryd/naive msg_per_s",
        }
    assert result["figures"]["+1ms"]["retryd"]["calls_per_msg"] > 0
    assert "retryd/floor msg_per_s" in out.splitlines()[-1]


@pytest.mark.parametrize("faithful", [True, False])
def test_the_faithful_floor_forwards_attributes_and_long_polls_before_it_stops(
    world: World, tmp_path: Path, faithful: bool
) -> None:
    """Only the faithful floor carries a message's attributes to its copy and waits for
    an empty long poll; the floor drops them and stops at its first empty short poll."""
    sqs = world.client("sqs")
    bench_world = build_sqs_world(world.url, 1, 0)
    pair = bench_world.pairs[0]
    attribute = {"DataType": "String", "StringValue": "order-7"}
    sqs.send_message_batch(
        QueueUrl=pair["dlq_url"],
        Entries=[
            {"Id": str(n), "MessageBody": f"body-{n}", "MessageAttributes": {"tenant": attribute}}
            for n in range(3)
        ],
    )
    path = tmp_path / "world.json"
    path.write_text(json.dumps({**bench_world.as_json(), "endpoint": world.url}))
    flags = ["--faithful"] if faithful else []
    started_s = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "bench.floor", str(path), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    took_s = time.monotonic() - started_s
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {"moved": 3}
    copies = sqs.receive_message(
        QueueUrl=pair["target_url"], MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    )["Messages"]
    assert sorted(copy["Body"] for copy in copies) == ["body-0", "body-1", "body-2"]
    carried = [
        copy.get("MessageAttributes", {}).get("tenant", {}).get("StringValue") for copy in copies
    ]
    assert carried == (["order-7"] * 3 if faithful else [None] * 3)
    if faithful:
        # Its last receive on the emptied DLQ was a long poll, not a short one.
        assert took_s >= FAITHFUL_WAIT_S


@pytest.mark.slow
def test_the_discovery_world_counts_calls_per_empty_dlq(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Calls to empty DLQs are counted per queue, and the busy ones are drained."""
    code = main(["--world", "discovery", "--emulator", "moto", "--discovery-dlqs", "14"])
    out = capsys.readouterr().out
    assert code == 0
    (result,) = json.loads(out[: out.rindex("}") + 1])["results"]
    assert result["empty"] == 4
    assert result["figures"]["calls_per_empty_dlq"] >= 1
    assert result["figures"]["calls_by_operation"]["ListQueues"] >= 1


def test_rss_by_progress_is_the_highest_rss_up_to_each_fifth() -> None:
    """Each mark shows the peak so far: a figure that grows with the backlog shows as growing."""
    ticks = [(0, 50.0), (15, 60.0), (30, 58.0), (55, 70.0), (80, 71.0), (100, 65.0)]
    assert rss_by_progress(ticks, 100) == {
        "20%": 60.0,
        "40%": 60.0,
        "60%": 70.0,
        "80%": 71.0,
        "100%": 71.0,
    }


@pytest.mark.slow
def test_the_drain_world_reports_rss_along_the_backlog(capsys: pytest.CaptureFixture[str]) -> None:
    """Both backlogs are drained and verified, each with its RSS at the marks it reached."""
    code = main(
        ["--world", "drain", "--emulator", "moto", "--drain-messages", "100", "--dlqs", "2"]
    )
    out = capsys.readouterr().out
    assert code == 0
    (result,) = json.loads(out[: out.rindex("}") + 1])["results"]
    assert set(result["figures"]) == {"20", "100"}
    for figures in result["figures"].values():
        assert figures["check"]["lost"] == 0
        assert figures["check"]["duplicated"] == 0
        assert figures["rss_mb_by_progress"], figures
    assert "by progress" in out.splitlines()[-1]


def test_the_startup_world_times_every_command_against_the_interpreter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each command of the startup world answers (exit 0) and gets a median beside the floor."""
    code = main(["--world", "startup", "--startup-runs", "1"])
    out = capsys.readouterr().out
    assert code == 0
    (result,) = json.loads(out[: out.rindex("}") + 1])["results"]
    assert set(result["figures"]) == {
        "python -c pass",
        "retryd --version",
        "retryd --help",
        "retryd config check",
    }
    assert all(figures["median_ms"] > 0 for figures in result["figures"].values())
    assert out.splitlines()[-1].startswith("startup (median of 1): python -c pass")


def test_worlds_are_named_in_a_comma_separated_list() -> None:
    """`--world sqs,startup` runs both in that order; `all` is every world; a typo is refused."""
    assert parse_args(["--world", "startup,sqs"]).world == ["startup", "sqs"]
    assert parse_args(["--world", "all"]).world == list(WORLDS)
    with pytest.raises(SystemExit):
        parse_args(["--world", "sqs,stedy"])


def test_the_ledger_bench_compares_group_commit_with_a_transaction_per_call() -> None:
    """bench.ledger measures every ledger variant and its ratio to the memory ledger."""
    figures = measure_ledger(batches=6, in_flight=3, runs=1)
    assert figures["messages"] == 60
    assert set(figures["cpu_ms_per_msg"]) == set(LEDGER_VARIANTS)
    assert figures["over_memory"]["memory"] == 1.0


def test_the_ledger_bench_counts_dynamodb_requests_per_batch_at_the_server() -> None:
    """With DynamoDB: a request per call is 3 per batch; group commit's, counted, are fewer."""
    figures = measure_ledger(batches=4, in_flight=4, runs=1, dynamodb_batches=4)
    requests = figures["dynamodb_requests"]
    assert requests["dynamodb, a request per call"]["per_batch"] == 3.0
    assert requests["dynamodb, a request per call"]["by_name_first_run"] == {
        "BatchGetItem": 4,
        "TransactWriteItems": 8,
    }
    assert 0 < requests["dynamodb, group commit (default)"]["per_batch"] < 3.0
    assert set(figures["cpu_ms_per_msg"]) == set(LEDGER_VARIANTS) | set(DYNAMODB_VARIANTS)


def test_fed_figures_count_the_window_only() -> None:
    """Sustained rate, latency and CPU per message come from the window, not the warm-up."""
    arrivals = [
        # Fed during the warm-up: left out of the latency, and arrived before the window.
        Arrival(0, sent_ms=500, arrived_ms=900),
        Arrival(1, sent_ms=1_000, arrived_ms=1_100),
        Arrival(2, sent_ms=1_500, arrived_ms=1_800),
        Arrival(3, sent_ms=2_000, arrived_ms=2_050),
        # Fed in the window, arrived after it: latency counts, the sustained rate does not.
        Arrival(4, sent_ms=2_900, arrived_ms=3_400),
    ]
    out = fed_figures(arrivals, (1_000.0, 3_000.0), cpu_s=0.3)
    assert out["window_s"] == 2.0
    assert out["sustained_msg_per_s"] == 1.5
    assert out["offered_msg_per_s"] == 2.0
    assert out["latency_p50_ms"] == 200.0
    assert out["cpu_ms_per_msg"] == 100.0
    assert 300.0 <= out["latency_p99_ms"] <= 500.0


def test_process_cpu_is_read_from_proc_and_none_once_gone() -> None:
    """A live process has a CPU time; a finished one has none."""
    assert (process_cpu_s(os.getpid()) or 0) > 0
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    assert process_cpu_s(done.pid) is None


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def test_the_stop_and_continue_throttle_leaves_the_process_running() -> None:
    """Without a cgroup the throttle stops the process in turns, and released it runs again."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    throttle = Throttle(0.25, "unused")
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("bench.steady.CGROUP_ROOTS", ())
            throttle.start(sleeper.pid)
        assert "SIGSTOP" in throttle.how
        stopped = False
        for _ in range(50):
            stopped = stopped or _state(sleeper.pid) == "T"
            time.sleep(0.01)
        throttle.release()
        throttle.close()
        assert stopped
        assert _state(sleeper.pid) != "T"
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("RETRYD_RELIABILITY") != "full",
    reason="30 s of real `retryd run` processes: runs with RETRYD_RELIABILITY=full",
)
def test_the_steady_and_starved_worlds_verify_every_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Both contenders fed at a constant rate, and retryd on a quarter core, deliver each once."""
    code = main(
        [
            *("--world", "steady,starved", "--emulator", "moto", "--dlqs", "2"),
            *("--rate", "20", "--starved-rate", "20", "--duration-s", "3", "--warmup-s", "1"),
            *("--tail-s", "60", "--schedule-interval-s", "1"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out[-2000:]
    steady, starved = json.loads(out[: out.rindex("}") + 1])["results"]
    assert set(steady["figures"]) >= {"floor", "retryd"}
    for figures in (
        steady["figures"]["floor"],
        steady["figures"]["retryd"],
        starved["figures"]["retryd"],
    ):
        assert figures["verified"], figures
        assert figures["check"]["delivered"] == figures["messages"] == 60
        assert figures["latency_p99_ms"] is not None
    assert starved["cpu_share"] == 0.25
    assert starved["figures"]["retryd"]["throttle"]
    lines = out.splitlines()
    assert lines[-2].startswith("steady (20 msg/s offered for 3 s)")
    assert "0.25 core" in lines[-1]


def test_the_world_list_names_the_fed_worlds() -> None:
    """`--world steady,starved` parses in order, with the fed worlds' flags."""
    args = parse_args(["--world", "steady,starved", "--rate", "500", "--cpu-share", "0.5"])
    assert args.world == ["steady", "starved"]
    assert (args.rate, args.cpu_share, args.schedule_interval_s) == (500, 0.5, None)
