"""Redrive jobs in the backend: what was asked, how far it got, and what happened to each message.

A job is three kinds of document:
- `job/<id>`: its spec (sources, selector, redirect, ramp), state, ramp position,
  counts, the latest failures, and how many result chunks it has written;
- `job/<id>/results/<n>`: the per-message results of one step, written before the
  job document moves on, so that a resumed job knows every message it settled;
- `jobs`: the index `retryd jobs` lists (the latest JOBS_KEEP jobs).
All expire with the ledger's TTL.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from retryd.control.store import Body, ControlError, ControlStore, read_body, update
from retryd.errors import ExitCode, RetrydError
from retryd.models import Outcome

JOBS_DOC = "jobs"
# Outcomes after which a message is done with: resubmitted, or parked again.
FINAL_OK = frozenset({Outcome.RESUBMITTED, Outcome.PARKED})
JOBS_KEEP = 100
FAILURES_KEEP = 200
DETAIL_MAX_CHARS = 300
CANCELLED_REASON = "cancelled by `retryd jobs cancel`"
# A running job is stored as RUNNING with the token of the process running it (its
# runner), and that process touches it every JOB_HEARTBEAT_S. A crash leaves it
# RUNNING, so a resume must be able to take it over -- but only once its runner has
# been silent for JOB_STALE_S: two processes running one job would share its ledger
# owner (a claim begun before a crash is the job's to finish), so the ledger could
# not keep them from sending a message twice.
JOB_HEARTBEAT_S = 10.0
JOB_STALE_S = 45.0


class JobBusyError(RetrydError):
    """The job is running in another process that is still alive: it is not taken over."""

    # Refused before anything was sent, as an invalid command line is.
    exit_code = ExitCode.CONFIG


class JobTakenOverError(RetrydError):
    """Another process took this job over (this one was silent too long): it stops at once,
    writing nothing more."""

    exit_code = ExitCode.CYCLE_FAILED


def new_runner() -> str:
    """A token naming this process's run of a job (host and pid, for the person reading it)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobState(StrEnum):
    RUNNING = "running"
    # Stopped by its canary judgement, a Ctrl-C or a crash: `--resume` goes on.
    STOPPED = "stopped"
    DONE = "done"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class MessageResult:
    """What a job did with one message: a view of its Decision (settle.outcome), as stored.

    The storage keys (`m`, `o`, ...) stay in this module: readers get typed values.
    """

    message_id: str
    outcome: Outcome
    reason: str = ""
    target: str = ""
    key: str = ""
    detail: str = ""

    def to_json(self) -> Body:
        return {
            "m": self.message_id,
            "o": self.outcome.value,
            "r": self.reason,
            "t": self.target,
            "k": self.key,
            "d": self.detail[:DETAIL_MAX_CHARS],
        }

    @classmethod
    def from_json(cls, raw: Body) -> MessageResult:
        return cls(
            raw["m"],
            Outcome(raw["o"]),
            raw.get("r", ""),
            raw.get("t", ""),
            raw.get("k", ""),
            raw.get("d", ""),
        )


@dataclass
class RedriveJob:
    """One redrive job as stored."""

    id: str
    kind: str
    spec: Body
    by: str
    state: JobState = JobState.RUNNING
    created_at_s: float = field(default_factory=time.time)
    updated_at_s: float = field(default_factory=time.time)
    step: int = 0
    chunks: int = 0
    # "outcome|reason|target" -> messages.
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[Body] = field(default_factory=list)
    stop_reason: str = ""
    # The process running it (`new_runner`), while it is RUNNING; "" before its first run.
    runner: str = ""

    @property
    def doc(self) -> str:
        return f"job/{self.id}"

    def to_json(self) -> Body:
        return {
            "id": self.id,
            "kind": self.kind,
            "spec": self.spec,
            "by": self.by,
            "state": self.state.value,
            "created_at_s": self.created_at_s,
            "updated_at_s": self.updated_at_s,
            "step": self.step,
            "chunks": self.chunks,
            "counts": dict(self.counts),
            "failures": self.failures[-FAILURES_KEEP:],
            "stop_reason": self.stop_reason,
            "runner": self.runner,
        }

    @classmethod
    def from_json(cls, raw: Body) -> RedriveJob:
        return cls(
            id=raw["id"],
            kind=raw["kind"],
            spec=dict(raw["spec"]),
            by=raw.get("by", ""),
            state=JobState(raw["state"]),
            created_at_s=float(raw["created_at_s"]),
            updated_at_s=float(raw["updated_at_s"]),
            step=int(raw.get("step", 0)),
            chunks=int(raw.get("chunks", 0)),
            counts=Counter({k: int(v) for k, v in raw.get("counts", {}).items()}),
            failures=list(raw.get("failures", [])),
            stop_reason=raw.get("stop_reason", ""),
            runner=str(raw.get("runner", "")),
        )

    def failed_results(self) -> list[MessageResult]:
        """The latest results that did not end (not resubmitted, not parked), as values."""
        return [MessageResult.from_json(raw) for raw in self.failures]

    def summary(self) -> Body:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state.value,
            "created_at_s": self.created_at_s,
            "updated_at_s": self.updated_at_s,
            "messages": sum(self.counts.values()),
            "outcomes": dict(self.outcome_totals()),
            "stop_reason": self.stop_reason,
        }

    def reason_totals(self) -> Counter[tuple[str, str]]:
        """Messages by (outcome, reason), over every target."""
        totals: Counter[tuple[str, str]] = Counter()
        for key, count in self.counts.items():
            outcome, reason, _ = [*key.split("|", 2), "", ""][:3]
            totals[outcome, reason] += count
        return totals

    def outcome_totals(self) -> Counter[str]:
        totals: Counter[str] = Counter()
        for key, count in self.counts.items():
            totals[key.split("|", 1)[0]] += count
        return totals


def new_job_id() -> str:
    return "rd-" + uuid.uuid4().hex[:10]


class JobStore:
    """Jobs, their results and the index, over a ControlStore."""

    def __init__(self, store: ControlStore, ttl_s: float) -> None:
        self._store = store
        self._ttl_s = ttl_s

    async def save(self, job: RedriveJob) -> None:
        """Write the job document and its line in the index.

        A cancel stored meanwhile (`retryd jobs cancel`, from another process) is kept:
        the running job takes it on, and stops before its next step.
        """
        job.updated_at_s = time.time()

        def write(current: Body | None) -> Body:
            _fence(job, current)
            stored = (current or {}).get("state")
            if stored == JobState.CANCELLED.value and job.state is not JobState.CANCELLED:
                job.state = JobState.CANCELLED
                job.stop_reason = CANCELLED_REASON
            return job.to_json()

        await update(self._store, job.doc, write, ttl_s=self._ttl_s)
        await self._index(job)

    async def take(self, job: RedriveJob, runner: str, *, now_s: float | None = None) -> None:
        """Mark `job` RUNNING under `runner`, unless another live process runs it.

        Taken atomically (the store's versioned write): of two resumes at once, one
        wins and the other gets JobBusyError. A job whose runner has been silent for
        JOB_STALE_S (a crash, a kill), or was a process on this host that no longer
        exists, is taken over.
        """
        at_s = time.time() if now_s is None else now_s

        def claim(current: Body | None) -> Body:
            if current is not None:
                busy = busy_runner(current, runner, at_s, gone=gone_here)
                if busy is not None:
                    raise JobBusyError(busy)
                if current.get("state") == JobState.CANCELLED.value:
                    # A cancel is final: the caller sees it on its first step and stops.
                    job.state = JobState.CANCELLED
                    job.stop_reason = CANCELLED_REASON
                    job.runner = runner
                    job.updated_at_s = at_s
                    return job.to_json()
            job.state = JobState.RUNNING
            job.stop_reason = ""
            job.runner = runner
            job.updated_at_s = at_s
            return job.to_json()

        await update(self._store, job.doc, claim, ttl_s=self._ttl_s)
        await self._index(job)

    async def _index(self, job: RedriveJob) -> None:
        """Put the job's summary line in the index `retryd jobs` lists."""

        def index(current: Body | None) -> Body:
            kept = [j for j in (current or {}).get("jobs", []) if j["id"] != job.id]
            return {"jobs": [*kept, job.summary()][-JOBS_KEEP:]}

        await update(self._store, JOBS_DOC, index, ttl_s=self._ttl_s)

    async def touch(self, job: RedriveJob) -> bool:
        """Say the job's runner is alive (JOB_HEARTBEAT_S); False once another took it over."""
        at_s = time.time()
        taken = False

        def beat(current: Body | None) -> Body | None:
            nonlocal taken
            if current is None or current.get("runner", "") != job.runner:
                taken = current is not None
                return None
            return {**current, "updated_at_s": at_s}

        await update(self._store, job.doc, beat, ttl_s=self._ttl_s)
        return not taken

    async def add_results(self, job: RedriveJob, results: Sequence[MessageResult]) -> None:
        """Store one step's results as the next chunk (before the job document moves on)."""
        if not results:
            return
        name = f"{job.doc}/results/{job.chunks}"
        body = {"results": [r.to_json() for r in results]}
        await update(self._store, name, lambda _: body, ttl_s=self._ttl_s)
        job.chunks += 1

    async def load_as_runner(self, job: RedriveJob) -> RedriveJob:
        """The job as stored, read by its runner: JobTakenOverError if it is no longer its."""
        body = await read_body(self._store, job.doc)
        _fence(job, body)
        return await self.load(job.id) if body is None else RedriveJob.from_json(body)

    async def load(self, job_id: str) -> RedriveJob:
        body = await read_body(self._store, f"job/{job_id}")
        if body is None:
            raise ControlError(f"no redrive job {job_id!r} (see `retryd jobs`)")
        return RedriveJob.from_json(body)

    async def results(self, job: RedriveJob) -> list[MessageResult]:
        names = [f"{job.doc}/results/{n}" for n in range(job.chunks)]
        found = await self._store.get(names) if names else {}
        out: list[MessageResult] = []
        for name in names:
            doc = found.get(name)
            if doc is not None:
                out.extend(MessageResult.from_json(raw) for raw in doc.body["results"])
        return out

    async def listed(self) -> list[Body]:
        """The index, newest first."""
        return list(reversed((await read_body(self._store, JOBS_DOC) or {}).get("jobs", [])))


def job_metrics(index: Body | None) -> tuple[Counter[str], Counter[tuple[str, str]]]:
    """From the jobs index: jobs by state, and their messages by (kind, outcome)."""
    by_state: Counter[str] = Counter()
    messages: Counter[tuple[str, str]] = Counter()
    for entry in (index or {}).get("jobs", []):
        by_state[str(entry.get("state", ""))] += 1
        for outcome, count in dict(entry.get("outcomes", {})).items():
            messages[(str(entry.get("kind", "")), str(outcome))] += int(count)
    return by_state, messages


def gone_here(runner: str) -> bool:
    """True when `runner` was a process on this host that no longer exists (a crash or a
    kill here): its job may be taken over at once. False when unsure (another host, a
    process that exists, one this user may not signal)."""
    host, _, rest = runner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def busy_runner(
    stored: Mapping[str, object],
    runner: str,
    now_s: float,
    *,
    gone: Callable[[str], bool] = lambda _: False,
) -> str | None:
    """Why `runner` may not run the stored job now (another live runner has it), or None.

    `gone` says a runner is known dead (`gone_here`), so it need not be waited out.
    """
    holder = str(stored.get("runner", ""))
    if stored.get("state") != JobState.RUNNING.value or holder == runner:
        return None
    if holder and gone(holder):
        return None
    heard_s = now_s - float(str(stored.get("updated_at_s", 0)))
    if heard_s >= JOB_STALE_S:
        return None
    who = holder.rsplit(":", 1)[0] if holder else "another process"
    return (
        f"job {stored.get('id')} is running in {who} (heard from {max(heard_s, 0):.0f} s ago); "
        f"cancel it with `retryd jobs cancel`, or resume it once it has stopped "
        f"(a runner silent for {JOB_STALE_S:.0f} s is taken over)"
    )


def _fence(job: RedriveJob, stored: Mapping[str, object] | None) -> None:
    # A runner that was taken over must not write the job back over its new runner's.
    if stored is None or not job.runner:
        return
    holder = str(stored.get("runner", ""))
    if holder and holder != job.runner:
        raise JobTakenOverError(
            f"job {job.id} was taken over by {holder.rsplit(':', 1)[0]}; this run stops"
        )


def latest_results(results: Iterable[MessageResult]) -> dict[str, MessageResult]:
    """Each message's latest result (a resumed job may have tried a message again)."""
    return {result.message_id: result for result in results}


def tally(job: RedriveJob, latest: Mapping[str, MessageResult]) -> None:
    """Set the job's counts and failures from each message's latest result."""
    job.counts = Counter(
        f"{result.outcome.value}|{result.reason}|{result.target}" for result in latest.values()
    )
    job.failures = [r.to_json() for r in latest.values() if r.outcome not in FINAL_OK][
        -FAILURES_KEEP:
    ]
