"""Who a redrive job is among the replicas, and to the ledger."""

from __future__ import annotations

from retryd.commands.redrive import _member, _owner
from retryd.control.jobs import RedriveJob, new_job_id


def test_each_process_of_a_job_is_its_own_member_of_the_cluster_but_the_same_ledger_owner() -> None:
    """Two processes for one job (a resume refused while the job runs) are two members, each
    named after the job: the refused one's leave cannot remove the running one's heartbeat.
    Both are the job's one ledger owner, so a resume finishes the claims the job began."""
    job = RedriveJob(new_job_id(), "sources", {}, "tester")
    first, second = _member(job), _member(job)
    assert first != second
    assert first.startswith(f"redrive-{job.id}-")
    assert second.startswith(f"redrive-{job.id}-")
    assert _owner(job) == _owner(job) == f"redrive-{job.id}"
