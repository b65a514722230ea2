"""One process runs a job at a time: a resume never takes over a runner that is alive."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from retryd.control.jobs import (
    JOB_STALE_S,
    JobBusyError,
    JobState,
    JobStore,
    JobTakenOverError,
    RedriveJob,
    busy_runner,
    gone_here,
    new_job_id,
)
from retryd.control.memory import MemoryControlStore
from retryd.errors import ExitCode

TTL_S = 86_400.0


def a_job() -> RedriveJob:
    return RedriveJob(new_job_id(), "dlq", {"sources": ["q"]}, "tester")


@given(
    state=st.sampled_from(list(JobState)),
    holder=st.sampled_from(["", "host:1:a", "host:2:b"]),
    heard_s=st.floats(min_value=-5, max_value=3 * JOB_STALE_S),
)
def test_a_runner_is_busy_only_while_another_live_runner_has_a_running_job(
    state: JobState, holder: str, heard_s: float
) -> None:
    """busy_runner says no exactly when the job is RUNNING under another runner heard lately."""
    stored = {"id": "rd-1", "state": state.value, "runner": holder, "updated_at_s": 1000.0}
    now_s = 1000.0 + heard_s
    why = busy_runner(stored, "host:1:a", now_s)
    silent_s = now_s - 1000.0
    expected = state is JobState.RUNNING and holder != "host:1:a" and silent_s < JOB_STALE_S
    assert (why is not None) == expected
    if why is not None:
        assert "rd-1" in why
        assert "retryd jobs cancel" in why


def test_a_second_runner_is_refused_while_the_first_is_alive_and_takes_over_once_silent() -> None:
    """Two resumes of one running job: the second gets JobBusyError (exit 2) until the first
    has been silent JOB_STALE_S; then it takes the job, and the first can no longer write."""
    store = MemoryControlStore()
    jobs = JobStore(store, TTL_S)
    first, second = a_job(), None

    async def main() -> None:
        nonlocal second
        await jobs.take(first, "host-a:1:aa", now_s=1000.0)
        second = await jobs.load(first.id)
        with pytest.raises(JobBusyError) as busy:
            await jobs.take(second, "host-b:2:bb", now_s=1000.0 + JOB_STALE_S - 1)
        assert busy.value.exit_code is ExitCode.CONFIG
        assert "host-a:1" in str(busy.value)
        await jobs.take(second, "host-b:2:bb", now_s=1000.0 + JOB_STALE_S)
        assert (await jobs.load(first.id)).runner == "host-b:2:bb"
        # The first runner, back from its pause, is fenced off everywhere it writes.
        assert await jobs.touch(first) is False
        with pytest.raises(JobTakenOverError):
            await jobs.load_as_runner(first)
        first.step = 99
        with pytest.raises(JobTakenOverError):
            await jobs.save(first)
        assert (await jobs.load(first.id)).step == 0

    anyio.run(main)


def test_a_stopped_job_is_taken_at_once_and_a_runner_may_retake_its_own() -> None:
    """A job stopped (Ctrl-C, canary stop) is resumed at once; a runner re-taking its own job
    (the same token) is never refused."""
    store = MemoryControlStore()
    jobs = JobStore(store, TTL_S)
    job = a_job()

    async def main() -> None:
        await jobs.take(job, "host-a:1:aa", now_s=1000.0)
        await jobs.take(job, "host-a:1:aa", now_s=1001.0)
        job.state = JobState.STOPPED
        await jobs.save(job)
        other = await jobs.load(job.id)
        await jobs.take(other, "host-b:2:bb")
        stored = await jobs.load(job.id)
        assert (stored.state, stored.runner) == (JobState.RUNNING, "host-b:2:bb")

    anyio.run(main)


def test_a_cancelled_job_stays_cancelled_when_taken() -> None:
    """Taking a job cancelled meanwhile keeps the cancel: the run stops at its first step."""
    store = MemoryControlStore()
    jobs = JobStore(store, TTL_S)
    job = a_job()

    async def main() -> None:
        await jobs.take(job, "host-a:1:aa", now_s=1000.0)
        job.state = JobState.CANCELLED
        await jobs.save(job)
        again = await jobs.load(job.id)
        await jobs.take(again, "host-a:1:aa")
        assert again.state is JobState.CANCELLED
        assert (await jobs.load(job.id)).state is JobState.CANCELLED

    anyio.run(main)


def test_touch_moves_the_runners_last_heard_time() -> None:
    """A live runner's touch is what keeps a resume elsewhere from taking the job over."""
    store = MemoryControlStore()
    jobs = JobStore(store, TTL_S)
    job = a_job()

    async def main() -> None:
        await jobs.take(job, "host-a:1:aa", now_s=1000.0)
        assert await jobs.touch(job) is True
        assert (await jobs.load(job.id)).updated_at_s > 1000.0

    anyio.run(main)


def test_a_runner_that_died_on_this_host_is_taken_over_at_once() -> None:
    """A job whose runner was a process here that no longer exists is resumed at once; a live
    process here, or one on another host, is waited out."""
    store = MemoryControlStore()
    jobs = JobStore(store, TTL_S)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = socket.gethostname()

    async def resumed(holder: str) -> bool:
        job = a_job()
        await jobs.take(job, holder)
        try:
            await jobs.take(await jobs.load(job.id), "other:1:x")
        except JobBusyError:
            return False
        return True

    async def main() -> None:
        assert await resumed(f"{here}:{dead.pid}:gone") is True
        assert await resumed(f"{here}:{os.getpid()}:live") is False
        assert await resumed(f"elsewhere-host:{dead.pid}:gone") is False

    anyio.run(main)
    assert gone_here("") is False
