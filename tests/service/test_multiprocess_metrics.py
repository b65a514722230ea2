"""retryd's metrics in prometheus-client's multiprocess mode (`drain.processes` > 1), as
the parent sums the workers' files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from retryd.metrics import MULTIPROCESS_DIR_ENV

# A worker's metric writes: a pause and a running redrive job, then the next cycle's read
# finds the pause lifted and the job done. It stays alive as far as the files say.
_WORKER = textwrap.dedent(
    """
    from prometheus_client import CollectorRegistry
    from retryd.metrics import Metrics

    metrics = Metrics(CollectorRegistry())
    metrics.set_pauses([("arn:aws:lambda:*:*:function:charge", None)])
    metrics.set_redrive_jobs({"running": 1}, {("redrive", "resubmitted"): 4})
    metrics.set_pauses([])
    metrics.set_redrive_jobs({"done": 1}, {})
    """
)


def _served(metrics_dir: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


def test_a_lifted_pause_and_a_finished_job_do_not_linger_in_the_workers_sum(
    tmp_path: Path,
) -> None:
    """A pause lifted and a job no longer running read as such from a live worker's files
    (prometheus-client cannot remove a series there: clearing it left the old values)."""
    env = {**os.environ, MULTIPROCESS_DIR_ENV: str(tmp_path)}
    subprocess.run([sys.executable, "-c", _WORKER], env=env, check=True, timeout=60)
    served = _served(tmp_path)
    pause = (
        "retryd_pause_end_timestamp_seconds",
        (("pattern", "arn:aws:lambda:*:*:function:charge"),),
    )
    # Its end is in the past: no pause in force (+Inf was "until resumed").
    assert served.get(pause, 0.0) == 0.0
    assert served.get(("retryd_redrive_jobs", (("state", "running"),)), 0.0) == 0.0
    assert served[("retryd_redrive_jobs", (("state", "done"),))] == 1.0
    resubmitted = ("retryd_redrive_job_messages", (("kind", "redrive"), ("outcome", "resubmitted")))
    assert served.get(resubmitted, 0.0) == 0.0
