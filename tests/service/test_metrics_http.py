"""Metrics on a passed-in registry, and the /metrics, /healthz, /readyz listener over real HTTP."""

from __future__ import annotations

import errno
import socket
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Protocol

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from retryd.metrics import BREAKER_STATES, MAX_TARGET_LABELS, OTHER_TARGET, Metrics
from retryd.models import QueueRef
from retryd.service.health import Health
from retryd.service.http import serve_http
from retryd.settings import HttpSettings
from retryd.version import DISTRIBUTION
from tests.conftest import SettingsFactory

PLACE = {"account": "123456789012", "region": "us-east-1"}


def _queue(name: str) -> QueueRef:
    return QueueRef(
        name,
        f"https://sqs.us-east-1.amazonaws.com/123456789012/{name}",
        f"arn:aws:sqs:us-east-1:123456789012:{name}",
    )


@dataclass
class FakeClock:
    now_s: float = 1000.0

    def __call__(self) -> float:
        return self.now_s


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: str


def _get(url: str, accept: str | None = None) -> Reply:
    request = urllib.request.Request(url)  # noqa: S310 - always http://127.0.0.1 here
    if accept is not None:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - as above
            return Reply(
                response.status, response.headers["Content-Type"], response.read().decode()
            )
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, error.headers["Content-Type"], error.read().decode())


class Fetch(Protocol):
    async def __call__(self, path: str, accept: str | None = None) -> Reply: ...


def _serve(
    registry: CollectorRegistry, health: Health, check: Callable[[Fetch], Awaitable[None]]
) -> None:
    """Start the listener on a free port, run `check` against it, then stop it."""

    async def main() -> None:
        async with anyio.create_task_group() as group:
            settings = HttpSettings(host="127.0.0.1", port=0)
            port = await group.start(serve_http, settings, registry, health)

            async def fetch(path: str, accept: str | None = None) -> Reply:
                url = f"http://127.0.0.1:{port}{path}"
                return await anyio.to_thread.run_sync(_get, url, accept)

            await check(fetch)
            group.cancel_scope.cancel()

    anyio.run(main)


def _samples(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def _exposition(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def _value(exposition: str, name: str, **labels: str) -> float:
    return _samples(exposition)[(name, frozenset(labels.items()))]


def test_metrics_are_registered_on_the_given_registry_only() -> None:
    """Two Metrics on two registries coexist, and nothing lands in the global registry."""
    first, second = CollectorRegistry(), CollectorRegistry()
    Metrics(first).set_queues_discovered(PLACE["account"], PLACE["region"], 3)
    Metrics(second).set_queues_discovered(PLACE["account"], PLACE["region"], 5)
    assert first.get_sample_value("retryd_queues_discovered", PLACE) == 3
    assert second.get_sample_value("retryd_queues_discovered", PLACE) == 5
    assert REGISTRY.get_sample_value("retryd_queues_discovered", PLACE) is None
    build = {"version": version(DISTRIBUTION)}
    assert REGISTRY.get_sample_value("retryd_build_info", build) is None


def test_decisions_use_none_for_empty_labels() -> None:
    """An empty reason or target type is exported as "none", never as an empty label."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.record_decision(_queue("retry-orders"), "resubmitted", "", "lambda")
    metrics.record_decision(_queue("retry-orders"), "parked", "unresolvable", "")
    metrics.record_decision(_queue("retry-orders"), "parked", "unresolvable", "")
    labels = {"queue": "retry-orders", **PLACE, "source": "sqs"}
    assert (
        registry.get_sample_value(
            "retryd_messages_total",
            {**labels, "outcome": "resubmitted", "reason": "none", "target_type": "lambda"},
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "retryd_messages_total",
            {**labels, "outcome": "parked", "reason": "unresolvable", "target_type": "none"},
        )
        == 2
    )


def test_resubmit_errors_leave_the_aws_code_out_of_the_labels() -> None:
    """Different AWS codes of one class share one series: codes are an unbounded set."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    function = "arn:aws:lambda:us-east-1:123456789012:function:f"
    queue = "arn:aws:sqs:eu-west-1:222222222222:q"
    metrics.record_resubmit_error("lambda", function, "transient", "TooManyRequestsException")
    metrics.record_resubmit_error("lambda", function, "transient", "ServiceException")
    metrics.record_resubmit_error("sqs", queue, "permanent", "AccessDenied")
    samples = _samples(_exposition(registry))
    errors = {
        key: value for key, value in samples.items() if key[0] == "retryd_resubmit_errors_total"
    }
    assert errors == {
        (
            "retryd_resubmit_errors_total",
            frozenset({("target_type", "lambda"), *PLACE.items(), ("error_class", "transient")}),
        ): 2,
        (
            "retryd_resubmit_errors_total",
            frozenset(
                {
                    ("target_type", "sqs"),
                    ("account", "222222222222"),
                    ("region", "eu-west-1"),
                    ("error_class", "permanent"),
                }
            ),
        ): 1,
    }


def test_cycle_failure_keeps_the_last_success_timestamp() -> None:
    """A failed cycle counts as an error and does not move the last-success time."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    assert registry.get_sample_value("retryd_cycles_total", {"result": "error"}) == 0
    metrics.observe_cycle(1.5, ok=True, finished_at_unix_s=1_700_000_000.0)
    metrics.observe_cycle(400.0, ok=False, finished_at_unix_s=1_700_000_500.0)
    assert registry.get_sample_value("retryd_cycles_total", {"result": "ok"}) == 1
    assert registry.get_sample_value("retryd_cycles_total", {"result": "error"}) == 1
    assert (
        registry.get_sample_value("retryd_last_successful_cycle_timestamp_seconds")
        == 1_700_000_000.0
    )
    assert registry.get_sample_value("retryd_cycle_duration_seconds_count") == 2
    assert registry.get_sample_value("retryd_cycle_duration_seconds_sum") == 401.5
    # The 400 s cycle overran the default 300 s budget and must be visible as such.
    assert registry.get_sample_value("retryd_cycle_duration_seconds_bucket", {"le": "300.0"}) == 1


def test_build_info_carries_the_installed_version() -> None:
    """retryd_build_info is 1 with the package version as its label."""
    registry = CollectorRegistry()
    Metrics(registry)
    assert registry.get_sample_value("retryd_build_info", {"version": version(DISTRIBUTION)}) == 1


def test_metrics_endpoint_serves_what_was_recorded() -> None:
    """/metrics exposes the registry in Prometheus text format with recorded values."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    health = Health(interval_s=60)
    metrics.record_decision(_queue("retry-a"), "parked", "target-not-allowed", "sns")
    metrics.record_stamps_dropped(_queue("retry-a"), 4)
    metrics.record_delete_failure(_queue("retry-a"))
    metrics.set_queues_discovered(PLACE["account"], PLACE["region"], 7)
    metrics.observe_cycle(2.0, ok=True, finished_at_unix_s=1_700_000_000.0)

    async def check(fetch: Fetch) -> None:
        reply = await fetch("/metrics")
        assert reply.status == 200
        assert reply.content_type.startswith("text/plain")
        body = reply.body
        assert (
            _value(
                body,
                "retryd_messages_total",
                queue="retry-a",
                **PLACE,
                source="sqs",
                outcome="parked",
                reason="target-not-allowed",
                target_type="sns",
            )
            == 1
        )
        assert _value(body, "retryd_stamps_dropped_total", queue="retry-a", **PLACE) == 4
        assert _value(body, "retryd_delete_failures_total", queue="retry-a", **PLACE) == 1
        assert _value(body, "retryd_queues_discovered", **PLACE) == 7
        assert _value(body, "retryd_cycles_total", result="ok") == 1
        assert _value(body, "retryd_last_successful_cycle_timestamp_seconds") == 1_700_000_000.0

    _serve(registry, health, check)


def test_metrics_endpoint_speaks_openmetrics_when_asked() -> None:
    """A scraper that asks for OpenMetrics gets it, terminated by # EOF."""
    registry = CollectorRegistry()
    Metrics(registry).set_queues_discovered(PLACE["account"], PLACE["region"], 2)

    async def check(fetch: Fetch) -> None:
        reply = await fetch("/metrics", "application/openmetrics-text; version=1.0.0")
        assert reply.status == 200
        assert reply.content_type.startswith("application/openmetrics-text")
        assert reply.body.rstrip().endswith("# EOF")
        expected = 'retryd_queues_discovered{account="123456789012",region="us-east-1"} 2.0'
        assert expected in reply.body

    _serve(registry, Health(interval_s=60), check)


def test_healthz_turns_503_when_the_scheduler_stops_ticking() -> None:
    """/healthz is ok within two intervals of the last tick and 503 with a reason after."""
    clock = FakeClock()
    health = Health(interval_s=10, clock=clock)

    async def check(fetch: Fetch) -> None:
        # Before the first tick the start-up grace applies.
        assert (await fetch("/healthz")).status == 200
        clock.now_s += 15
        health.tick()
        clock.now_s += 20
        assert (await fetch("/healthz")) == Reply(200, "text/plain; charset=utf-8", "ok\n")
        clock.now_s += 0.5
        stalled = await fetch("/healthz")
        assert stalled.status == 503
        assert "no scheduler tick for 20 s" in stalled.body
        health.tick()
        assert (await fetch("/healthz")).status == 200

    _serve(CollectorRegistry(), health, check)


def test_healthz_fails_when_the_first_tick_never_comes() -> None:
    """A scheduler that never starts is reported stalled once the start-up grace runs out."""
    clock = FakeClock()
    health = Health(interval_s=10, clock=clock)

    async def check(fetch: Fetch) -> None:
        clock.now_s += 21
        assert (await fetch("/healthz")).status == 503

    _serve(CollectorRegistry(), health, check)


def test_readyz_is_503_until_marked_ready() -> None:
    """/readyz answers 503 with a reason until the first discovery, then 200."""
    health = Health(interval_s=60)

    async def check(fetch: Fetch) -> None:
        waiting = await fetch("/readyz")
        assert waiting.status == 503
        assert "not ready" in waiting.body
        health.mark_ready()
        assert (await fetch("/readyz")) == Reply(200, "text/plain; charset=utf-8", "ok\n")

    _serve(CollectorRegistry(), health, check)


@pytest.mark.parametrize(
    ("ticked_ago_s", "alive"),
    [(0.0, True), (119.9, True), (120.0, True), (120.1, False), (419.9, False)],
)
def test_liveness_window_is_two_intervals(ticked_ago_s: float, alive: bool) -> None:
    """With a 60 s interval a tick keeps the process alive for exactly 120 s."""
    clock = FakeClock()
    health = Health(interval_s=60, clock=clock)
    health.tick()
    clock.now_s += ticked_ago_s
    assert health.alive is alive


def test_cycle_budget_widens_the_liveness_window() -> None:
    """A scheduler that ticks once per cycle is not stalled while a long cycle runs."""
    clock = FakeClock()
    health = Health(interval_s=60, clock=clock, cycle_budget_s=300)
    health.tick()
    clock.now_s += 419
    assert health.alive
    clock.now_s += 2
    assert not health.alive


def test_listener_is_gone_after_cancellation() -> None:
    """Cancelling the task group closes the socket: a new connection is refused."""
    ports: list[int] = []

    async def main() -> None:
        async with anyio.create_task_group() as group:
            settings = HttpSettings(host="127.0.0.1", port=0)
            ports.append(await group.start(serve_http, settings, CollectorRegistry(), Health(60)))
            group.cancel_scope.cancel()

    anyio.run(main)
    assert ports[0] > 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", ports[0]), timeout=5).close()


def test_a_port_in_use_fails_the_start() -> None:
    """A second listener on a taken port raises from task_group.start(), not later."""

    async def main() -> None:
        async with anyio.create_task_group() as group:
            settings = HttpSettings(host="127.0.0.1", port=0)
            port = await group.start(serve_http, settings, CollectorRegistry(), Health(60))
            taken = HttpSettings(host="127.0.0.1", port=port)
            with pytest.raises(OSError) as caught:  # noqa: PT011 - errno is checked below
                await group.start(serve_http, taken, CollectorRegistry(), Health(60))
            assert caught.value.errno == errno.EADDRINUSE
            group.cancel_scope.cancel()

    anyio.run(main)


def test_liveness_window_from_settings_covers_a_cycle_of_budget_plus_one_lease(
    make_settings: SettingsFactory,
) -> None:
    """for_settings: a tick keeps the process alive for 2 intervals + budget + one batch's
    longest lease (drain.max_lease_s; one lease when that is longer)."""
    settings = make_settings(
        schedule={"interval_s": 60},
        drain={"cycle_budget_s": 300, "visibility_timeout_s": 120, "max_lease_s": 120},
    )
    clock = FakeClock()
    health = Health.for_settings(settings, clock=clock)
    assert health.stall_after_s == 2 * 60 + 300 + 120
    extended = make_settings(schedule={"interval_s": 60}, drain={"cycle_budget_s": 300})
    assert Health.for_settings(extended).stall_after_s == 2 * 60 + 300 + 900
    health.tick()
    clock.now_s += 540
    assert health.alive
    clock.now_s += 0.1
    assert not health.alive


def test_breaker_state_is_exported_as_a_state_set() -> None:
    """Exactly one of closed/open/half_open is 1 per target, and transitions are counted."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    target = "arn:aws:lambda:us-east-1:123456789012:function:orders"
    metrics.set_breaker_state(target, "lambda", "closed")
    metrics.record_breaker_transition(target, "lambda", "open")
    metrics.record_breaker_transition(target, "lambda", "half_open")
    metrics.record_breaker_transition(target, "lambda", "open")
    labels = {"target": target, "target_type": "lambda", **PLACE}
    states = {
        state: registry.get_sample_value("retryd_breaker_state", {**labels, "state": state})
        for state in BREAKER_STATES
    }
    assert states == {"closed": 0, "open": 1, "half_open": 0}
    transitions = "retryd_breaker_transitions_total"
    assert registry.get_sample_value(transitions, {**labels, "to_state": "open"}) == 2
    assert registry.get_sample_value(transitions, {**labels, "to_state": "half_open"}) == 1


@pytest.mark.parametrize("state", ["half-open", "OPEN", ""])
def test_an_unknown_breaker_state_is_refused(state: str) -> None:
    """A state outside BREAKER_STATES raises instead of exporting 0 for every state."""
    metrics = Metrics(CollectorRegistry())
    with pytest.raises(ValueError, match="unknown breaker state"):
        metrics.set_breaker_state("arn:aws:sqs:us-east-1:123456789012:q", "sqs", state)
    with pytest.raises(ValueError, match="unknown breaker state"):
        metrics.record_breaker_transition("arn:aws:sqs:us-east-1:123456789012:q", "sqs", state)


def test_target_labels_are_capped() -> None:
    """Past MAX_TARGET_LABELS targets, new ones share OTHER_TARGET; known ones keep theirs."""
    metrics = Metrics(CollectorRegistry())
    arns = [f"arn:aws:sqs:us-east-1:123456789012:q{n}" for n in range(MAX_TARGET_LABELS)]
    assert [metrics.target_label(arn) for arn in arns] == arns
    assert metrics.target_label("arn:aws:sqs:us-east-1:123456789012:one-too-many") == OTHER_TARGET
    assert metrics.target_label(arns[0]) == arns[0]


def test_dlq_depth_age_and_ledger_series() -> None:
    """Depth by state, oldest age, and ledger operations and errors land under their labels."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.set_dlq_depth(_queue("retry-a"), visible=7, in_flight=3, delayed=1)
    metrics.set_dlq_depth(_queue("retry-a"), visible=4, in_flight=0, delayed=0)
    metrics.set_oldest_message_age(_queue("retry-a"), 86_400.0)
    metrics.record_ledger_op("dynamodb", "begin", "claimed")
    metrics.record_ledger_op("dynamodb", "begin", "claimed")
    metrics.record_ledger_error("dynamodb", "commit")
    depth = {
        state: registry.get_sample_value(
            "retryd_dlq_messages", {"queue": "retry-a", **PLACE, "state": state}
        )
        for state in ("visible", "in_flight", "delayed")
    }
    assert depth == {"visible": 4, "in_flight": 0, "delayed": 0}
    age = registry.get_sample_value(
        "retryd_dlq_oldest_message_age_seconds", {"queue": "retry-a", **PLACE}
    )
    assert age == 86_400.0
    ops = {"backend": "dynamodb", "operation": "begin", "result": "claimed"}
    assert registry.get_sample_value("retryd_ledger_operations_total", ops) == 2
    errors = {"backend": "dynamodb", "operation": "commit"}
    assert registry.get_sample_value("retryd_ledger_errors_total", errors) == 1


def test_no_created_series_are_exported() -> None:
    """Counters and histograms export no `_created` companions (they would double the series)."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.record_decision(_queue("retry-a"), "resubmitted", "", "sqs")
    metrics.observe_cycle(1.0, ok=True, finished_at_unix_s=1_700_000_000.0)
    assert "_created" not in _exposition(registry)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=400), max_size=600))
def test_target_labels_stay_bounded_and_stable(picks: list[int]) -> None:
    """For any order of targets: at most MAX_TARGET_LABELS + 1 label values, and a target
    keeps the label it was first given."""
    metrics = Metrics(CollectorRegistry())
    first_label: dict[str, str] = {}
    for pick in picks:
        arn = f"arn:aws:sqs:us-east-1:123456789012:q{pick}"
        label = metrics.target_label(arn)
        assert label in (arn, OTHER_TARGET)
        assert first_label.setdefault(arn, label) == label
    assert len(set(first_label.values())) <= MAX_TARGET_LABELS + 1


def test_decisions_counted_through_kept_series_stay_apart_by_every_label() -> None:
    """Series kept per label values: each kind of decision and ledger result counts alone."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for _ in range(3):
        metrics.record_decision(_queue("retry-a"), "resubmitted", "", "sqs", 10)
        metrics.record_decision(_queue("retry-b"), "resubmitted", "", "sqs", 2)
        metrics.record_decision(_queue("retry-a"), "parked", "too-old", "sqs")
        metrics.record_ledger_op("sqlite", "commit", "ok")
        metrics.record_ledger_op("sqlite", "commit", "lost")
    place = {"account": "123456789012", "region": "us-east-1", "source": "sqs"}
    sent = {**place, "outcome": "resubmitted", "reason": "none", "target_type": "sqs"}
    counted = "retryd_messages_total"
    assert registry.get_sample_value(counted, {**sent, "queue": "retry-a"}) == 30
    assert registry.get_sample_value(counted, {**sent, "queue": "retry-b"}) == 6
    parked = {**place, "queue": "retry-a", "outcome": "parked", "reason": "too-old"}
    assert registry.get_sample_value(counted, {**parked, "target_type": "sqs"}) == 3
    ops = "retryd_ledger_operations_total"
    for result in ("ok", "lost"):
        labels = {"backend": "sqlite", "operation": "commit", "result": result}
        assert registry.get_sample_value(ops, labels) == 3
