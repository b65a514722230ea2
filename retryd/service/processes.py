"""`drain.processes = N`: N worker processes share the DLQs, under one parent.

A replica is one Python process and so one core. With N workers, each drains
only the DLQs whose ARN falls to it (retryd/drain/shard.py): a fixed split that
needs no coordination, and no DLQ is ever drained by two workers. They share
the ledger as replicas do (SQLite: one file in WAL mode, each transaction under
the file's write lock, a busy timeout for the turns; DynamoDB: conditional
writes); the memory ledger is one process's own, so settings refuse it.

The parent does no draining. For `retryd run` it serves /metrics, /healthz and
/readyz for all the workers (prometheus-client's multiprocess mode, in a
directory the parent creates and removes), talks to systemd, and passes each
SIGTERM/SIGINT on to every worker, so the two-phase stop (settle, then cancel)
reaches them all; the workers sit in their own process group, so a Ctrl-C at a
terminal reaches them only through the parent, and only once. For `retryd once`
it runs one cycle in each worker and sums their reports.

A worker that dies (a crash, the OOM killer) is not restarted: the parent stops
the others and exits 1, naming it. Restarting it in place would hide a crash
loop behind a process that looks healthy; retryd's supervisor (systemd's
Restart=, an orchestrator) already restarts the whole with back-off and
shows the failure, and nothing is lost either way: a message is deleted only
once its copy is safe, and the batches a dead worker held reappear after their
lease. A worker that stops on a retryd error (a configuration error found in the
worker: exit code 2; AWS unusable: 5) sends the parent its one-line message, and
the parent prints that line and exits with that code, as one process would. A
worker that cannot be started has the parent stop the ones already started, as
any stop does (SIGTERM, a wait, then SIGKILL), rather than leave them to the
parent-death signal.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.process import BaseProcess
from typing import Any

import anyio
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from retryd.drain.cycle import CycleReport
from retryd.drain.shard import Shard
from retryd.errors import ConfigError, ExitCode, RetrydError
from retryd.logs import configure_logging
from retryd.metrics import MULTIPROCESS_DIR_ENV, register_build_info
from retryd.resolve.hooks import Hooks
from retryd.service.health import Health
from retryd.service.http import start_http
from retryd.service.lifecycle import run_daemon, run_once
from retryd.service.systemd import SystemdNotifier
from retryd.settings import Settings

log = structlog.get_logger("retryd.processes")

# How often the parent looks at its workers (exits, health) while they run.
WATCH_INTERVAL_S = 0.2
# After the workers' own drain timeout, how long the parent waits before killing one.
REAP_GRACE_S = 10.0
# A worker's cells in shared memory: when it last ticked (CLOCK_MONOTONIC, the same
# clock in every process on Linux) and whether it is ready (1.0).
_TICK, _READY = 0, 1
# prctl(2): the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1


class WorkerFailedError(RetrydError):
    """A worker process died or could not do its part; the parent stops the others."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.CYCLE_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class _Failure:
    """Why one worker stopped: its one line, and the exit code it stands for."""

    worker: str
    error: str
    exit_code: ExitCode = ExitCode.CYCLE_FAILED


def _failed(failures: list[_Failure]) -> WorkerFailedError:
    """One error for the parent to exit with, from every worker that failed.

    The code is the first documented one other than 1: a worker that found the
    configuration bad (2) or AWS unusable (5) says why the run stopped, while the
    others' exits are only its consequence. The same error from several workers is
    said once, naming them all.
    """
    by_error: dict[str, list[_Failure]] = {}
    for failure in failures:
        by_error.setdefault(failure.error, []).append(failure)
    line = "; ".join(
        f"{', '.join(failure.worker for failure in same)}: {error}"
        for error, same in by_error.items()
    )
    code = next(
        (f.exit_code for f in failures if f.exit_code != ExitCode.CYCLE_FAILED),
        ExitCode.CYCLE_FAILED,
    )
    return WorkerFailedError(line, code)


def _documented(exc: BaseException) -> RetrydError | None:
    """The retryd error a worker stopped on, also inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _documented(inner)
            if found is not None:
                return found
        return None
    return exc if isinstance(exc, RetrydError) else None


@dataclass
class _ReportingHealth(Health):
    """A worker's probes, copied into shared memory for the parent, which serves them."""

    cells: Any = None

    def tick(self) -> None:
        super().tick()
        self.cells[_TICK] = self.clock()

    def mark_ready(self) -> None:
        super().mark_ready()
        self.cells[_READY] = 1.0


@dataclass
class _WorkersHealth(Health):
    """The parent's probes: alive while every worker ticks, ready once every one is."""

    cells: list[Any] = field(default_factory=list)

    @property
    def since_tick_s(self) -> float:
        now = self.clock()
        return max(now - (cell[_TICK] or self._started_at) for cell in self.cells)

    @property
    def ready(self) -> bool:
        return all(cell[_READY] for cell in self.cells)


@dataclass
class _Worker:
    shard: Shard
    process: BaseProcess
    cells: Any
    results: multiprocessing.connection.Connection | None = None
    reaped: bool = False

    @property
    def name(self) -> str:
        return f"drain worker {self.shard.index + 1} of {self.shard.count} (pid {self.process.pid})"


def worker_settings(settings: Settings) -> Settings:
    """A worker's settings: no listener of its own, the parent serves one for all."""
    return settings.model_copy(update={"http": settings.http.model_copy(update={"enabled": False})})


def _die_with_parent(parent_pid: int) -> None:
    """SIGTERM this worker if the parent dies (killed outright, it passes nothing on)."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    # The parent may have gone before the request above was made.
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def _enter_worker(shard: Shard, log_level: str, log_format: str, parent_pid: int) -> None:
    # Signals come from the parent alone: a Ctrl-C at a terminal reaches the whole
    # foreground process group, and a worker must not take it as a second signal
    # on top of the one the parent passes on.
    os.setpgrp()
    _die_with_parent(parent_pid)
    # The parent speaks to systemd for all of them.
    os.environ.pop("NOTIFY_SOCKET", None)
    configure_logging(log_level, log_format)  # type: ignore[arg-type]
    structlog.contextvars.bind_contextvars(worker=shard.index + 1)


def _once_worker(
    settings: Settings,
    shard: Shard,
    logging_and_parent: tuple[str, str, int],
    results: multiprocessing.connection.Connection,
) -> None:
    """A worker of `retryd once`: one cycle over its DLQs, its report sent to the parent."""
    _enter_worker(shard, *logging_and_parent)
    try:
        report = anyio.run(partial(run_once, settings, shard=shard, settle_heap=True))
    except BaseException as exc:
        error = _documented(exc)
        if error is None:
            # A crash: its traceback is printed and the parent reads end-of-file.
            raise
        results.send({"report": None, "error": str(error), "exit_code": int(error.exit_code)})
        return
    fatal = report.fatal
    results.send(
        {
            "report": report.to_json(),
            "discovered": report.discovered,
            "error": str(fatal) if fatal else None,
            "exit_code": int(fatal.exit_code) if fatal else None,
        }
    )


def _run_worker(
    settings: Settings,
    shard: Shard,
    logging_and_parent: tuple[str, str, int],
    cells: Any,
    results: multiprocessing.connection.Connection,
) -> None:
    """A worker of `retryd run`: the daemon over its DLQs until the parent passes a signal on.

    Stopped by a retryd error (a configuration error found here, AWS unusable), it
    sends the parent the error's line and exits with the error's code, without a
    traceback; the parent exits with that code. Anything else is a crash: exit 1.
    """
    _enter_worker(shard, *logging_and_parent)
    health = _ReportingHealth.for_settings(settings)
    health.cells = cells
    try:
        anyio.run(partial(run_daemon, settings, shard=shard, health=health, settle_heap=True))
    except BaseException as exc:
        error = _documented(exc)
        if error is None:
            raise
        results.send({"error": str(error), "exit_code": int(error.exit_code)})
        # multiprocessing turns SystemExit(code) into the process's exit code, quietly.
        raise SystemExit(int(error.exit_code)) from None


@contextmanager
def _metrics_dir() -> Iterator[str]:
    """A fresh directory for the workers' metric files, removed when the parent is done.

    Set in the environment only while the workers start: each reads it as it
    imports prometheus-client; the parent's own metrics stay in memory.
    """
    with tempfile.TemporaryDirectory(prefix="retryd-metrics-") as path:
        yield path


def _start(
    kind: str, settings: Settings, log_level: str, log_format: str, metrics_dir: str | None
) -> list[_Worker]:
    """Every worker started, or none left running: WorkerFailedError if one cannot start."""
    context = multiprocessing.get_context("spawn")
    count = settings.drain.processes
    settings = worker_settings(settings)
    workers: list[_Worker] = []
    passed_on = (log_level, log_format, os.getpid())
    before = os.environ.get(MULTIPROCESS_DIR_ENV)
    if metrics_dir is not None:
        os.environ[MULTIPROCESS_DIR_ENV] = metrics_dir
    try:
        for index in range(count):
            shard = Shard(index, count)
            try:
                workers.append(_spawn(context, kind, settings, shard, passed_on))
            except BaseException as exc:
                _abandon_start(workers, settings, shard, exc)
                raise
    finally:
        if metrics_dir is not None:
            if before is None:
                os.environ.pop(MULTIPROCESS_DIR_ENV, None)
            else:
                os.environ[MULTIPROCESS_DIR_ENV] = before
    log.info("workers-started", processes=count, pids=[w.process.pid for w in workers])
    return workers


def _spawn(
    context: Any, kind: str, settings: Settings, shard: Shard, passed_on: tuple[str, str, int]
) -> _Worker:
    cells = context.RawArray("d", 2)
    results, sender = context.Pipe(duplex=False)
    try:
        if kind == "once":
            args: tuple[Any, ...] = (settings, shard, passed_on, sender)
            process = context.Process(target=_once_worker, args=args, daemon=False)
        else:
            args = (settings, shard, passed_on, cells, sender)
            process = context.Process(target=_run_worker, args=args, daemon=False)
        process.start()
    except BaseException:
        results.close()
        raise
    finally:
        # The parent's copy closed, so a worker that dies reads as end-of-file.
        sender.close()
    return _Worker(shard, process, cells, results)


def _abandon_start(
    started: list[_Worker], settings: Settings, shard: Shard, exc: BaseException
) -> None:
    """Worker `shard` could not start: stop the ones that did, then say why (raised by caller).

    Left alone they would run on until the parent's exit fires their parent-death
    signal, with nobody passing the two-phase stop on; stopped here they settle
    what they hold, as at any stop.
    """
    name = f"drain worker {shard.index + 1} of {shard.count}"
    log.error(
        "worker-start-failed",
        worker=name,
        error=f"{type(exc).__name__}: {exc}",
        pids=[worker.process.pid for worker in started],
        why="the workers already started are stopped; retryd exits",
    )
    _reap(started, settings.shutdown.drain_timeout_s + REAP_GRACE_S)
    if isinstance(exc, Exception):
        raise WorkerFailedError(f"could not start {name}: {type(exc).__name__}: {exc}") from exc


def _signal_all(workers: list[_Worker], signum: int) -> None:
    for worker in workers:
        pid = worker.process.pid
        if pid is not None and worker.process.exitcode is None:
            # Gone since the check: nothing left to tell.
            with suppress(ProcessLookupError):
                os.kill(pid, signum)


def _reap(workers: list[_Worker], wait_s: float) -> None:
    """Every worker gone before the parent is: asked, then waited for, then killed."""
    _signal_all(workers, signal.SIGTERM)
    for worker in workers:
        worker.process.join(wait_s)
        if worker.process.exitcode is None:
            log.error("worker-killed", worker=worker.name, why="it did not stop in time")
            worker.process.kill()
            worker.process.join()


def run_once_in_workers(settings: Settings, log_level: str, log_format: str) -> CycleReport:
    """`retryd once` with drain.processes > 1: one cycle in each worker, reports summed."""
    # A hook that cannot be loaded is one configuration error, said once, by the parent.
    Hooks.from_settings(settings)
    workers = _start("once", settings, log_level, log_format, None)
    previous: dict[int, Any] = {
        signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)
    }

    def forward(signum: int, frame: Any) -> None:
        _signal_all(workers, signum)
        handler = previous[signum]
        if callable(handler):
            handler(signum, frame)
        else:
            raise SystemExit(128 + signum)

    for signum in previous:
        signal.signal(signum, forward)
    try:
        return _collect(workers)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _reap(workers, settings.shutdown.drain_timeout_s + REAP_GRACE_S)


def _collect(workers: list[_Worker]) -> CycleReport:
    """Every worker's report summed. An error several workers met is one line naming them
    all (as `run` says a failure), not one `error:` line per worker."""
    total = CycleReport()
    total.discovered = True
    # Each error line, with the workers that said it.
    said: dict[str, set[int]] = {}
    waiting = {worker.results: worker for worker in workers if worker.results is not None}
    while waiting:
        for ready in multiprocessing.connection.wait(list(waiting)):
            assert isinstance(ready, multiprocessing.connection.Connection)
            worker = waiting.pop(ready)
            index = worker.shard.index
            try:
                answer: dict[str, Any] = ready.recv()
            except EOFError:
                worker.process.join()
                problem = f"exited with code {worker.process.exitcode} before reporting"
                said.setdefault(problem, set()).add(index)
                total.fatal = total.fatal or WorkerFailedError(f"{worker.name} {problem}")
                continue
            if answer["report"] is not None:
                report = CycleReport.from_json(answer["report"], discovered=answer["discovered"])
                for error in report.errors:
                    said.setdefault(error, set()).add(index)
                report.errors = []
                total.merge(report)
            else:
                total.discovered = False
                said.setdefault(answer["error"], set()).add(index)
            if answer["exit_code"] is not None and _outranks(answer["exit_code"], total.fatal):
                total.fatal = WorkerFailedError(answer["error"], ExitCode(answer["exit_code"]))
    names = {worker.shard.index: worker.name for worker in workers}
    total.errors = [
        f"{', '.join(names[index] for index in sorted(indexes))}: {error}"
        for error, indexes in said.items()
    ]
    return total


def _outranks(exit_code: int, fatal: RetrydError | None) -> bool:
    """Whether a worker's error says more than the one kept: the first, or the first not 1."""
    return fatal is None or (
        fatal.exit_code == ExitCode.CYCLE_FAILED and exit_code != ExitCode.CYCLE_FAILED
    )


async def run_daemon_in_workers(settings: Settings, log_level: str, log_format: str) -> None:
    """`retryd run` with drain.processes > 1; returns normally after a clean stop."""
    Hooks.from_settings(settings)
    with _metrics_dir() as metrics_dir:
        workers = _start("run", settings, log_level, log_format, metrics_dir)
        try:
            await _supervise(settings, workers, metrics_dir)
        finally:
            await anyio.to_thread.run_sync(
                _reap, workers, settings.shutdown.drain_timeout_s + REAP_GRACE_S
            )


async def _supervise(settings: Settings, workers: list[_Worker], metrics_dir: str) -> None:
    # A registry made for the parent: the workers' files summed, plus the build info
    # (the multiprocess mode drops info metrics).
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
    register_build_info(registry)
    health = _WorkersHealth.for_settings(settings)
    health.cells = [worker.cells for worker in workers]
    notifier = SystemdNotifier.from_environ()
    stopping = anyio.Event()
    failures: list[_Failure] = []
    async with anyio.create_task_group() as group:
        group.start_soon(_pass_signals_on, workers, stopping, notifier)
        if settings.http.enabled:
            try:
                port = await start_http(group, settings.http, registry, health)
            except ConfigError:
                _signal_all(workers, signal.SIGTERM)
                raise
            log.info("http-listening", host=settings.http.host, port=port)
        await _watch(
            workers,
            stopping,
            health=health,
            notifier=notifier,
            metrics_dir=metrics_dir,
            failures=failures,
        )
        group.cancel_scope.cancel()
    if failures:
        raise _failed(failures)
    log.info("stopped")


async def _pass_signals_on(
    workers: list[_Worker], stopping: anyio.Event, notifier: SystemdNotifier
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not stopping.is_set():
                stopping.set()
                notifier.stopping()
                log.info("stopping", signal=name, workers=len(workers))
            else:
                log.warning("stopping-now", signal=name, workers=len(workers))
            # The same signal, each time: the workers count them as a single process would.
            _signal_all(workers, signal.SIGTERM)


async def _watch(
    workers: list[_Worker],
    stopping: anyio.Event,
    *,
    health: _WorkersHealth,
    notifier: SystemdNotifier,
    metrics_dir: str,
    failures: list[_Failure],
) -> None:
    """Until every worker has exited: probes and watchdog kept, a dead worker stops the rest."""
    said_ready = False
    while True:
        if not said_ready and health.ready:
            notifier.ready()
            said_ready = True
            log.info("started", processes=len(workers))
        if health.alive:
            notifier.watchdog()
        for worker in workers:
            code = worker.process.exitcode
            if code is None or worker.reaped:
                continue
            worker.reaped = True
            # Its live gauges leave the sum with it.
            mark_process_dead(worker.process.pid, metrics_dir)  # type: ignore[no-untyped-call]
            if code != 0 or not stopping.is_set():
                failure = _why_stopped(worker, code)
                failures.append(failure)
                if not stopping.is_set():
                    log.error(
                        "worker-died",
                        worker=worker.name,
                        exit_code=code,
                        error=failure.error,
                        why="a worker is not restarted; the others are stopped and retryd "
                        f"exits {int(failure.exit_code)} for its supervisor to restart it whole",
                    )
                    stopping.set()
                    notifier.stopping()
                    _signal_all(workers, signal.SIGTERM)
        if all(worker.reaped for worker in workers):
            return
        await anyio.sleep(WATCH_INTERVAL_S)


def _why_stopped(worker: _Worker, code: int) -> _Failure:
    """What a worker that exited `code` sent before it did; a crash sent nothing."""
    results = worker.results
    if results is not None:
        with suppress(EOFError, OSError):
            if results.poll():
                said: dict[str, Any] = results.recv()
                return _Failure(worker.name, said["error"], ExitCode(said["exit_code"]))
    return _Failure(worker.name, f"exited with code {code}")
