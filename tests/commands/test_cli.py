"""The command line as a user meets it: help, config errors, once, run + SIGTERM, sandbox."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from retryd.commands.cli import main
from tests.processes import retryd_run
from tests.world import ACCOUNT, QUIET_GUARDS_TOML, REGION, World, envelope

CONFIG = (
    f"""
[aws]
max_attempts = 1

[discovery]
queue_prefixes = ["retry-"]

[drain]
receive_wait_s = 0

[schedule]
interval_s = 1

[guards]
allow_targets = ["arn:aws:*:{REGION}:{ACCOUNT}:*"]

[http]
enabled = false
"""
    + QUIET_GUARDS_TOML
)


def retryd(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "retryd", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def write_config(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "retryd.toml"
    path.write_text(text)
    return path


def test_help_explains_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """`retryd --help` names run, once, sandbox and config."""
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "once", "sandbox", "config"):
        assert f"\n    {command}" in out


def test_unknown_key_stops_start_up_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in the file exits 2 with the dotted field name."""
    path = write_config(tmp_path, CONFIG.replace("interval_s = 1", "interval_sec = 1"))
    assert main(["config", "check", "--config", str(path)]) == 2
    assert "schedule.interval_sec: unknown setting" in capsys.readouterr().err


def test_bad_value_and_bad_env_override_are_both_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong type in the file and an env var for no group are listed together, exit 2."""
    path = write_config(tmp_path, CONFIG.replace("interval_s = 1", 'interval_s = "soon"'))
    monkeypatch.setenv("RETRYD_SCHEDUEL__INTERVAL_S", "5")
    assert main(["once", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "schedule.interval_s: Input should be a valid number" in err
    assert "RETRYD_SCHEDUEL__INTERVAL_S: no settings group 'scheduel'" in err


def test_empty_allowlist_refuses_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No allow_targets and no explicit allow_any_target: exit 2, naming the field."""
    text = CONFIG.replace(f'allow_targets = ["arn:aws:*:{REGION}:{ACCOUNT}:*"]', "")
    assert main(["config", "check", "--config", str(write_config(tmp_path, text))]) == 2
    assert "guards: allow_targets is empty" in capsys.readouterr().err


def test_env_overrides_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """RETRYD_GROUP__FIELD wins over the TOML file; RETRYD_CONFIG names the file."""
    monkeypatch.setenv("RETRYD_CONFIG", str(write_config(tmp_path)))
    monkeypatch.setenv("RETRYD_SCHEDULE__INTERVAL_S", "7.5")
    assert main(["config", "check"]) == 0
    effective = json.loads(capsys.readouterr().out)
    assert effective["schedule"]["interval_s"] == 7.5
    assert effective["discovery"]["queue_prefixes"] == ["retry-"]


def test_config_check_shows_the_rate_limit_in_effect_per_target_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No per_s/burst: each type's own default is printed, with the rules that come first."""
    for name in list(os.environ):
        if name.startswith("RETRYD_"):
            monkeypatch.delenv(name)
    rule = f'pattern = "arn:aws:sqs:*:{ACCOUNT}:orders"\nper_s = 2\nburst = 3\n'
    text = (
        '[discovery]\nqueue_prefixes = ["retry-"]\n'
        f'[guards]\nallow_targets = ["arn:aws:*:{REGION}:{ACCOUNT}:*"]\n'
        f"[[rate_limit.targets]]\n{rule}"
    )
    assert main(["config", "check", "--config", str(write_config(tmp_path, text))]) == 0
    effective = json.loads(capsys.readouterr().out)["effective_rate_limits"]
    assert {
        kind: (rate["per_s"], rate["burst"]) for kind, rate in effective["by_target_type"].items()
    } == {
        "lambda": (5.0, 10),
        "stepfunctions": (5.0, 10),
        "sqs": (300.0, 300),
        "sns": (100.0, 100),
        "eventbridge": (100.0, 100),
    }
    assert effective["rules_first"][0]["pattern"] == f"arn:aws:sqs:*:{ACCOUNT}:orders"
    assert "per_worker" not in effective


def test_config_check_states_each_workers_part_of_the_rates_with_several_processes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """drain.processes = 2 on SQLite: each worker's half of every rate, and the limit that a
    target fed from one worker's DLQs gets only that half, said in config check's output."""
    for name in list(os.environ):
        if name.startswith("RETRYD_"):
            monkeypatch.delenv(name)
    text = (
        '[discovery]\nqueue_prefixes = ["retry-"]\n'
        f'[guards]\nallow_targets = ["arn:aws:*:{REGION}:{ACCOUNT}:*"]\n'
        f'[drain]\nprocesses = 2\n[ledger]\nbackend = "sqlite"\npath = "{tmp_path}/l.db"\n'
    )
    assert main(["config", "check", "--config", str(write_config(tmp_path, text))]) == 0
    per_worker = json.loads(capsys.readouterr().out)["effective_rate_limits"]["per_worker"]
    assert per_worker["processes"] == 2
    assert per_worker["by_target_type"]["lambda"] == {"per_s": 2.5, "burst": 5}
    assert per_worker["by_target_type"]["sqs"] == {"per_s": 150.0, "burst": 150}
    assert "takes 1/2 of every target's rate" in per_worker["limit"]
    assert "fed only from the DLQs of one worker" in per_worker["limit"]


def test_once_without_a_parking_queue_exits_4_and_touches_nothing(
    world: World, tmp_path: Path
) -> None:
    """No parking queue: `once` exits 4 naming it, and every message stays in its DLQ."""
    world.create_queue("retry-a")
    world.create_queue("dest")
    world.send("retry-a", envelope("sqs", world.queue_arn("dest"), "hello"))

    done = retryd("once", "--config", str(write_config(tmp_path)))

    assert done.returncode == 4, done.stdout + done.stderr
    assert "parking queue 'retryd-parking' not found" in done.stderr
    assert world.depth("retry-a") == 1
    assert world.depth("dest") == 0


def test_once_prints_a_summary_line(world: World, tmp_path: Path) -> None:
    """`retryd once` as a real process drains the DLQ and prints counts per outcome."""
    world.create_queue("retryd-parking")
    world.create_queue("retry-a")
    world.create_queue("dest")
    world.send("retry-a", envelope("sqs", world.queue_arn("dest"), "hello"))
    world.send("retry-a", "poison")

    done = retryd("once", "--config", str(write_config(tmp_path)))

    assert done.returncode == 0, done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert "received=2 resubmitted=1 parked=1 deferred=0 failed=0" in summary
    assert "parked:unresolvable=1" in summary
    decisions = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    settled = [d for d in decisions if d.get("outcome")]
    assert {d["outcome"] for d in settled} == {"resubmitted", "parked"}
    assert all("poison" not in json.dumps(d) for d in settled), "payloads are never logged"
    assert [m["Body"] for m in world.drain("dest")] == ["hello"]


def test_run_stops_cleanly_on_sigterm(world: World, tmp_path: Path) -> None:
    """`retryd run` cycles until SIGTERM, then exits 0 with its work settled."""
    world.create_queue("retryd-parking")
    world.create_queue("retry-a")
    world.create_queue("dest")
    world.send("retry-a", envelope("sqs", world.queue_arn("dest"), "one"))
    with retryd_run(write_config(tmp_path)) as process:
        deadline = time.monotonic() + 30
        while world.depth("dest") == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert world.depth("dest") == 1
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert '"stopping"' in stderr
    assert '"stopped"' in stderr
    assert world.depth("retry-a") == 0


def test_sandbox_runs_with_no_aws_account() -> None:
    """The quick start's first command: a demo world where every message ends up somewhere sane."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RETRYD_"))}
    done = subprocess.run(
        [sys.executable, "-m", "retryd", "sandbox"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.count("resubmitted") >= 9
    for reason in (
        "attempts-exhausted",
        "target-not-allowed",
        "invalid-envelope",
        "unresolvable",
        "source-error-permanent",
    ):
        assert reason in out
    # AWS's own shapes found their targets with no route: SQS moved one, Lambda wrote one.
    assert re.search(r"SQS intake +1 message", out)
    assert re.search(r"Lambda charge +3 async invocation", out)
    assert "0 message(s) left" in out
    # Not a TTY here, so the build's progress is one plain line rather than a bar, and it
    # counts to exactly the messages the world then holds.
    planned = re.search(r"building the demo world \((\d+) messages\)", done.stderr)
    built = re.search(r"demo DLQs: .* \((\d+) messages\)", out)
    assert planned is not None
    assert built is not None
    assert planned.group(1) == built.group(1)


def test_run_serves_metrics_and_probes_while_it_works(world: World, tmp_path: Path) -> None:
    """A live `retryd run` answers /healthz, /readyz and /metrics with its counters moving."""
    world.create_queue("retryd-parking")
    world.create_queue("retry-a")
    world.create_queue("dest")
    world.send("retry-a", envelope("sqs", world.queue_arn("dest"), "one"))
    text = CONFIG.replace("enabled = false", 'enabled = true\nhost = "127.0.0.1"\nport = 0')
    with retryd_run(write_config(tmp_path, text)) as process:
        assert process.stderr is not None
        port = None
        for line in process.stderr:
            if '"http-listening"' in line:
                port = json.loads(line)["port"]
                break
        assert port is not None, "retryd never said where it listens"
        base = f"http://127.0.0.1:{port}"
        resubmitted = (
            'retryd_messages_total{account="123456789012",outcome="resubmitted",'
            'queue="retry-a",reason="none",region="us-east-1",target_type="sqs"} 1.0'
        )
        cycles_ok = re.compile(r'retryd_cycles_total\{result="ok"\} [1-9]')
        deadline = time.monotonic() + 30
        metrics = fetch(f"{base}/metrics")
        while not (resubmitted in metrics and cycles_ok.search(metrics)):
            assert time.monotonic() < deadline, metrics
            time.sleep(0.2)
            metrics = fetch(f"{base}/metrics")
        assert world.depth("dest") == 1
        assert fetch(f"{base}/healthz").strip() == "ok"
        assert fetch(f"{base}/readyz").strip() == "ok"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert process.returncode == 0


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback only
        body: bytes = response.read()
    return body.decode()


def test_console_script_and_module_are_the_same_command() -> None:
    """The installed `retryd` script and `python -m retryd` both answer --help."""
    script = Path(sys.executable).parent / "retryd"
    via_script = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    via_module = retryd("--help")
    assert via_script.returncode == via_module.returncode == 0
    assert via_script.stdout == via_module.stdout
    assert "redrives AWS dead-letter queues" in via_script.stdout


def test_sandbox_without_the_extra_says_how_to_install_it() -> None:
    """With moto not importable, `retryd sandbox` exits 3 and names the extra."""
    code = (
        "import sys; sys.modules['moto'] = None; "
        "from retryd.commands.cli import main; raise SystemExit(main(['sandbox']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 3
    # The distribution's own name: `retryd` on PyPI is an unrelated project.
    assert "pip install 'retryd-aws[sandbox]'" in done.stderr


def test_sandbox_serve_lets_plan_predict_exactly_what_once_does() -> None:
    """`sandbox --serve`: `plan` there foretells `once`'s every count; its `run` line serves."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RETRYD_"))}
    server = subprocess.Popen(
        [sys.executable, "-m", "retryd", "sandbox", "--serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        printed = []
        for line in server.stdout:
            printed.append(line)
            if line.startswith("Serving until"):
                break
        exports = next(line for line in printed if line.strip().startswith("export "))
        aws = dict(pair.split("=", 1) for pair in exports.split()[1:])
        config = next(line for line in printed if line.startswith("settings: ")).split()[1]
        client_env = {**env, **aws}

        def command(*args: str) -> str:
            done = subprocess.run(
                [sys.executable, "-m", "retryd", *args, "--config", config],
                capture_output=True,
                text=True,
                timeout=60,
                env=client_env,
                check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        plan = json.loads(command("plan", "--output", "json"))
        summary = command("once").strip().splitlines()[-1]
        run_line = next(line for line in printed if line.strip().startswith("retryd run"))
        metrics_url = re.search(r"(http://127\.0\.0\.1:\d+)/metrics", "".join(printed))
        assert metrics_url is not None, printed
        served = serve_run(run_line.split()[1:], client_env, metrics_url.group(1))
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=30)
    assert server.returncode == 0

    predicted: Counter[str] = Counter()
    for group in plan["summary"]["groups"]:
        verb = {"resubmit": "resubmitted", "park": "parked", "defer": "deferred"}[group["action"]]
        predicted[verb] += group["count"]
        if group["reason"]:
            predicted[f"{verb}:{group['reason']}"] += group["count"]
    done = Counter(
        {
            name: int(count)
            for name, count in re.findall(r"([a-z:-]+)=(\d+)", summary)
            if name not in ("queues", "received", "failed")
        }
    )
    assert +done == +predicted
    assert predicted["resubmitted"] == 9
    assert predicted["parked"] == 5
    assert "retryd_build_info" in served


def serve_run(args: list[str], env: dict[str, str], base: str) -> str:
    """Start the `retryd run ...` line the sandbox printed; its /metrics once /readyz says ok."""
    process = subprocess.Popen(
        [sys.executable, "-m", "retryd", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()
            try:
                if fetch(f"{base}/readyz").strip() == "ok":
                    return fetch(f"{base}/metrics")
            except OSError:
                pass
            assert time.monotonic() < deadline, "retryd run never became ready"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
