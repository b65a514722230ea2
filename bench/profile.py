"""`python -m bench.profile FILE... [--messages N] [--top N]`: where a profiled run's CPU went.

`python -m bench --profile DIR` runs each contender of the sqs world under a profiler
and writes one file per run into DIR:

- py-spy (the default; `pip install py-spy`): samples every thread's stack 200 times a
  second (waiting threads left out) into `NAME.txt`; the shares it gives are the
  steadier ones, the SQLite ledger's worker thread included.
- cProfile (`--profiler cprofile`): every call of the main thread, timed in its CPU
  time, into `NAME.prof`; it makes each Python call dearer, so its shares lean towards
  code made of many small calls, but its call counts say what is repeated per message.

This prints, for the files given, the time by where the code lives (botocore, asyncio,
retryd...) side by side (retryd's beside the floor's), in µs per message with
`--messages`, then each file's top functions by own and by cumulative time. Time in
the standard library (email headers, urllib, dataclasses...) counts in the group of
the code that called it: botocore's headers are botocore's cost. A profiled run's
own figures (msg/s, CPU) are the profiler's, not the contender's.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import runpy
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

# Where a function's file lives -> the group its time is counted in; the first match wins.
GROUPS = (
    ("/retryd/", "retryd"),
    ("/aiobotocore/", "botocore and aiobotocore"),
    ("/botocore/", "botocore and aiobotocore"),
    ("/boto3/", "botocore and aiobotocore"),
    ("/aioboto3/", "botocore and aiobotocore"),
    ("/aiohttp/", "aiohttp"),
    ("/yarl/", "aiohttp"),
    ("/multidict/", "aiohttp"),
    ("/anyio/", "anyio"),
    ("/asyncio/", "asyncio"),
    ("/selectors.py", "asyncio"),
    ("/structlog/", "structlog"),
    ("/prometheus_client/", "prometheus_client"),
    ("/pydantic", "pydantic and settings"),
    ("/json/", "json"),
    ("/sqlite3/", "sqlite3"),
    ("/threading.py", "threads (hand-offs)"),
    ("/concurrent/", "threads (hand-offs)"),
    ("importlib", "imports"),
    ("<frozen", "imports"),
    ("/bench/", "bench harness"),
    # The rest of the standard library counts in its callers' groups (see above).
    ("/lib/python3", ""),
)
WAITING = "waiting (epoll)"
STDLIB = "standard library"
# Innermost Python frames of a thread that waits (py-spy may catch one as it goes to sleep).
WAITING_FRAMES = ("Condition.wait", "EpollSelector.select", "Event.wait")


def group_of(filename: str, name: str = "") -> str:
    """The group of a function's file (see GROUPS); "" when its callers' group counts."""
    if filename == "~":
        # A cProfile built-in: its callers' group, but for the wait and the sockets.
        if "select.epoll" in name:
            return WAITING
        if "_socket.socket" in name:
            return "sockets (send, recv)"
        return ""
    for marker, group in GROUPS:
        if marker in filename:
            return group
    return "other"


class Profile:
    """A profile, read from py-spy's raw stacks (.txt) or cProfile's stats (.prof)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.groups: dict[str, float] = defaultdict(float)
        # Function -> (own, cumulative) in seconds (cProfile) or samples (py-spy).
        self.own: dict[str, float] = defaultdict(float)
        self.cumulative: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = {}
        if path.suffix == ".prof":
            self._read_cprofile()
            self.per_s = 1.0
        else:
            self._read_py_spy()
            self.per_s = float(SAMPLES_PER_S)
        self.groups.pop(WAITING, None)

    @property
    def busy(self) -> float:
        return sum(self.groups.values())

    def _read_py_spy(self) -> None:
        for line in self.path.read_text(encoding="utf-8").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            # Outermost first; each frame is "function (file:line)".
            frames = [_frame(text) for text in stack.split(";")]
            leaf = frames[-1]
            if leaf[0].startswith(WAITING_FRAMES):
                continue
            self.own[leaf[0]] += count
            for function in {label for label, _ in frames}:
                self.cumulative[function] += count
            group = next((g for _, file in reversed(frames) if (g := group_of(file))), STDLIB)
            self.groups[group] += count

    def _read_cprofile(self) -> None:
        stats: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
        stats = pstats.Stats(str(self.path)).stats  # type: ignore[attr-defined]  # untyped
        for (filename, line, name), (_, calls, own_s, cumulative_s, callers) in stats.items():
            label = name if filename == "~" else f"{name} ({_short(filename)}:{line})"
            self.own[label] += own_s
            self.cumulative[label] += cumulative_s
            self.calls[label] = self.calls.get(label, 0) + calls
            group = group_of(filename, name)
            if group:
                self.groups[group] += own_s
                continue
            # Each caller's share of this function's own time is the third figure.
            for (caller_file, _, caller_name), figures in callers.items():
                self.groups[group_of(caller_file, caller_name) or STDLIB] += figures[2]


# py-spy's rate in `python -m bench --profile`: samples per second of each busy thread.
SAMPLES_PER_S = 200


def _frame(text: str) -> tuple[str, str]:
    """("function (short file:line)", full file) of one py-spy frame."""
    name, _, where = text.partition(" (")
    filename = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({_short(where.rstrip(')'))})", filename


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", "/lib/python3.12/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    if "/retryd/" in filename:
        return "retryd/" + filename.rsplit("/retryd/", 1)[1]
    return filename


def groups_table(profiles: list[Profile], messages: int | None) -> list[str]:
    """Time by group for each profile, side by side: µs per message, or shares."""
    first = profiles[0].groups
    names = sorted({name for p in profiles for name in p.groups}, key=lambda n: -first.get(n, 0))
    unit = "µs per message" if messages else "share of the busy time"
    lines = [f"time by where the code lives ({unit}): " + " | ".join(p.path.name for p in profiles)]
    for name in [*names, "all"]:
        cells = []
        for profile in profiles:
            amount = profile.busy if name == "all" else profile.groups.get(name, 0.0)
            if messages:
                cells.append(f"{1e6 * amount / profile.per_s / messages:8.1f}")
            else:
                cells.append(f"{100 * amount / profile.busy:7.1f}%")
        lines.append("  " + " ".join(cells) + f"  {name}")
    return lines


def report(profile: Profile, count: int) -> list[str]:
    """The `count` functions with the most own, then cumulative time, as shares of the busy."""
    lines = []
    for title, column in (("own", profile.own), ("cumulative", profile.cumulative)):
        lines.append(f"{profile.path.name}: top {count} by {title} time (share of the busy time)")
        for label, amount in sorted(column.items(), key=lambda item: -item[1])[: count + 1]:
            if "select.epoll" in label:
                continue
            calls = f" {profile.calls[label]:>9} calls" if profile.calls else ""
            lines.append(f"  {100 * amount / profile.busy:6.1f}%{calls}  {label}")
    return lines


def record(out: Path, module: str, args: list[str]) -> int:
    """Run `python -m module args` under cProfile, timed in the main thread's CPU time.

    CPU time, not the wall clock that `python -m cProfile` uses: on a busy machine a
    function's wall time includes the moments its process waited for a core.
    """
    profiler = cProfile.Profile(time.thread_time)
    saved_argv, sys.argv = sys.argv, [module, *args]
    code = 0
    profiler.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        profiler.disable()
        sys.argv = saved_argv
        profiler.dump_stats(str(out))
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--record"]:
        # `--record OUT -m MODULE ARGS...`: what `python -m bench --profiler cprofile` runs.
        if len(argv) < len(["--record", "OUT", "-m", "MODULE"]) or argv[2] != "-m":
            raise SystemExit("usage: python -m bench.profile --record OUT -m MODULE [ARGS...]")
        return record(Path(argv[1]), argv[3], argv[4:])
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path, help="py-spy .txt or cProfile .prof files")
    parser.add_argument("--top", type=int, default=30, help="functions listed in each table")
    parser.add_argument(
        "--messages", type=int, help="messages each run moved: times in µs per message"
    )
    args = parser.parse_args(argv)
    profiles = [Profile(path) for path in args.files]
    lines = groups_table(profiles, args.messages)
    for profile in profiles:
        lines += report(profile, args.top)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
