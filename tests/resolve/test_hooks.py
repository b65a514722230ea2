"""Hooks on the way back: transforms and JSON Schema checks between resolution and the guards."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import jsonschema.validators
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from structlog.testing import capture_logs

from retryd.errors import ConfigError
from retryd.metrics import Metrics
from retryd.models import DeadLetter, Job, ParkReason, Target, Unresolvable
from retryd.resolve import build_chain
from retryd.resolve.hooks import FailureContext, Hooks, HookSet, Schema, load_transform
from retryd.settings import HookRule
from retryd.stamps import TRANSFORM, stamp_for_resubmit
from tests import hook_transforms, strategies
from tests.conftest import SettingsFactory
from tests.native_helpers import letter, queue, queue_arn

WORKER = queue_arn("orders-worker")
OTHER_DLQ = queue("retry-audit")
ORDER_SCHEMA = {
    "type": "object",
    "required": ["customerId"],
    "properties": {"customerId": {"type": "string"}, "total": {"type": "number"}},
}


@pytest.fixture(autouse=True)
def _release_hung_transforms() -> Iterator[None]:
    hook_transforms.RELEASE.clear()
    hook_transforms.SEEN.clear()
    yield
    hook_transforms.RELEASE.set()


@pytest.fixture
def schema_file(tmp_path: Path) -> str:
    path = tmp_path / "order.schema.json"
    path.write_text(json.dumps(ORDER_SCHEMA))
    return str(path)


def routed_settings(make_settings: SettingsFactory, *hooks: dict[str, Any]) -> Any:
    return make_settings(
        routes=[{"queue": "retry-*", "target": WORKER}],
        hooks=list(hooks),
    )


def run(
    make_settings: SettingsFactory,
    hooks: Sequence[dict[str, Any]],
    *letters: DeadLetter,
    metrics: Metrics | None = None,
) -> list[Job | Unresolvable]:
    chain = build_chain(routed_settings(make_settings, *hooks), metrics=metrics)

    async def go() -> list[Job | Unresolvable]:
        return await chain.resolve_all(letters)

    result: list[Job | Unresolvable] = anyio.run(go)
    return result


def test_no_hooks_configured_leaves_every_job_as_resolved(make_settings: SettingsFactory) -> None:
    """Hooks are off by default: the resolved job is sent as the resolver made it."""
    (job,) = run(make_settings, [], letter({"customer_id": "c1"}))
    assert isinstance(job, Job)
    assert job.body == '{"customer_id": "c1"}'
    assert TRANSFORM not in job.forward_attributes


def test_transform_rewrites_the_payload_and_stamps_name_and_version(
    make_settings: SettingsFactory,
) -> None:
    """The transform's answer is what is sent; retryd.transform names it with its version."""
    hooks = [{"queue": "retry-orders", "transform": "tests.hook_transforms:add_flag"}]
    (job,) = run(
        make_settings,
        hooks,
        letter({"id": 1}, {"ErrorCode": "500", "ErrorMessage": "boom"}, message_id="m1"),
    )
    assert isinstance(job, Job)
    assert json.loads(job.body) == {"id": 1, "fixed": True, "attempt_seen": 0}
    stamp = job.forward_attributes[TRANSFORM].string_value
    assert stamp == "tests.hook_transforms:add_flag@0.0.1"
    attributes, dropped = stamp_for_resubmit(job)
    assert attributes[TRANSFORM].string_value == stamp
    assert dropped == 0
    (payload, context) = hook_transforms.SEEN[0]
    assert payload == {"id": 1}
    assert context.source_queue == "retry-orders"
    assert context.target_arn == WORKER
    assert context.error == "500: boom"
    assert context.message_id == "m1"


def test_the_idempotency_key_stays_the_original_messages(make_settings: SettingsFactory) -> None:
    """Attempts keep counting across transformed resends: the key is not the new body's."""
    original = letter({"id": 1})
    (plain,) = run(make_settings, [], original)
    hooks = [{"queue": "retry-*", "transform": "tests.hook_transforms:add_flag"}]
    (transformed,) = run(make_settings, hooks, original)
    assert isinstance(plain, Job)
    assert isinstance(transformed, Job)
    assert transformed.key == plain.key
    assert transformed.body != plain.body


def test_rules_match_by_queue_or_by_target_first_match_wins(
    make_settings: SettingsFactory,
) -> None:
    """A queue rule applies to its DLQ only; a target rule to every message going there."""
    by_queue = [{"queue": "retry-audit", "transform": "tests.hook_transforms:to_text"}]
    (untouched,) = run(make_settings, by_queue, letter({"id": 1}))
    assert isinstance(untouched, Job)
    assert untouched.body == '{"id": 1}'
    by_target = [
        {"target": "arn:aws:sqs:*:*:orders-*", "transform": "tests.hook_transforms:to_text"},
        {"queue": "retry-*", "transform": "tests.hook_transforms:parks"},
    ]
    first, second = run(
        make_settings, by_target, letter({"id": 1}), letter("x", on=OTHER_DLQ, message_id="m2")
    )
    assert isinstance(first, Job)
    assert first.body == "plain text"
    assert isinstance(second, Job)
    assert second.body == "plain text"


def test_a_raising_transform_parks_its_message_and_the_rest_goes_on(
    make_settings: SettingsFactory,
) -> None:
    """transform-failed names the exception type, not its message; other messages are sent."""
    hooks = [
        {"queue": "retry-orders", "transform": "tests.hook_transforms:raises"},
    ]
    with capture_logs() as logs:
        failed, other = run(
            make_settings,
            hooks,
            letter({"card": "4111"}),
            letter({"id": 2}, on=OTHER_DLQ, message_id="m2"),
        )
    assert isinstance(failed, Unresolvable)
    assert failed.reason is ParkReason.TRANSFORM_FAILED
    assert "raised KeyError" in failed.detail
    assert "4111" not in failed.detail
    assert "4111" not in json.dumps(logs, default=str)
    assert failed.letter.message_attributes[TRANSFORM].string_value == (
        "tests.hook_transforms:raises@0.0.1"
    )
    assert isinstance(other, Job)


def test_a_hung_transform_is_parked_after_its_time_limit(make_settings: SettingsFactory) -> None:
    """The time limit ends the wait, not the batch: transform-failed, the others go through."""
    hooks = [
        {
            "queue": "retry-orders",
            "transform": "tests.hook_transforms:hangs",
            "transform_timeout_s": 0.2,
        },
    ]
    hung, other = run(
        make_settings, hooks, letter({"id": 1}), letter({"id": 2}, on=OTHER_DLQ, message_id="m2")
    )
    assert isinstance(hung, Unresolvable)
    assert hung.reason is ParkReason.TRANSFORM_FAILED
    assert "did not finish within 0.2 s" in hung.detail
    assert isinstance(other, Job)


def test_a_transform_can_ask_to_park(make_settings: SettingsFactory) -> None:
    """ParkInstead parks the message transform-parked, with the transform's reason."""
    hooks = [{"queue": "retry-*", "transform": "tests.hook_transforms:parks"}]
    (answer,) = run(make_settings, hooks, letter({"id": 1}))
    assert isinstance(answer, Unresolvable)
    assert answer.reason is ParkReason.TRANSFORM_PARKED
    assert answer.detail == "tests.hook_transforms:parks@0.0.1: poison order"


def test_an_answer_that_is_not_json_is_a_failed_transform(make_settings: SettingsFactory) -> None:
    """A set cannot be sent: transform-failed, naming the type returned."""
    hooks = [{"queue": "retry-*", "transform": "tests.hook_transforms:not_json"}]
    (answer,) = run(make_settings, hooks, letter({"id": 1}))
    assert isinstance(answer, Unresolvable)
    assert answer.reason is ParkReason.TRANSFORM_FAILED
    assert "returned set" in answer.detail


def test_schema_parks_what_fails_it_with_path_and_keyword(
    make_settings: SettingsFactory, schema_file: str
) -> None:
    """invalid-payload names the schema file, the JSON path and the failing keyword."""
    hooks = [{"queue": "retry-*", "schema_path": schema_file}]
    good, missing, wrong_type, text = run(
        make_settings,
        hooks,
        letter({"customerId": "c1"}),
        letter({"total": 3}, message_id="m2"),
        letter({"customerId": 7, "total": "secret-value"}, message_id="m3"),
        letter("not json", message_id="m4"),
    )
    assert isinstance(good, Job)
    for answer in (missing, wrong_type, text):
        assert isinstance(answer, Unresolvable)
        assert answer.reason is ParkReason.INVALID_PAYLOAD
        assert answer.detail.startswith("schema order.schema.json: ")
        assert TRANSFORM not in answer.letter.message_attributes
    assert isinstance(missing, Unresolvable)
    assert missing.detail == 'schema order.schema.json: $ fails required ["customerId"]'
    assert isinstance(wrong_type, Unresolvable)
    assert wrong_type.detail == 'schema order.schema.json: $.total fails type "number"'
    assert "secret-value" not in wrong_type.detail
    assert isinstance(text, Unresolvable)
    assert "not JSON" in text.detail


def test_the_schema_checks_the_transformed_payload(
    make_settings: SettingsFactory, schema_file: str
) -> None:
    """Transform first, then validate: the example rename makes an old message pass."""
    hooks = [
        {
            "queue": "retry-*",
            "transform": "docs.examples.rename_field:transform",
            "schema_path": schema_file,
        }
    ]
    (job,) = run(make_settings, hooks, letter({"customer_id": "c1"}))
    assert isinstance(job, Job)
    assert json.loads(job.body) == {"customerId": "c1"}
    assert job.forward_attributes[TRANSFORM].string_value == (
        "docs.examples.rename_field:transform@1.0.0"
    )


def test_each_run_is_counted(make_settings: SettingsFactory, schema_file: str) -> None:
    """retryd_hook_runs_total counts transforms and schema checks by name and result."""
    metrics = Metrics(CollectorRegistry())
    hooks = [
        {"queue": "retry-orders", "transform": "tests.hook_transforms:add_flag"},
        {"queue": "retry-audit", "schema_path": schema_file},
    ]
    run(
        make_settings,
        hooks,
        letter({"id": 1}),
        letter({"customerId": "c"}, on=OTHER_DLQ, message_id="m2"),
        letter({}, on=OTHER_DLQ, message_id="m3"),
        metrics=metrics,
    )

    def count(**labels: str) -> float | None:
        return metrics.registry.get_sample_value("retryd_hook_runs_total", labels)

    assert count(hook="transform", name="tests.hook_transforms:add_flag", result="ok") == 1
    assert count(hook="validate", name="order.schema.json", result="ok") == 1
    assert count(hook="validate", name="order.schema.json", result="invalid") == 1


def test_unresolvable_messages_pass_through_untouched(make_settings: SettingsFactory) -> None:
    """Only Jobs meet hooks: what is already parked keeps its reason."""
    settings = make_settings(hooks=[{"queue": "*", "transform": "tests.hook_transforms:parks"}])
    chain = build_chain(settings)

    async def go() -> list[Job | Unresolvable]:
        return await chain.resolve_all([letter({"id": 1})])

    (answer,) = anyio.run(go)
    assert isinstance(answer, Unresolvable)
    assert answer.reason is ParkReason.UNRESOLVABLE


# -- loading -------------------------------------------------------------------------------


def test_entry_points_are_found_with_their_distributions_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name in the retryd.transforms group loads its callable, stamped with the dist version."""
    dist = tmp_path / "shop_transforms-2.3.4.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shop-transforms\nVersion: 2.3.4\n")
    (dist / "entry_points.txt").write_text(
        "[retryd.transforms]\nrename = docs.examples.rename_field:transform\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    transform = load_transform("rename")
    assert transform.label == "rename@2.3.4"
    context = FailureContext("retry-orders", WORKER, 0, None, "m1", {})
    assert transform.function({"customer_id": 1}, context) == {"customerId": 1}


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("no-such-transform", "no entry point"),
        ("tests.no_such_module:f", "cannot import"),
        ("tests.hook_transforms:missing", "has no 'missing'"),
        ("tests.hook_transforms:NOT_CALLABLE", "is not callable"),
    ],
)
def test_a_transform_that_cannot_be_loaded_is_a_config_error(spec: str, problem: str) -> None:
    """Start-up stops (exit 2) with a line naming the transform."""
    with pytest.raises(ConfigError) as caught:
        load_transform(spec)
    assert problem in caught.value.problems[0]


def test_schema_problems_are_config_errors(tmp_path: Path, make_settings: SettingsFactory) -> None:
    """Missing, unparsable and invalid schemas stop start-up, each named by its rule."""
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{")
    bad_schema = tmp_path / "schema.json"
    bad_schema.write_text(json.dumps({"type": "no-such-type"}))
    settings = make_settings(
        hooks=[
            {"queue": "a", "schema_path": str(tmp_path / "missing.json")},
            {"queue": "b", "schema_path": str(bad_json)},
            {"queue": "c", "schema_path": str(bad_schema)},
        ]
    )
    with pytest.raises(ConfigError) as caught:
        Hooks.from_settings(settings)
    first, second, third = caught.value.problems
    assert first.startswith("hooks.0.schema_path")
    assert "file not found" in first
    assert second.startswith("hooks.1.schema_path")
    assert "not valid JSON" in second
    assert third.startswith("hooks.2.schema_path")
    assert "not a valid JSON Schema" in third


def test_a_rule_needs_one_scope_and_one_hook(make_settings: SettingsFactory) -> None:
    """queue xor target, and a transform or a schema: anything else is refused at load."""
    for rule in (
        {"transform": "x"},
        {"queue": "a", "target": "arn:aws:sqs:*:*:*", "transform": "x"},
        {"queue": "a"},
    ):
        with pytest.raises(ValidationError):
            make_settings(hooks=[rule])


# -- property ------------------------------------------------------------------------------


_HOOKS = Hooks(
    [
        (
            HookRule(queue="*", transform="docs.examples.rename_field:transform"),
            HookSet(
                load_transform("docs.examples.rename_field:transform"),
                5.0,
                Schema("order", jsonschema.validators.validator_for(ORDER_SCHEMA)(ORDER_SCHEMA)),
            ),
        )
    ]
)


@settings(max_examples=100, deadline=None)
@given(body=st.text(max_size=30) | strategies.json_values().map(json.dumps))
def test_the_example_transform_and_a_schema_never_raise(body: str) -> None:
    """Any body through the example transform and a schema: a Job or a parked message."""
    job = Job(letter(body), Target.from_arn(WORKER), body, "key")

    async def go() -> list[Job | Unresolvable]:
        return await _HOOKS.apply([job])

    (answer,) = anyio.run(go)
    if isinstance(answer, Job):
        # Only what passes the schema is sent: an object with a string customerId.
        assert isinstance(json.loads(answer.body)["customerId"], str)
        assert answer.key == "key"
    else:
        assert answer.reason in (ParkReason.INVALID_PAYLOAD, ParkReason.TRANSFORM_PARKED)


def test_waiting_for_a_transform_thread_does_not_count_against_the_time_limit(
    make_settings: SettingsFactory,
) -> None:
    """Eight hung transforms hold every transform thread until their own limit: a ninth,
    quick one waits for a thread, then runs and is sent, not parked for the wait."""
    hooks = [
        {
            "queue": "retry-orders",
            "transform": "tests.hook_transforms:hangs",
            "transform_timeout_s": 0.5,
        },
        # Shorter than the hung ones' limit: it cannot get a thread before its own would end.
        {
            "queue": "retry-audit",
            "transform": "tests.hook_transforms:quick",
            "transform_timeout_s": 0.3,
        },
    ]
    hung = [letter({"id": n}, message_id=f"h{n}") for n in range(8)]
    *parked, quick = run(
        make_settings, hooks, *hung, letter({"id": 9}, on=OTHER_DLQ, message_id="q")
    )
    assert all(isinstance(answer, Unresolvable) for answer in parked)
    assert isinstance(quick, Job), quick
    assert json.loads(quick.body) == {"id": 9, "quick": True}


def test_a_transform_that_changes_its_payload_in_place_sends_the_change(
    make_settings: SettingsFactory,
) -> None:
    """The payload is the transform's own copy: changed in place and returned, the change is
    what is sent, not the original bytes."""
    hooks = [{"queue": "retry-*", "transform": "tests.hook_transforms:mutates"}]
    (job,) = run(make_settings, hooks, letter({"id": 1}))
    assert isinstance(job, Job)
    assert json.loads(job.body) == {"id": 1, "fixed": True}


def test_a_transform_that_calls_sys_exit_parks_its_message_and_retryd_goes_on(
    make_settings: SettingsFactory,
) -> None:
    """SystemExit from a transform is the transform's failure: transform-failed, not the end of
    the daemon, and the other messages of the batch are sent."""
    hooks = [{"queue": "retry-orders", "transform": "tests.hook_transforms:exits"}]
    failed, other = run(
        make_settings, hooks, letter({"id": 1}), letter({"id": 2}, on=OTHER_DLQ, message_id="m2")
    )
    assert isinstance(failed, Unresolvable)
    assert failed.reason is ParkReason.TRANSFORM_FAILED
    assert "raised SystemExit" in failed.detail
    assert isinstance(other, Job)


def test_an_answer_that_cannot_be_compared_fails_its_message_alone(
    make_settings: SettingsFactory,
) -> None:
    """A transform answer that raises when compared (a NumPy array, say) is a failed transform
    for its message; the other messages of the batch are still resolved."""
    hooks = [{"queue": "retry-orders", "transform": "tests.hook_transforms:incomparable"}]
    failed, other = run(
        make_settings, hooks, letter({"id": 1}), letter({"id": 2}, on=OTHER_DLQ, message_id="m2")
    )
    assert isinstance(failed, Unresolvable)
    assert failed.reason is ParkReason.TRANSFORM_FAILED
    assert isinstance(other, Job)
