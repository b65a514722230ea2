"""One way the redrive tests build a job's Redrive, as `retryd redrive` does."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from retryd.aws import AwsClients
from retryd.control.jobs import RedriveJob
from retryd.control.store import ControlStore
from retryd.drain.redrive import Redrive, Spec
from retryd.ledger import MemoryLedger
from retryd.metrics import Metrics
from retryd.settings import Settings


def job_redrive(
    settings: Settings, clients: AwsClients, store: ControlStore, spec: Spec, job: RedriveJob
) -> Redrive:
    """A Redrive for `job` as `retryd redrive` builds one: a memory ledger owned by the job."""
    return Redrive(
        settings,
        clients,
        ledger=MemoryLedger(claim_s=300, ttl_s=86_400, owner=f"redrive-{job.id}"),
        metrics=Metrics(CollectorRegistry()),
        control=store,
        spec=spec,
    )
