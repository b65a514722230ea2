"""`python -m bench`: retryd against the fastest possible client loop, on the same data.

Each contender runs as its own process; its CPU (user + sys) and peak RSS come
from the kernel's accounting of that process (wait4), its speed from the wall
clock around it. Every run is verified: lost or duplicated messages fail it.
Prints one JSON document, then one summary line per world.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import profile as bench_profile
from bench import steady, worlds
from bench.emulators import Emulator, Fauxqs, Moto, free_port, wait_until_listening

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": worlds.REGION,
    "AWS_REGION": worlds.REGION,
}


class Proxy:
    """bench.proxy in its own process: counts calls, adds `delay_ms` to each."""

    def __init__(self, upstream: str, delay_ms: float) -> None:
        self.port = free_port()
        self._argv = [
            sys.executable,
            "-m",
            "bench.proxy",
            "--upstream",
            upstream,
            "--port",
            str(self.port),
            "--delay-ms",
            str(delay_ms),
        ]
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Proxy:
        self._process = subprocess.Popen(self._argv, stdout=subprocess.DEVNULL)  # noqa: S603
        wait_until_listening(f"{self.url}/__bench/stats")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._process is not None
        self._process.terminate()
        self._process.wait(timeout=10)

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.url}/__bench/reset", method="POST")  # noqa: S310
        urllib.request.urlopen(request, timeout=10).close()  # noqa: S310

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/__bench/stats", timeout=10) as answer:  # noqa: S310
            stats: dict[str, Any] = json.load(answer)
            return stats


def current_rss_mb(pid: int) -> float | None:
    """A live process's resident set (Linux /proc), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def child_pid(pid: int) -> int | None:
    """The one child of `pid` (the launcher's contender), or None while there is none."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as children:
            found = children.read().split()
    except OSError:
        return None
    return int(found[0]) if found else None


def measure(
    argv: list[str],
    env: dict[str, str],
    on_tick: Callable[[int], None] | None = None,
    tick_s: float = 0.5,
) -> dict[str, Any]:
    """Run one contender to completion; wall time, CPU and peak RSS of its process.

    It runs under bench.launch, which reports the contender's own CPU and peak
    RSS (see there why not from here). `on_tick(pid)` is called with the
    contender's pid every `tick_s` while it runs (from a thread), to sample it.
    """
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "usage.json"
        started = time.perf_counter()
        launcher = subprocess.Popen(  # noqa: S603 - argv built by this module
            [sys.executable, "-m", "bench.launch", str(report), *argv],
            env={**os.environ, **AWS_ENV, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        finished = threading.Event()
        sampler = None
        if on_tick is not None:
            tick = on_tick

            def sample() -> None:
                while not finished.wait(tick_s):
                    pid = child_pid(launcher.pid)
                    if pid is not None:
                        tick(pid)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
        launcher.wait()
        wall_s = time.perf_counter() - started
        finished.set()
        if sampler is not None:
            sampler.join()
        usage: dict[str, Any] = json.loads(report.read_text())
    return {
        "exit_code": usage["exit_code"],
        "wall_s": wall_s,
        "cpu_s": usage["cpu_s"],
        "peak_rss_mb": usage["peak_rss_mb"],
    }


def retryd_argv(config: str) -> list[str]:
    return [sys.executable, "-m", "retryd", "once", "--config", config]


def profiled(argv: list[str], profiler: str, profile_to: Path) -> list[str]:
    """A contender's `python -m ...` argv run under `profiler`, writing to `profile_to`.

    py-spy samples every thread (see bench.profile); cProfile counts every call.
    """
    if argv[0] != sys.executable or argv[1] != "-m":
        raise ValueError(f"only a `python -m` contender can be profiled: {argv}")
    if profiler == "cprofile":
        return [argv[0], "-m", "bench.profile", "--record", f"{profile_to}.prof", *argv[1:]]
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    rate = str(bench_profile.SAMPLES_PER_S)
    return [
        *(py_spy, "record", "--format", "raw", "--function", "--full-filenames"),
        *("--rate", rate, "--output", f"{profile_to}.txt", "--", *argv),
    ]


Contender = Callable[[str, Path], tuple[list[str], dict[str, str]]]


def sqs_contenders(world: worlds.SqsWorld, scratch: Path) -> dict[str, Contender]:
    def script(module: str, *args: str) -> Contender:
        def run(endpoint: str, run_dir: Path) -> tuple[list[str], dict[str, str]]:
            path = run_dir / "world.json"
            path.write_text(json.dumps({**world.as_json(), "endpoint": endpoint}))
            return [sys.executable, "-m", module, str(path), *args], {}

        return run

    def retryd(backend: str, processes: int = 1) -> Contender:
        def run(endpoint: str, run_dir: Path) -> tuple[list[str], dict[str, str]]:
            config = run_dir / "retryd.toml"
            config.write_text(
                world.retryd_config(
                    run_dir / "ledger.sqlite3", backend=backend, processes=processes
                )
            )
            return retryd_argv(str(config)), {"AWS_ENDPOINT_URL": endpoint}

        return run

    return {
        "floor": script("bench.floor"),
        # The floor plus what a redrive that loses nothing must do (bench/floor.py).
        "floor-faithful": script("bench.floor", "--faithful"),
        "naive-batch": script("bench.naive_batch"),
        # One message at a time: run on its own, smaller backlog (--naive-messages).
        "naive": script("bench.naive_batch", "1"),
        "retryd": retryd("sqlite"),
        "retryd-memory-ledger": retryd("memory"),
        # drain.processes = 2: two workers sharing the DLQs and the SQLite ledger.
        "retryd-2p": retryd("sqlite", processes=2),
    }


def _summarise(samples: list[dict[str, Any]], messages: int) -> dict[str, Any]:
    def median(key: str) -> float:
        return float(statistics.median(float(sample[key]) for sample in samples))

    out: dict[str, Any] = {
        "runs": len(samples),
        "messages": messages,
        "msg_per_s": round(messages / median("wall_s"), 1),
        "cpu_ms_per_msg": round(1000 * median("cpu_s") / messages, 3),
        "peak_rss_mb": round(max(sample["peak_rss_mb"] for sample in samples), 1),
        "verified": all(
            s["check"]["lost"] == 0 and s["check"]["duplicated"] == 0 and s["exit_code"] == 0
            for s in samples
        ),
        "checks": [s["check"] for s in samples],
    }
    calls = [s["calls"] for s in samples if "calls" in s]
    if calls:
        out["calls_per_msg"] = round(statistics.median(calls) / messages, 3)
    return out


def sqs_emulator(args: argparse.Namespace) -> Emulator:
    """fauxqs for figures; moto for the test suite's tiny worlds (no npm needed)."""
    return Moto() if args.emulator == "moto" else Fauxqs()


def run_sqs_world(args: argparse.Namespace) -> dict[str, Any]:
    """(a) SQS → SQS redrive at loopback and behind a latency proxy, interleaved runs."""
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with sqs_emulator(args) as emulator, tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        world = worlds.build_sqs_world(emulator.url, args.dlqs, 0)
        contenders = sqs_contenders(world, scratch)
        chosen = [c for c in args.contenders.split(",") if c] or list(contenders)
        with Proxy(emulator.url, args.latency_ms) as proxy:
            modes = {"loopback": emulator.url, f"+{args.latency_ms:g}ms": proxy.url}
            for run in range(args.runs):
                for mode, endpoint in modes.items():
                    for name in chosen:
                        run_dir = scratch / f"{name}-{mode}-{run}"
                        run_dir.mkdir()
                        count = args.naive_messages if name == "naive" else args.messages
                        worlds.fill(world, count)
                        proxy.reset()
                        argv, env = _argv(args, contenders[name], endpoint, run_dir)
                        sample = measure(argv, env)
                        sample["messages"] = count
                        if endpoint == proxy.url:
                            sample["calls"] = sum(proxy.stats()["calls"].values())
                        sample["check"] = worlds.verify_and_reset(world)
                        results.setdefault(mode, {}).setdefault(name, []).append(sample)
                        print(
                            f"  {mode} {name} run {run + 1}: {sample['wall_s']:.1f}s",
                            file=sys.stderr,
                        )
    figures = {
        mode: {name: _summarise(runs, runs[0]["messages"]) for name, runs in by_name.items()}
        for mode, by_name in results.items()
    }
    for by_name in figures.values():
        ratios = _sqs_ratios(by_name)
        if ratios:
            by_name["ratios"] = ratios
    return {
        "world": "sqs",
        "emulator": args.emulator,
        "messages": args.messages,
        "dlqs": args.dlqs,
        # The profiler makes every call dearer: a profiled run's figures are not retryd's.
        "profiled_to": None if args.profile is None else str(args.profile),
        "figures": figures,
    }


def _sqs_ratios(by_name: dict[str, dict[str, Any]]) -> dict[str, float]:
    """retryd's msg/s and CPU per message against each yardstick that ran beside it."""

    def ratio(name: str, other: str, key: str) -> float:
        return round(float(by_name[name][key]) / float(by_name[other][key]), 2)

    ratios: dict[str, float] = {}
    if "retryd" not in by_name:
        return ratios
    for floor in ("floor", "floor-faithful"):
        if floor in by_name:
            ratios[f"retryd/{floor} msg_per_s"] = ratio("retryd", floor, "msg_per_s")
            ratios[f"retryd/{floor} cpu_per_msg"] = ratio("retryd", floor, "cpu_ms_per_msg")
    if "retryd-2p" in by_name:
        ratios["retryd-2p/retryd msg_per_s"] = ratio("retryd-2p", "retryd", "msg_per_s")
    for naive in ("naive-batch", "naive"):
        if naive in by_name:
            ratios[f"retryd/{naive} msg_per_s"] = ratio("retryd", naive, "msg_per_s")
    return ratios


def _argv(
    args: argparse.Namespace, contender: Contender, endpoint: str, run_dir: Path
) -> tuple[list[str], dict[str, str]]:
    """A contender's command, under the profiler when `--profile` asks for one."""
    argv, env = contender(endpoint, run_dir)
    if args.profile is None:
        return argv, env
    args.profile.mkdir(parents=True, exist_ok=True)
    return profiled(argv, args.profiler, args.profile / run_dir.name), env


def run_compute_world(args: argparse.Namespace) -> dict[str, Any]:
    """(b) Lambda and Step Functions targets on moto: CPU per message, shallow queues."""
    messages = args.compute_messages
    samples = []
    with Moto() as emulator, tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        world = worlds.build_compute_world(emulator.url, args.compute_dlqs, 0)
        for run in range(args.runs):
            worlds.fill_compute(world, messages)
            config = scratch / f"retryd-{run}.toml"
            config.write_text(world.retryd_config(scratch / f"ledger-{run}.sqlite3"))
            sample = measure(retryd_argv(str(config)), {"AWS_ENDPOINT_URL": emulator.url})
            left = worlds.compute_left(world)
            sample["check"] = {"lost": 0, "duplicated": 0, "left_in_dlq": left}
            if left:
                sample["exit_code"] = sample["exit_code"] or 99
            samples.append(sample)
            print(f"  compute run {run + 1}: {sample['wall_s']:.1f}s", file=sys.stderr)
    return {
        "world": "lambda+stepfunctions (moto)",
        "messages": messages,
        "figures": {"retryd": _summarise(samples, messages)},
    }


def run_discovery_world(args: argparse.Namespace) -> dict[str, Any]:
    """(c) 1,000 DLQs, 990 empty: wall time and AWS calls per empty DLQ in one cycle."""
    busy = min(10, args.discovery_dlqs)
    with sqs_emulator(args) as emulator, tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        world = worlds.build_discovery_world(emulator.url, args.discovery_dlqs, busy, 5)
        with Proxy(emulator.url, 0) as proxy:
            config = scratch / "retryd.toml"
            config.write_text(world.retryd_config(scratch / "ledger.sqlite3"))
            proxy.reset()
            sample = measure(retryd_argv(str(config)), {"AWS_ENDPOINT_URL": proxy.url})
            stats = proxy.stats()
    empty = args.discovery_dlqs - busy
    if empty == 0:
        raise ValueError("the discovery world needs more than 10 DLQs")
    per_empty = [count for queue, count in stats["per_queue"].items() if "-empty-" in queue]
    global_calls = sum(stats["calls"].values()) - sum(stats["per_queue"].values())
    return {
        "world": "discovery",
        "dlqs": args.discovery_dlqs,
        "empty": empty,
        "emulator": args.emulator,
        "figures": {
            "wall_s": round(sample["wall_s"], 2),
            "exit_code": sample["exit_code"],
            "calls_per_empty_dlq": round(sum(per_empty) / empty, 3),
            "calls_not_tied_to_a_queue": global_calls,
            "calls_by_operation": stats["calls"],
        },
    }


# How far through the backlog the drain world reports the RSS reached so far.
PROGRESS_MARKS = (0.2, 0.4, 0.6, 0.8, 1.0)


def rss_by_progress(ticks: list[tuple[int, float]], backlog: int) -> dict[str, float]:
    """Highest RSS seen up to each mark of the backlog delivered: flat means not growing."""
    out: dict[str, float] = {}
    for mark in PROGRESS_MARKS:
        upto = [rss for delivered, rss in ticks if delivered <= mark * backlog]
        if upto:
            out[f"{mark:.0%}"] = round(max(upto), 1)
    return out


def run_drain_world(args: argparse.Namespace) -> dict[str, Any]:
    """(d) a large backlog in one `retryd once`: peak RSS must not grow with the backlog.

    The RSS is sampled twice a second against the messages delivered so far, so the
    figures show it at each fifth of the backlog, not only its peak.
    """
    out: dict[str, Any] = {"world": "drain", "figures": {}}
    with sqs_emulator(args) as emulator, tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        world = worlds.build_sqs_world(emulator.url, args.dlqs, 0)
        for backlog in (args.drain_messages // 5, args.drain_messages):
            worlds.fill(world, backlog)
            config = scratch / f"retryd-{backlog}.toml"
            config.write_text(world.retryd_config(scratch / f"ledger-{backlog}.sqlite3"))
            ticks: list[tuple[int, float]] = []

            def tick(pid: int, ticks: list[tuple[int, float]] = ticks) -> None:
                # The delivered count is read first: its RSS is then at least that far on.
                delivered = worlds.delivered_so_far(world)
                rss_mb = current_rss_mb(pid)
                if rss_mb is not None:
                    ticks.append((delivered, rss_mb))

            sample = measure(
                retryd_argv(str(config)), {"AWS_ENDPOINT_URL": emulator.url}, on_tick=tick
            )
            check = worlds.verify_and_reset(world)
            out["figures"][str(backlog)] = {
                "msg_per_s": round(backlog / sample["wall_s"], 1),
                "peak_rss_mb": round(sample["peak_rss_mb"], 1),
                "rss_mb_by_progress": rss_by_progress(ticks, backlog),
                "cpu_ms_per_msg": round(1000 * sample["cpu_s"] / backlog, 3),
                "exit_code": sample["exit_code"],
                "check": check,
            }
            print(f"  drain {backlog}: {sample['wall_s']:.1f}s", file=sys.stderr)
    return out


# A configuration `retryd config check` accepts: the least a daemon needs.
STARTUP_CONFIG = """\
[discovery]
queue_prefixes = ["retry-"]

[guards]
allow_targets = ["arn:aws:sqs:*:*:*"]
"""


def _startup_ms(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + sys) ms of one command; the CPU stays put on a busy machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)  # noqa: S603
    wall_ms = 1000 * (time.perf_counter() - started)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr!r}")
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall_ms, 1000 * cpu_s


def run_startup_world(args: argparse.Namespace) -> dict[str, Any]:
    """(e) How long a command takes to answer: median wall ms over `--startup-runs`.

    The floor is the interpreter itself (`python -c pass`), what any Python CLI
    starts from. The commands run interleaved, so a busy moment slows all alike.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("RETRYD_")}
    with tempfile.TemporaryDirectory() as scratch_name:
        config = Path(scratch_name) / "retryd.toml"
        config.write_text(STARTUP_CONFIG)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "retryd --version": [sys.executable, "-m", "retryd", "--version"],
            "retryd --help": [sys.executable, "-m", "retryd", "--help"],
            "retryd config check": [
                *(sys.executable, "-m", "retryd", "config", "check"),
                *("--config", str(config)),
            ],
        }
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(args.startup_runs):
            for name, argv in commands.items():
                samples[name].append(_startup_ms(argv, env))
    return {
        "world": "startup",
        "runs": args.startup_runs,
        "figures": {
            name: {
                "median_ms": round(statistics.median(wall for wall, _ in runs), 1),
                "min_ms": round(min(wall for wall, _ in runs), 1),
                "median_cpu_ms": round(statistics.median(cpu for _, cpu in runs), 1),
            }
            for name, runs in samples.items()
        },
    }


def _fed_contenders(world: worlds.SqsWorld, interval_s: float | None) -> dict[str, Contender]:
    """The steady world's contenders: each runs until stopped, not until the DLQs are empty."""

    def floor(endpoint: str, run_dir: Path) -> tuple[list[str], dict[str, str]]:
        path = run_dir / "world.json"
        path.write_text(json.dumps({**world.as_json(), "endpoint": endpoint}))
        return [sys.executable, "-m", "bench.floor", str(path), "--until-stopped"], {}

    def retryd(endpoint: str, run_dir: Path) -> tuple[list[str], dict[str, str]]:
        config = run_dir / "retryd.toml"
        text = world.retryd_config(run_dir / "ledger.sqlite3")
        if interval_s is not None:
            text += f"\n[schedule]\ninterval_s = {interval_s}\n"
        config.write_text(text)
        argv = [sys.executable, "-m", "retryd", "run", "--config", str(config)]
        return argv, {**AWS_ENV, "AWS_ENDPOINT_URL": endpoint}

    return {"floor": floor, "retryd": retryd}


def _progress(world: str, contender: str) -> Callable[[str], None]:
    def say(text: str) -> None:
        print(f"  {world} {contender}: {text}", file=sys.stderr)

    return say


def _run_fed_world(
    args: argparse.Namespace, name: str, feed: steady.Feed, chosen: list[str], share: float | None
) -> dict[str, Any]:
    """Each chosen contender fed at a constant rate in turn, on one world (see bench.steady)."""
    by_name: dict[str, Any] = {}
    with sqs_emulator(args) as emulator, tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        world = worlds.build_sqs_world(emulator.url, args.dlqs, 0)
        contenders = _fed_contenders(world, args.schedule_interval_s)
        for contender in chosen:
            run_dir = scratch / contender
            run_dir.mkdir()
            argv, env = contenders[contender](emulator.url, run_dir)
            throttle = None
            if share is not None:
                throttle = steady.Throttle(share, f"retryd-bench-{os.getpid()}-{contender}")
            by_name[contender] = steady.run_fed(
                world,
                argv,
                {**AWS_ENV, **env},
                feed,
                run_dir / "output.log",
                throttle=throttle,
                on_progress=_progress(name, contender),
            )
            print(f"  {name} {contender}: done", file=sys.stderr)
    if "retryd" in by_name and "floor" in by_name:
        retryd, floor = by_name["retryd"], by_name["floor"]
        if retryd["cpu_ms_per_msg"] and floor["cpu_ms_per_msg"]:
            by_name["ratios"] = {
                "retryd/floor cpu_per_msg": round(
                    retryd["cpu_ms_per_msg"] / floor["cpu_ms_per_msg"], 2
                )
            }
    return {
        "world": name,
        "emulator": args.emulator,
        "dlqs": args.dlqs,
        "rate_per_s": feed.rate_per_s,
        "duration_s": feed.duration_s,
        "warmup_s": feed.warmup_s,
        "cpu_share": share,
        "figures": by_name,
    }


def run_steady_world(args: argparse.Namespace) -> dict[str, Any]:
    """(f) `retryd run` and the floor fed at `--rate` msg/s: sustained rate, latency, CPU."""
    feed = steady.Feed(args.rate, args.duration_s, args.warmup_s, args.tail_s)
    chosen = [c for c in args.steady_contenders.split(",") if c]
    return _run_fed_world(args, "steady", feed, chosen, None)


def run_starved_world(args: argparse.Namespace) -> dict[str, Any]:
    """(g) `retryd run` held to `--cpu-share` of a core, fed at `--starved-rate` msg/s."""
    feed = steady.Feed(args.starved_rate, args.duration_s, args.warmup_s, args.tail_s)
    return _run_fed_world(args, "starved", feed, ["retryd"], args.cpu_share)


def _failures(node: Any, path: str = "") -> list[str]:
    """Every run that lost or duplicated a message or exited non-zero, by where it is."""
    found: list[str] = []
    if isinstance(node, dict):
        check = node.get("check")
        if isinstance(check, dict) and (check.get("lost") or check.get("duplicated")):
            found.append(f"{path}: {check}")
        if node.get("verified") is False and not found:
            found.append(f"{path}: not verified")
        if node.get("exit_code") not in (None, 0):
            found.append(f"{path}: exit code {node['exit_code']}")
        for key, value in node.items():
            if key != "check":
                found.extend(_failures(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(_failures(value, f"{path}[{index}]"))
    return found


def summary_line(result: dict[str, Any]) -> str:
    figures = result["figures"]
    if result["world"] == "sqs":
        parts = []
        for mode, by_name in figures.items():
            named = ", ".join(
                f"{name} {f['msg_per_s']:.0f} msg/s {f['cpu_ms_per_msg']:.2f} ms/msg"
                + (f" (of {f['messages']})" if f["messages"] != result["messages"] else "")
                + (f" {f['calls_per_msg']:.2f} calls/msg" if "calls_per_msg" in f else "")
                + ("" if f["verified"] else " UNVERIFIED")
                for name, f in by_name.items()
                if name != "ratios"
            )
            ratios = ", ".join(f"{k} {v}" for k, v in by_name.get("ratios", {}).items())
            parts.append(f"[{mode}] {named}; {ratios}")
        return f"sqs ({result['messages']} msgs, {result['dlqs']} DLQs): " + " | ".join(parts)
    if result["world"] == "discovery":
        return (
            f"discovery ({result['dlqs']} DLQs, {result['empty']} empty): "
            f"{figures['wall_s']}s, {figures['calls_per_empty_dlq']} calls per empty DLQ"
        )
    if result["world"] == "drain":
        return "drain: " + ", ".join(
            f"{backlog} msgs → {f['msg_per_s']:.0f} msg/s, peak RSS {f['peak_rss_mb']} MB"
            + " (by progress: "
            + " ".join(f"{mark} {mb}" for mark, mb in f["rss_mb_by_progress"].items())
            + ")"
            + ("" if f["check"]["lost"] == 0 and f["check"]["duplicated"] == 0 else " UNVERIFIED")
            for backlog, f in figures.items()
        )
    if result["world"] in ("steady", "starved"):
        return f"{result['world']} ({result['rate_per_s']:g} msg/s offered for " + (
            f"{result['duration_s']:g} s"
            + (f", {result['cpu_share']:g} core" if result["cpu_share"] else "")
            + "): "
            + ", ".join(
                f"{name} {f['sustained_msg_per_s']} msg/s sustained, latency p50 "
                f"{f['latency_p50_ms']} ms p99 {f['latency_p99_ms']} ms, "
                f"{f['cpu_ms_per_msg']} CPU ms/msg" + ("" if f["verified"] else " UNVERIFIED")
                for name, f in figures.items()
                if name != "ratios"
            )
            + "".join(f"; {k} {v}" for k, v in figures.get("ratios", {}).items())
        )
    if result["world"] == "startup":
        return f"startup (median of {result['runs']}): " + ", ".join(
            f"{name} {f['median_ms']:.0f} ms (CPU {f['median_cpu_ms']:.0f} ms)"
            for name, f in figures.items()
        )
    retryd = figures["retryd"]
    return (
        f"{result['world']} ({result['messages']} msgs): {retryd['msg_per_s']:.0f} msg/s, "
        f"{retryd['cpu_ms_per_msg']:.2f} CPU ms/msg, peak RSS {retryd['peak_rss_mb']} MB"
    )


WORLDS = ("sqs", "compute", "discovery", "drain", "startup", "steady", "starved")


def _worlds(text: str) -> list[str]:
    """`--world`: names separated by commas, in the order given; `all` is every world."""
    names = list(WORLDS) if text == "all" else [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in WORLDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown world(s): {', '.join(unknown) or text!r}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--world",
        default="sqs",
        type=_worlds,
        help=f"which worlds to run, comma-separated ({', '.join(WORLDS)}) or all (default: sqs)",
    )
    parser.add_argument("--messages", type=int, default=20_000, help="sqs world: messages")
    parser.add_argument("--dlqs", type=int, default=20, help="sqs and drain worlds: DLQs")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs; medians reported")
    parser.add_argument("--latency-ms", type=float, default=15.0, help="added per AWS call")
    parser.add_argument(
        "--contenders", default="", help="comma-separated subset of the sqs world's contenders"
    )
    parser.add_argument(
        "--naive-messages",
        type=int,
        default=500,
        help="sqs world: messages for the one-at-a-time script (3 round trips each)",
    )
    parser.add_argument("--compute-messages", type=int, default=2_000)
    parser.add_argument("--compute-dlqs", type=int, default=20)
    parser.add_argument("--discovery-dlqs", type=int, default=1_000)
    parser.add_argument("--drain-messages", type=int, default=100_000)
    parser.add_argument(
        "--startup-runs", type=int, default=11, help="startup world: runs of each command"
    )
    parser.add_argument(
        "--rate", type=float, default=1_000, help="steady world: msg/s offered (default 1,000)"
    )
    parser.add_argument(
        "--duration-s", type=float, default=30, help="steady and starved worlds: seconds fed"
    )
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=5,
        help="steady and starved worlds: seconds fed before the figures' window opens",
    )
    parser.add_argument(
        "--tail-s",
        type=float,
        default=120,
        help="steady and starved worlds: most seconds to wait for the DLQs to empty after",
    )
    parser.add_argument(
        "--steady-contenders", default="floor,retryd", help="steady world: floor, retryd or both"
    )
    parser.add_argument(
        "--schedule-interval-s",
        type=float,
        help="steady and starved worlds: retryd's schedule.interval_s (default: retryd's own)",
    )
    parser.add_argument(
        "--starved-rate", type=float, default=400, help="starved world: msg/s offered"
    )
    parser.add_argument(
        "--cpu-share", type=float, default=0.25, help="starved world: share of one core for retryd"
    )
    parser.add_argument(
        "--emulator",
        default="fauxqs",
        choices=["fauxqs", "moto"],
        help="SQS emulator for the sqs, discovery and drain worlds (moto slows with depth)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sqs world: run each contender under a profiler, one file per run in DIR "
        "(read with python -m bench.profile; the figures of such runs are the profiler's)",
    )
    parser.add_argument(
        "--profiler",
        default="py-spy",
        choices=["py-spy", "cprofile"],
        help="with --profile: py-spy samples every thread (a dev dependency); cprofile "
        "counts every call of the main thread",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON document here")
    return parser.parse_args(argv)


def compile_contenders() -> None:
    """Write the bytecode of retryd and bench/, as an installed package ships it.

    pip compiles a wheel's modules when it installs them (the Docker image's retryd
    starts from .pyc files), but an editable install under PYTHONDONTWRITEBYTECODE
    (a development shell, CI) never writes any: every `retryd once` then compiled
    retryd's 21,000 lines again, about 0.17 s of CPU a run (at 10,000 messages,
    0.017 ms a message) that no deployment pays. Whichever retryd the contenders
    import (a copy on PYTHONPATH included) is compiled; up-to-date files are skipped.
    """
    for name in ("retryd", "bench"):
        spec = importlib.util.find_spec(name)
        for directory in (spec.submodule_search_locations or []) if spec else []:
            compileall.compile_dir(directory, quiet=1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    compile_contenders()
    # The harness's own clients (building and checking worlds) talk to the emulator too.
    for key, value in AWS_ENV.items():
        os.environ.setdefault(key, value)
    runners = {
        "sqs": run_sqs_world,
        "compute": run_compute_world,
        "discovery": run_discovery_world,
        "drain": run_drain_world,
        "startup": run_startup_world,
        "steady": run_steady_world,
        "starved": run_starved_world,
    }
    results = [runners[name](args) for name in args.world]
    document = {
        "machine": {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]},
        "results": results,
    }
    text = json.dumps(document, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    for result in results:
        print(summary_line(result))
    failed = list(_failures(results))
    for failure in failed:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
