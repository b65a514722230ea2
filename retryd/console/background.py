"""Redrive jobs the console started, running beside its requests until they end.

A request that starts a job answers once the job is saved as running (its page then
shows it); the job goes on in a task of the console's own. At the console's stop the
tasks are cancelled, and each job saves itself as stopped on its way out (as a
signal stops `retryd redrive`), so the resume button, or `retryd redrive --resume`,
goes on with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from retryd.control.jobs import RedriveJob

log = structlog.get_logger("retryd.console")

# What a started run is handed: call it with the job once it is saved as running.
OnStarted = Callable[[RedriveJob], None]


class BackgroundJobs:
    """The console's running jobs: started from a request, ended by their own course or a stop."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def start(self, run: Callable[[OnStarted], Awaitable[object]]) -> RedriveJob | None:
        """Run `run` in the background; the job once started, or None if it ended without one.

        An error before the job started is the request's (raised here); one after is
        the job's, logged, and stored with the job by the engine.
        """
        loop = asyncio.get_running_loop()
        started: asyncio.Future[RedriveJob | None] = loop.create_future()

        def on_started(job: RedriveJob) -> None:
            if not started.done():
                started.set_result(job)

        async def body() -> None:
            try:
                await run(on_started)
            except Exception as exc:
                if not started.done():
                    started.set_exception(exc)
                    return
                log.exception("console-job-failed")
            if not started.done():
                started.set_result(None)

        task = asyncio.create_task(body())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await started

    async def close(self) -> None:
        """Stop every running job (each saves itself as stopped) and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
