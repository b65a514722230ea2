"""Every metric retryd exports, registered on a registry that is passed in.

Label values are bounded sets (queue names, target types, outcomes, park
reasons, error classes, the configured accounts and regions); nothing per
message, such as an id or an AWS error code, ever becomes a label, because each
new value is a new time series.

Names follow Prometheus's "Metric and label naming" practice
(https://prometheus.io/docs/practices/naming/): one `retryd_` prefix, base
units named as a plural suffix (`_seconds`), `_total` on counters, `_info` on
the build pseudo-metric, and a sum over any label still meaning something.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)

from retryd.arns import Arn
from retryd.models import QueueRef
from retryd.version import package_version

# prometheus_client adds a `<name>_created` gauge beside every counter and histogram
# series in the text format, doubling the series Prometheus stores for a start time
# nobody queries here. The switch is process-wide; retryd is the whole process.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated

# Prometheus cannot tell "no reason" from a missing label, so empty strings get a name.
NO_LABEL = "none"

# From a quiet account (well under a second) up to past the default cycle budget
# of 300 s, so an overrun shows up in its own bucket rather than only in +Inf.
CYCLE_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


# A `target` label is only ever a target that passed the allowlist, and at most
# this many distinct ones: past the cap, further targets share OTHER_TARGET.
MAX_TARGET_LABELS = 200
OTHER_TARGET = "other"

# What a batch heartbeat does each beat: extend the leases, renew the ledger claims.
HEARTBEAT_STEPS = ("visibility", "claims")

# Circuit-breaker states, exported as a state set (1 for the current state).
BREAKER_STATES = ("closed", "open", "half_open")


def _check_breaker_state(state: str) -> str:
    # An unknown state would export 0 for every state: a breaker that looks like no breaker.
    if state not in BREAKER_STATES:
        raise ValueError(f"unknown breaker state {state!r}; expected one of {BREAKER_STATES}")
    return state


def _label(value: str) -> str:
    return value or NO_LABEL


def place_labels(arn: str) -> dict[str, str]:
    """The `account` and `region` labels of a queue's or target's ARN.

    Bounded: retryd only reads queues and sends to targets in the places it is
    configured for (or, for targets, the allowlist names).
    """
    try:
        parsed = Arn.parse(arn)
    except ValueError:
        return {"account": NO_LABEL, "region": NO_LABEL}
    return {"account": _label(parsed.account), "region": _label(parsed.region)}


def _queue_labels(queue: QueueRef) -> dict[str, str]:
    return {"queue": queue.name, **place_labels(queue.arn)}


# With drain.processes > 1 every worker writes its metrics to files in this directory
# (prometheus-client's multiprocess mode) and the parent serves their sum. Each
# gauge says how its workers' values combine: only the worker that drains a DLQ
# sets that DLQ's series; the others are the same in every worker, or a least
# (the last successful cycle: the oldest worker's) or a sum (DLQs found).
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def register_build_info(registry: CollectorRegistry) -> None:
    """`retryd_build_info{version="..."} 1` (an OpenMetrics info metric).

    Apart from Metrics, because the multiprocess mode drops info metrics: the
    parent of worker processes registers its own.
    """
    Info(
        "retryd_build",
        "The running retryd's version, as the label of a constant 1.",
        registry=registry,
    ).info({"version": package_version()})


def _replace(gauge: Gauge, values: Mapping[tuple[str, ...], float]) -> None:
    """Make `values` the gauge's series, by label values, and drop those set before.

    In the multiprocess mode prometheus-client cannot drop a series (`clear` only
    forgets it in this process; its last value stays in the worker's file, summed by
    the parent), so a series no longer wanted is set to 0 there instead: a lifted
    pause then reads as one that ended long ago, a finished job as none.
    """
    if MULTIPROCESS_DIR_ENV in os.environ:
        # The series this process has set (prometheus-client keeps them by label values).
        for labels in gauge._metrics:
            if labels not in values:
                gauge.labels(*labels).set(0.0)
    else:
        gauge.clear()
    for labels, value in values.items():
        gauge.labels(*labels).set(value)


class Metrics:
    """retryd's metrics; the pipeline and scheduler report through these methods only."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._messages = Counter(
            "retryd_messages_total",
            "Messages handled, by what was done with them and why (source: sqs, or s3 for an"
            " S3 failure destination's objects).",
            ["queue", "account", "region", "source", "outcome", "reason", "target_type"],
            registry=registry,
        )
        self._resubmit_errors = Counter(
            "retryd_resubmit_errors_total",
            "Resubmissions a target refused or that failed on the way, by error class.",
            ["target_type", "account", "region", "error_class"],
            registry=registry,
        )
        self._stamps_dropped = Counter(
            "retryd_stamps_dropped_total",
            "retryd attributes left off a resubmitted message because it had no room for them.",
            ["queue", "account", "region"],
            registry=registry,
        )
        self._delete_failures = Counter(
            "retryd_delete_failures_total",
            "Messages copied safely whose delete from the DLQ failed; they will be seen again.",
            ["queue", "account", "region"],
            registry=registry,
        )
        self._lease_extensions = Counter(
            "retryd_lease_extensions_total",
            "Leases (SQS visibility timeouts) of undecided messages extended by a batch's "
            "heartbeat while work on them was in flight, one per message and extension.",
            ["queue", "account", "region"],
            registry=registry,
        )
        self._heartbeat_failures = Counter(
            "retryd_heartbeat_failures_total",
            "Batch heartbeats that failed and stopped extending, by the step that failed "
            "(visibility: the lease extension; claims: the ledger claims' renewal). The "
            "batch's messages stay in their DLQ unless their copies are safe.",
            ["queue", "account", "region", "step"],
            registry=registry,
        )
        self._cycle_duration = Histogram(
            "retryd_cycle_duration_seconds",
            "Wall-clock time of one discovery-and-drain cycle.",
            unit="seconds",
            buckets=CYCLE_BUCKETS_S,
            registry=registry,
        )
        self._cycles = Counter(
            "retryd_cycles_total",
            "Cycles finished, by whether they completed without an error.",
            ["result"],
            registry=registry,
        )
        self._last_success = Gauge(
            "retryd_last_successful_cycle_timestamp_seconds",
            "Unix time at which the last successful cycle finished.",
            unit="seconds",
            multiprocess_mode="livemin",
            registry=registry,
        )
        self._queues_discovered = Gauge(
            "retryd_queues_discovered",
            "DLQs found by the last discovery, per account and region.",
            ["account", "region"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self._dlq_messages = Gauge(
            "retryd_dlq_messages",
            "Messages in each DLQ at the start of its drain, as SQS approximates them "
            "(for a DLQ busy in back-to-back cycles, read up to 30 s before).",
            ["queue", "account", "region", "state"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self._dlq_oldest_age = Gauge(
            "retryd_dlq_oldest_message_age_seconds",
            "Age of the oldest message retryd received from each DLQ in the last cycle.",
            ["queue", "account", "region"],
            unit="seconds",
            multiprocess_mode="livemax",
            registry=registry,
        )
        self._breaker_state = Gauge(
            "retryd_breaker_state",
            "Circuit-breaker state per target: 1 for the state it is in, 0 for the others.",
            ["target", "target_type", "account", "region", "state"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self._breaker_transitions = Counter(
            "retryd_breaker_transitions_total",
            "Circuit-breaker state changes per target, by the state entered.",
            ["target", "target_type", "account", "region", "to_state"],
            registry=registry,
        )
        self._ledger_operations = Counter(
            "retryd_ledger_operations_total",
            "Ledger operations by backend, operation and result.",
            ["backend", "operation", "result"],
            registry=registry,
        )
        self._ledger_errors = Counter(
            "retryd_ledger_errors_total",
            "Ledger operations that failed (the messages involved stay in their DLQs).",
            ["backend", "operation"],
            registry=registry,
        )
        self._pauses = Gauge(
            "retryd_pause_end_timestamp_seconds",
            "Each operator pause in force (by target glob): when it ends, +Inf until resumed "
            "(with drain.processes > 1 a lifted pause stays, at 0: a past end).",
            ["pattern"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self._redrive_messages = Gauge(
            "retryd_redrive_job_messages",
            "Messages handled by the redrive jobs kept in the backend, by job kind and outcome "
            "(as the last cycle read them).",
            ["kind", "outcome"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self._redrive_jobs = Gauge(
            "retryd_redrive_jobs",
            "Redrive jobs kept in the backend, by state (as the last cycle read them).",
            ["state"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self._account_errors = Counter(
            "retryd_account_errors_total",
            "Cycles in which an account and region could not be worked in (its role could not "
            "be assumed, its discovery failed), by error class; the other places went on.",
            ["account", "region", "error_class"],
            registry=registry,
        )
        self._targets_labelled: set[str] = set()
        # The series of the counters bumped per batch or per ledger call, by their label
        # values: `labels()` builds a tuple and takes a lock each time, and looking up a
        # queue's account and region parses its ARN. Bounded like the labels themselves.
        self._decisions: dict[tuple[QueueRef, str, str, str], Counter] = {}
        self._ledger_ops: dict[tuple[str, str, str], Counter] = {}
        register_build_info(registry)
        # One series per configured hook (a bounded set: the [[hooks]] rules) and result.
        self._hook_runs = Counter(
            "retryd_hook_runs_total",
            "Hook runs on the way back, by hook (transform name or schema file) and result.",
            ["hook", "name", "result"],
            registry=registry,
        )
        # Both series exist from the start so that rate() and absent-alerts see a
        # zero rather than nothing before the first error.
        for result in ("ok", "error"):
            self._cycles.labels(result=result)

    def record_decision(
        self, queue: QueueRef, outcome: str, reason: str, target_type: str, count: int = 1
    ) -> None:
        """Count `count` messages' outcome (a batch counts each kind of decision once)."""
        key = (queue, outcome, reason, target_type)
        series = self._decisions.get(key)
        if series is None:
            series = self._decisions[key] = self._messages.labels(
                **_queue_labels(queue),
                source=queue.kind.value,
                outcome=outcome,
                reason=_label(reason),
                target_type=_label(target_type),
            )
        series.inc(count)

    def record_resubmit_error(
        self, target_type: str, target_arn: str, error_class: str, code: str
    ) -> None:
        """Count a failed resubmission; `code` goes to the logs, never to a label."""
        # AWS error codes are an open set: a label per code would be unbounded.
        self._resubmit_errors.labels(
            target_type=_label(target_type),
            **place_labels(target_arn),
            error_class=_label(error_class),
        ).inc()

    def record_account_error(self, account: str, region: str, error_class: str) -> None:
        """Count a cycle in which one account and region could not be worked in."""
        self._account_errors.labels(
            account=_label(account), region=_label(region), error_class=_label(error_class)
        ).inc()

    def record_hook_run(self, hook: str, name: str, result: str) -> None:
        """Count one run of a transform or a schema check, by its result (ok, parked, ...)."""
        self._hook_runs.labels(hook=hook, name=_label(name), result=result).inc()

    def record_stamps_dropped(self, queue: QueueRef, count: int) -> None:
        """Count retryd attributes that did not fit on messages resubmitted from `queue`."""
        self._stamps_dropped.labels(**_queue_labels(queue)).inc(count)

    def record_delete_failure(self, queue: QueueRef) -> None:
        """Count a message that is safe elsewhere but still in its DLQ."""
        self._delete_failures.labels(**_queue_labels(queue)).inc()

    def record_lease_extensions(self, queue: QueueRef, count: int) -> None:
        """Count `count` messages of `queue` whose lease a heartbeat extended once more."""
        self._lease_extensions.labels(**_queue_labels(queue)).inc(count)

    def record_heartbeat_failure(self, queue: QueueRef, step: str) -> None:
        """Count a batch heartbeat that failed at `step` (one of HEARTBEAT_STEPS) and stopped."""
        if step not in HEARTBEAT_STEPS:
            raise ValueError(f"unknown heartbeat step {step!r}; expected one of {HEARTBEAT_STEPS}")
        self._heartbeat_failures.labels(**_queue_labels(queue), step=step).inc()

    def observe_cycle(self, duration_s: float, ok: bool, finished_at_unix_s: float) -> None:
        """Record one finished cycle; only a successful one moves the last-success time."""
        self._cycle_duration.observe(duration_s)
        self._cycles.labels(result="ok" if ok else "error").inc()
        if ok:
            self._last_success.set(finished_at_unix_s)

    def set_queues_discovered(self, account: str, region: str, count: int) -> None:
        """Record how many DLQs the last discovery in one account and region found."""
        self._queues_discovered.labels(account=_label(account), region=_label(region)).set(count)

    def set_dlq_depth(self, queue: QueueRef, visible: int, in_flight: int, delayed: int) -> None:
        """Record a DLQ's depth: visible (waiting), in flight (leased), delayed."""
        labels = _queue_labels(queue)
        for state, count in (("visible", visible), ("in_flight", in_flight), ("delayed", delayed)):
            self._dlq_messages.labels(**labels, state=state).set(count)

    def target_label(self, target_arn: str) -> str:
        """The `target` label for an allowlisted target: itself, or OTHER_TARGET past the cap."""
        if target_arn in self._targets_labelled:
            return target_arn
        if len(self._targets_labelled) >= MAX_TARGET_LABELS:
            return OTHER_TARGET
        self._targets_labelled.add(target_arn)
        return target_arn

    def set_breaker_state(self, target_arn: str, target_type: str, state: str) -> None:
        """Export the breaker state of one target (one of BREAKER_STATES, else ValueError)."""
        _check_breaker_state(state)
        target = self.target_label(target_arn)
        for name in BREAKER_STATES:
            self._breaker_state.labels(
                target=target,
                target_type=_label(target_type),
                **place_labels(target_arn),
                state=name,
            ).set(1 if name == state else 0)

    def record_breaker_transition(self, target_arn: str, target_type: str, to_state: str) -> None:
        """Count a breaker entering `to_state`, and export the new state."""
        _check_breaker_state(to_state)
        target = self.target_label(target_arn)
        self._breaker_transitions.labels(
            target=target,
            target_type=_label(target_type),
            **place_labels(target_arn),
            to_state=to_state,
        ).inc()
        self.set_breaker_state(target_arn, target_type, to_state)

    def record_ledger_op(self, backend: str, operation: str, result: str, times: int = 1) -> None:
        """Count `times` ledger operations (begin, commit, release, read, renew, begin-park,
        commit-park) with one result; claim renewals are the `renew` ones."""
        key = (backend, operation, result)
        series = self._ledger_ops.get(key)
        if series is None:
            series = self._ledger_ops[key] = self._ledger_operations.labels(
                backend=backend, operation=operation, result=result
            )
        series.inc(times)

    def record_ledger_error(self, backend: str, operation: str) -> None:
        """Count a ledger operation that failed."""
        self._ledger_errors.labels(backend=backend, operation=operation).inc()

    def set_oldest_message_age(self, queue: QueueRef, age_s: float) -> None:
        """Export the age of the oldest message seen in `queue` this cycle."""
        self._dlq_oldest_age.labels(**_queue_labels(queue)).set(age_s)

    def set_pauses(self, pauses: Sequence[tuple[str, float | None]]) -> None:
        """Export the pauses in force as (pattern, end in unix s or None), replacing the last."""
        _replace(
            self._pauses,
            {(pattern,): math.inf if until_s is None else until_s for pattern, until_s in pauses},
        )

    def set_redrive_jobs(
        self, by_state: Mapping[str, int], messages: Mapping[tuple[str, str], int]
    ) -> None:
        """Export the stored jobs by state, and their messages by (kind, outcome)."""
        _replace(self._redrive_jobs, {(state,): count for state, count in by_state.items()})
        _replace(self._redrive_messages, {key: count for key, count in messages.items()})
