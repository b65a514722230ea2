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

import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from retryd.control.store import Body, ControlError, ControlStore, read_body, update
from retryd.models import Outcome

JOBS_DOC = "jobs"
# Outcomes after which a message is done with: resubmitted, or parked again.
FINAL_OK = frozenset({Outcome.RESUBMITTED, Outcome.PARKED})
JOBS_KEEP = 100
FAILURES_KEEP = 200
DETAIL_MAX_CHARS = 300
CANCELLED_REASON = "cancelled by `retryd jobs cancel`"


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
            stored = (current or {}).get("state")
            if stored == JobState.CANCELLED.value and job.state is not JobState.CANCELLED:
                job.state = JobState.CANCELLED
                job.stop_reason = CANCELLED_REASON
            return job.to_json()

        await update(self._store, job.doc, write, ttl_s=self._ttl_s)

        def index(current: Body | None) -> Body:
            kept = [j for j in (current or {}).get("jobs", []) if j["id"] != job.id]
            return {"jobs": [*kept, job.summary()][-JOBS_KEEP:]}

        await update(self._store, JOBS_DOC, index, ttl_s=self._ttl_s)

    async def add_results(self, job: RedriveJob, results: Sequence[MessageResult]) -> None:
        """Store one step's results as the next chunk (before the job document moves on)."""
        if not results:
            return
        name = f"{job.doc}/results/{job.chunks}"
        body = {"results": [r.to_json() for r in results]}
        await update(self._store, name, lambda _: body, ttl_s=self._ttl_s)
        job.chunks += 1

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
