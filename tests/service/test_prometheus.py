"""retryd's metrics as Prometheus sees them: promtool's checks, the shipped alert rules and
dashboard, the docs' generated metrics reference, and a real Prometheus server scraping
`retryd run`."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from docs.gen.reference import metrics_page
from retryd.metrics import Metrics
from retryd.models import QueueRef
from tests.processes import retryd_run
from tests.tools import require_tool
from tests.world import ACCOUNT, REGION, World, envelope

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO / "deploy" / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "retryd.json"

# Metric names an expression may use besides retryd's own: Prometheus's scrape health.
PROMETHEUS_OWN = {"up"}

# Bounded waits for the live test; each failure says which one ran out.
START_TIMEOUT_S = 30.0
SCRAPE_TIMEOUT_S = 60.0
POLL_S = 0.2

T = TypeVar("T")


def _tool(name: str) -> str:
    """The path of a Prometheus binary (Debian's prometheus package has both)."""
    return require_tool(name, "prometheus")


def _populated_registry() -> CollectorRegistry:
    """A registry in which every Metrics method has been called at least once."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    target = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:orders"
    queue = QueueRef(
        "retry-orders",
        f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/retry-orders",
        f"arn:aws:sqs:{REGION}:{ACCOUNT}:retry-orders",
    )
    metrics.record_decision(queue, "resubmitted", "", "lambda")
    metrics.record_decision(queue, "parked", "target-rejected", "lambda")
    metrics.record_resubmit_error("lambda", target, "permanent", "InvalidParameterValueException")
    metrics.record_stamps_dropped(queue, 2)
    metrics.record_delete_failure(queue)
    metrics.observe_cycle(1.5, ok=True, finished_at_unix_s=1_700_000_000.0)
    metrics.observe_cycle(400.0, ok=False, finished_at_unix_s=1_700_000_400.0)
    metrics.set_queues_discovered(ACCOUNT, REGION, 3)
    metrics.record_account_error("222222222222", REGION, "permanent")
    metrics.set_dlq_depth(queue, visible=5, in_flight=2, delayed=1)
    metrics.set_oldest_message_age(queue, 3600.0)
    assert metrics.target_label(target) == target
    metrics.set_breaker_state(target, "lambda", "closed")
    metrics.record_breaker_transition(target, "lambda", "open")
    metrics.record_ledger_op("sqlite", "begin", "claimed")
    metrics.record_ledger_error("sqlite", "commit")
    return registry


def _exposition(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def _family_names(exposition: str) -> set[str]:
    """Metric names as the text format's TYPE lines (and so the metrics reference) spell them."""
    return {line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE ")}


def _sample_names(exposition: str) -> set[str]:
    """Every series name a query can use, histogram `_bucket`/`_sum`/`_count` included."""
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in exposition.splitlines()
        if line and not line.startswith("#")
    }


def _retryd_names(expr: str) -> set[str]:
    """The retryd_* metric names in a PromQL expression (quoted label values left out)."""
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(re.findall(r"\bretryd_[a-zA-Z0-9_]+\b", unquoted))


def _alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """Every query in the dashboard: panel targets and the template variables' queries."""
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = [target["expr"] for panel in panels for target in panel["targets"]]
    exprs += [
        variable["query"]["query"]
        for variable in dashboard["templating"]["list"]
        if variable["type"] == "query"
    ]
    return exprs


def _run(*command: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)


# --- promtool -------------------------------------------------------------------------------


def test_exposition_of_every_metric_passes_promtool_check_metrics() -> None:
    """The text exposition, with every metric populated, has no promtool lint problem."""
    promtool = _tool("promtool")
    exposition = _exposition(_populated_registry())
    result = _run(promtool, "check", "metrics", stdin=exposition)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_alert_rules_pass_promtool_check_rules() -> None:
    """alerts.yml parses, and each expression is valid PromQL."""
    result = _run(_tool("promtool"), "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alert_rules())} rules found" in result.stdout


def test_alert_unit_tests_pass_promtool_test_rules() -> None:
    """alerts_test.yml's firing and not-firing cases all pass."""
    result = _run(_tool("promtool"), "test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_example_prometheus_config_passes_promtool_check_config() -> None:
    """The example prometheus.yml is valid and loads alerts.yml beside it."""
    result = _run(_tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


# --- what the shipped files name ---------------------------------------------------------------

REQUIRED_ALERTS = {
    "RetrydDown",
    "RetrydNoSuccessfulCycle",
    "RetrydDLQDepthGrowing",
    "RetrydBreakerOpen",
    "RetrydMessagesParked",
    "RetrydResubmitErrorRatioHigh",
    "RetrydAccountFailing",
}


def test_every_alert_has_a_summary_description_and_runbook() -> None:
    """Each required alert exists once, with all three annotations non-empty."""
    rules = _alert_rules()
    names = [rule["alert"] for rule in rules]
    assert sorted(names) == sorted(REQUIRED_ALERTS)
    for rule in rules:
        annotations = rule["annotations"]
        for key in ("summary", "description", "runbook"):
            assert annotations.get(key, "").strip(), f"{rule['alert']} has no {key}"
        assert rule["labels"]["severity"] in {"critical", "warning"}


def test_alert_unit_tests_cover_each_alert_firing_and_not_firing() -> None:
    """alerts_test.yml has, for every alert, a case expecting it and a case expecting silence."""
    document = yaml.safe_load(ALERTS_TEST.read_text())
    cases = [case for test in document["tests"] for case in test["alert_rule_test"]]
    fires = {case["alertname"] for case in cases if case["exp_alerts"]}
    silent = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert fires == REQUIRED_ALERTS
    assert silent == REQUIRED_ALERTS


def test_alert_expressions_name_only_metrics_retryd_exports() -> None:
    """Every retryd_* name in alerts.yml's expressions is a series retryd serves."""
    exported = _sample_names(_exposition(_populated_registry()))
    for rule in _alert_rules():
        names = _retryd_names(rule["expr"])
        assert names or "up{" in rule["expr"], f"{rule['alert']} names no metric"
        assert names <= exported, f"{rule['alert']}: {sorted(names - exported)} not exported"


def test_dashboard_is_a_grafana_model_over_exported_metrics() -> None:
    """retryd.json is JSON with a Prometheus datasource variable, queue/target variables,
    unique panel ids, and queries that name only series retryd serves."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert {"queue", "target"} <= variables.keys()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exported = _sample_names(_exposition(_populated_registry()))
    used: set[str] = set()
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], f"panel {panel['title']!r} has no query"
    for expr in _dashboard_exprs(dashboard):
        names = _retryd_names(expr)
        assert names, f"query names no retryd metric: {expr}"
        assert names <= exported, f"{sorted(names - exported)} not exported: {expr}"
        used |= names
    # The list: outcomes, error classes, depth and age, breakers, cycles, ledger, build.
    assert {
        "retryd_messages_total",
        "retryd_resubmit_errors_total",
        "retryd_dlq_messages",
        "retryd_dlq_oldest_message_age_seconds",
        "retryd_breaker_state",
        "retryd_cycle_duration_seconds_bucket",
        "retryd_last_successful_cycle_timestamp_seconds",
        "retryd_ledger_operations_total",
        "retryd_ledger_errors_total",
        "retryd_queues_discovered",
        "retryd_build_info",
        # Which account and region could not be worked in (issue 14's places).
        "retryd_account_errors_total",
    } <= used


def _metrics_table(page: str) -> list[str]:
    """The backticked first cells of the one table headed `| metric |` on a docs page."""
    tables: list[list[str]] = []
    previous_was_row = False
    for line in page.splitlines():
        is_row = line.startswith("|")
        if is_row and not previous_was_row:
            tables.append([])
        if is_row:
            tables[-1].append(line)
        previous_was_row = is_row
    metric_tables = [t for t in tables if t[0].strip("| ").split("|")[0].strip() == "metric"]
    assert len(metric_tables) == 1, "expected one table headed '| metric |'"
    names = []
    for row in metric_tables[0][2:]:
        match = re.match(r"\|\s*`([^`]+)`\s*\|", row)
        assert match, f"metrics table row without a backticked name: {row}"
        names.append(match.group(1))
    return names


def test_metrics_reference_lists_exactly_the_exported_metrics() -> None:
    """The generated metrics reference names every metric retryd exports, once, and no other."""
    names = _metrics_table(metrics_page())
    exported = _family_names(_exposition(_populated_registry()))
    assert len(names) == len(set(names)), "a metric is listed twice"
    assert set(names) == exported, (
        f"missing from the metrics reference: {sorted(exported - set(names))}; "
        f"not exported: {sorted(set(names) - exported)}"
    )


# --- a real Prometheus scraping a real `retryd run` ---------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - 127.0.0.1 only
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


def _wait_for(
    what: str, probe: Callable[[], T | None], timeout_s: float, context: Callable[[], str]
) -> T:
    """Poll `probe` until it returns something other than None; fail naming `what` if not."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen within {timeout_s:.0f} s\n{context()}")
        time.sleep(POLL_S)


@contextmanager
def _prometheus(config: Path, storage: Path, port: int, log: Path) -> Iterator[str]:
    """A Prometheus server on 127.0.0.1:`port`, killed and reaped on the way out."""
    binary = _tool("prometheus")
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={storage}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            process.kill()
            process.wait()


def _retryd_config(http_port: int) -> str:
    return f"""
[aws]
max_attempts = 1

[discovery]
queue_prefixes = ["retry-"]

[schedule]
interval_s = 1

[drain]
receive_wait_s = 0
visibility_timeout_s = 30

[guards]
allow_targets = ["arn:aws:*:{REGION}:{ACCOUNT}:*"]

[backoff]
base_s = 0.001
max_s = 0.001

[parking]
queue = "retryd-parking"

[http]
host = "127.0.0.1"
port = {http_port}

[ledger]
backend = "memory"

[log]
level = "warning"
"""


def _prometheus_config(retryd_port: int) -> str:
    return f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {ALERTS}
scrape_configs:
  - job_name: retryd
    static_configs:
      - targets: ["127.0.0.1:{retryd_port}"]
"""


MESSAGES = 5


def test_prometheus_scrapes_a_running_retryd_and_sees_its_counters_move(
    world: World, tmp_path: Path
) -> None:
    """A real Prometheus scrapes `retryd run`, sees retryd_messages_total go from absent to
    the number of messages put in a DLQ, and evaluates every shipped alert rule cleanly."""
    _tool("prometheus")
    world.create_queue("retryd-parking")
    world.create_queue("retry-work")
    world.create_queue("dest")
    retryd_port, prometheus_port = _free_port(), _free_port()
    retryd_config = tmp_path / "retryd.toml"
    retryd_config.write_text(_retryd_config(retryd_port))
    prometheus_config = tmp_path / "prometheus.yml"
    prometheus_config.write_text(_prometheus_config(retryd_port))
    prometheus_log = tmp_path / "prometheus.log"
    retryd_url = f"http://127.0.0.1:{retryd_port}"

    with (
        retryd_run(retryd_config) as retryd,
        _prometheus(prometheus_config, tmp_path / "tsdb", prometheus_port, prometheus_log) as api,
    ):

        def context() -> str:
            # Only called when a wait has failed: stopping retryd is what lets us read its log.
            retryd.kill()
            stdout, stderr = retryd.communicate()
            return (
                f"retryd exited {retryd.returncode}; its log:\n{(stdout + stderr)[-3000:]}\n"
                f"prometheus log:\n{prometheus_log.read_text()[-3000:]}"
            )

        def query(promql: str) -> list[dict[str, Any]] | None:
            url = f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
            status, body = _get(url)
            if status != 200:
                return None
            result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
            return result

        def value(promql: str) -> float | None:
            result = query(promql)
            return float(result[0]["value"][1]) if result else None

        def status_ok(url: str) -> bool | None:
            return True if _get(url)[0] == 200 else None

        _wait_for(
            "retryd /readyz 200",
            lambda: status_ok(f"{retryd_url}/readyz"),
            START_TIMEOUT_S,
            context,
        )
        assert _get(f"{retryd_url}/healthz")[0] == 200
        _wait_for("Prometheus ready", lambda: status_ok(f"{api}/-/ready"), START_TIMEOUT_S, context)
        # A successful scrape that already carries retryd's cycle counter...
        _wait_for(
            "a scrape of retryd with a finished cycle",
            lambda: value(
                'sum(retryd_cycles_total{job="retryd"}) > 0 and on() up{job="retryd"} == 1'
            ),
            SCRAPE_TIMEOUT_S,
            context,
        )
        # ...and no message counted yet: the DLQ is empty.
        assert query("retryd_messages_total") == []

        for n in range(MESSAGES):
            world.send("retry-work", envelope("sqs", world.queue_arn("dest"), {"n": n}))

        resubmitted = (
            'sum(retryd_messages_total{job="retryd", queue="retry-work", outcome="resubmitted"})'
        )
        _wait_for(
            f"{resubmitted} == {MESSAGES}",
            lambda: True if value(resubmitted) == MESSAGES else None,
            SCRAPE_TIMEOUT_S,
            lambda: (
                f"by outcome: {query('sum by (outcome, reason) (retryd_messages_total)')}\n"
                + context()
            ),
        )
        assert world.depth("dest") == MESSAGES
        assert value('retryd_queues_discovered{job="retryd"}') == 1

        # The shipped rules load, evaluate without error against live data, and the
        # "retryd is broken" alerts stay quiet for a healthy retryd.
        expected = {rule["alert"] for rule in _alert_rules()}

        def rules_settled() -> dict[str, dict[str, Any]] | None:
            status, body = _get(f"{api}/api/v1/rules")
            if status != 200:
                return None
            rules = {
                rule["name"]: rule
                for group in json.loads(body)["data"]["groups"]
                for rule in group["rules"]
            }
            quiet = all(
                rules.get(name, {}).get("state") == "inactive"
                for name in ("RetrydDown", "RetrydNoSuccessfulCycle")
            )
            healthy = all(rule.get("health") == "ok" for rule in rules.values())
            return rules if rules.keys() == expected and healthy and quiet else None

        rules = _wait_for(
            "every alert rule loaded, evaluated ok, and RetrydDown/NoSuccessfulCycle inactive",
            rules_settled,
            SCRAPE_TIMEOUT_S,
            lambda: _get(f"{api}/api/v1/rules")[1][:3000] + "\n" + context(),
        )
        assert {rule["type"] for rule in rules.values()} == {"alerting"}
        assert all(rule["annotations"]["runbook"] for rule in rules.values())
