"""The attempts guard: a message that has had its tries is parked, not retried forever.

Only retryd's own resubmissions count (`Job.attempt`, the larger of its stamp and
its ledger record). What the source tried before the DLQ (`Job.source_attempts`)
never does: EventBridge's default policy alone makes 185 tries, and counting them
would park every such message on first sight.
"""

from __future__ import annotations

from retryd.models import Job


def effective_limit(job: Job, max_attempts: int) -> int:
    """The configured limit, lowered (never raised) by a limit the message itself carries."""
    if job.max_attempts is None:
        return max_attempts
    return min(max_attempts, job.max_attempts)


def attempts_exhausted(job: Job, max_attempts: int) -> str | None:
    """Why the job may not be tried again, or None while it has attempts left."""
    limit = effective_limit(job, max_attempts)
    if job.attempt < limit:
        return None
    detail = f"attempt {job.attempt} of at most {limit} already made"
    if limit < max_attempts:
        detail += f" (the message lowered the limit from {max_attempts})"
    return detail
