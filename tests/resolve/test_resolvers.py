"""Resolution: real-shaped DLQ messages become Jobs, or Unresolvables with the reason why."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from retryd.models import (
    DeadLetter,
    Job,
    MessageAttribute,
    ParkReason,
    TargetType,
    Unresolvable,
)
from retryd.resolve import ResolverChain, build_chain
from retryd.resolve.base import (
    forward_attributes,
    stamped_attempt,
    stamped_first_failed_at,
    stamped_key,
)
from retryd.resolve.envelope import EnvelopeResolver
from retryd.resolve.keys import hashed_key, parsed_json
from retryd.resolve.static_route import StaticRouteResolver
from retryd.settings import Route
from tests import strategies
from tests.conftest import SettingsFactory
from tests.native_helpers import DLQ, letter, load_letter, queue

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "messages"
ACCOUNT = "123456789012"
REGION = "us-east-1"
ORDERS_QUEUE = DLQ
LAMBDA_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:charge"
ROUTED_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:orders"
SENT_AT = datetime.fromtimestamp(1_718_000_000, tz=UTC)


def letter_with(
    body: str | Mapping[str, Any], attributes: Mapping[str, MessageAttribute] | None = None
) -> DeadLetter:
    """A letter as SQS hands it over on a first receive: sent at SENT_AT, received once."""
    received = {"SentTimestamp": "1718000000000", "ApproximateReceiveCount": "1"}
    return letter(body, attributes, received, ORDERS_QUEUE)


def envelope(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "envelope": "retryd/v1",
        "target": {"type": "lambda", "arn": LAMBDA_ARN},
        "payload": {"orderId": "1"},
    }
    base.update(fields)
    return {key: value for key, value in base.items() if value is not _DROP}


_DROP = object()


def resolve_envelope(letter: DeadLetter) -> Job | Unresolvable | None:
    return EnvelopeResolver().resolve(letter)


def as_job(answer: Job | Unresolvable | None) -> Job:
    assert isinstance(answer, Job), answer
    return answer


def as_invalid(answer: Job | Unresolvable | None) -> str:
    assert isinstance(answer, Unresolvable), answer
    assert answer.reason is ParkReason.INVALID_ENVELOPE
    return answer.detail


ROUTES = [Route(queue="retry-orders", target=ROUTED_ARN)]


# -- fixtures: one per shape -----------------------------------------------------------


def test_fixtures_cover_every_shape() -> None:
    """There is a fixture for each target type's envelope and each non-envelope shape."""
    names = {path.stem for path in FIXTURES.glob("*.json")}
    assert {f"envelope_{kind.value}" for kind in TargetType} <= names
    assert {"envelope_schema_error", "plain_unrecognised", "not_json", "retryd_attributes"} <= names


def test_lambda_envelope_resolves_every_field() -> None:
    """The Lambda envelope sets target, compact JSON body, attempt, limit, key, first failure."""
    job = as_job(resolve_envelope(load_letter("envelope_lambda")))
    assert job.target.type is TargetType.LAMBDA
    assert job.target.arn == LAMBDA_ARN
    assert job.body == '{"orderId":"42","amount":{"currency":"EUR","cents":1999}}'
    assert (job.attempt, job.max_attempts) == (1, 3)
    assert job.key == "order-42-charge"
    assert job.first_failed_at == datetime(2024, 6, 10, 5, 50, tzinfo=UTC)
    assert job.resolver == "envelope"


def test_lambda_envelope_spelled_with_latest_is_the_unqualified_function() -> None:
    """An envelope naming `function:charge:$LATEST` targets (and keys) `function:charge`,
    as every other shape does: the allowlist, the key and the breaker see one spelling."""
    latest = as_job(
        resolve_envelope(
            letter_with(envelope(target={"type": "lambda", "arn": f"{LAMBDA_ARN}:$LATEST"}))
        )
    )
    plain = as_job(resolve_envelope(letter_with(envelope())))

    assert latest.target.arn == LAMBDA_ARN
    assert latest.key == plain.key


def test_step_functions_envelope_gets_a_hashed_key_and_defaults() -> None:
    """Without a declared key the key is the payload hash; attempt 0, no limit, failed when sent."""
    job = as_job(resolve_envelope(load_letter("envelope_stepfunctions")))
    assert job.target.type is TargetType.STEPFUNCTIONS
    assert json.loads(job.body) == {"orderId": "43", "lines": [{"sku": "A-1", "qty": 2}]}
    assert job.key == hashed_key(job.target.arn, job.body)
    assert (job.attempt, job.max_attempts) == (0, None)
    assert job.first_failed_at == SENT_AT


def test_sqs_envelope_sends_a_string_payload_as_raw_text() -> None:
    """A string payload bound for a queue is the message body itself, attributes kept."""
    job = as_job(resolve_envelope(load_letter("envelope_sqs")))
    assert job.target.type is TargetType.SQS
    assert job.body == "orderId=44;action=ship"
    assert set(job.forward_attributes) == {"tenant", "priority"}
    assert job.forward_attributes["priority"] == MessageAttribute.number(5)


def test_sns_envelope_sends_an_object_payload_as_compact_json() -> None:
    """A structured payload bound for a topic is compact JSON."""
    job = as_job(resolve_envelope(load_letter("envelope_sns")))
    assert job.target.type is TargetType.SNS
    assert job.body == '{"type":"OrderShipped","orderId":"45"}'
    assert job.attempt == 2


def test_eventbridge_envelope_becomes_a_put_events_entry() -> None:
    """The entry's Detail becomes a JSON string and the bus comes from the target, not the body."""
    job = as_job(resolve_envelope(load_letter("envelope_eventbridge")))
    assert job.target.type is TargetType.EVENTBRIDGE
    entry = json.loads(job.body)
    assert entry == {
        "Source": "shop.orders",
        "DetailType": "OrderPlaced",
        "Detail": '{"orderId":"46","total":12.5}',
        "Resources": [f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/orders"],
    }
    assert job.key == "order-46-placed"


def test_schema_error_names_each_field_on_its_own_line() -> None:
    """A broken envelope is parked with one line per problem, typos included."""
    detail = as_invalid(resolve_envelope(load_letter("envelope_schema_error")))
    assert detail.splitlines() == [
        "attempt: Input should be greater than or equal to 0",
        "maxAttempt: unknown field",
    ]


@pytest.mark.parametrize("fixture", ["plain_unrecognised", "not_json", "retryd_attributes"])
def test_non_envelopes_are_not_the_envelope_resolvers_shape(fixture: str) -> None:
    """Plain JSON and plain text are left for the next resolver."""
    assert resolve_envelope(load_letter(fixture)) is None


@pytest.mark.parametrize("fixture", ["plain_unrecognised", "not_json"])
def test_unrouted_non_envelope_is_unresolvable(
    fixture: str, make_settings: SettingsFactory
) -> None:
    """With no route for its queue, a message naming no target is parked as unresolvable."""
    answer = build_chain(make_settings()).resolve(load_letter(fixture))
    assert isinstance(answer, Unresolvable)
    assert answer.reason is ParkReason.UNRESOLVABLE
    assert answer.detail == (
        "no resolver recognised the message and no route matches queue retry-orders"
    )


@pytest.mark.parametrize("fixture", ["plain_unrecognised", "not_json"])
def test_routed_message_is_resent_unchanged(fixture: str) -> None:
    """A static route sends the body exactly as received, with its attributes."""
    letter = load_letter(fixture)
    job = as_job(StaticRouteResolver(ROUTES).resolve(letter))
    assert job.body == letter.body
    assert job.target.arn == ROUTED_ARN
    assert job.resolver == "static-route"
    assert job.key == hashed_key(ROUTED_ARN, letter.body)
    assert dict(job.forward_attributes) == dict(letter.message_attributes)


def test_routed_message_carries_its_retryd_stamps_forward() -> None:
    """Stamps give attempt, key and first failure, and are left out of the forwarded attributes."""
    job = as_job(StaticRouteResolver(ROUTES).resolve(load_letter("retryd_attributes")))
    assert job.attempt == 2
    assert job.key == "order-50-sync"
    assert job.first_failed_at == datetime(2024, 6, 9, 22, 15, tzinfo=UTC)
    assert set(job.forward_attributes) == {"tenant", "checksum"}
    assert job.forward_attributes["checksum"].binary_value == b"\x00\x01\xfe\xff"


# -- envelope schema -------------------------------------------------------------------


def test_envelope_attempt_is_the_larger_of_body_and_stamp() -> None:
    """A stamp can raise the count an envelope carries, and vice versa, never lower it."""
    stamp = {"retryd.attempt": MessageAttribute.number(4)}
    assert as_job(resolve_envelope(letter_with(envelope(attempt=1), stamp))).attempt == 4
    low_stamp = {"retryd.attempt": MessageAttribute.number(1)}
    assert as_job(resolve_envelope(letter_with(envelope(attempt=3), low_stamp))).attempt == 3


def test_envelope_key_falls_back_to_the_stamped_key() -> None:
    """Without idempotencyKey the retryd.key stamp is the key; with it, the envelope wins."""
    stamp = {"retryd.key": MessageAttribute.string("from-stamp")}
    assert as_job(resolve_envelope(letter_with(envelope(), stamp))).key == "from-stamp"
    declared = envelope(idempotencyKey="from-body")
    assert as_job(resolve_envelope(letter_with(declared, stamp))).key == "from-body"


def test_envelope_first_failure_prefers_body_then_stamp() -> None:
    """firstFailedAt beats the stamp, which beats the DLQ's SentTimestamp."""
    stamp = {"retryd.first-failed-at": MessageAttribute.string("2024-01-02T03:04:05Z")}
    from_stamp = as_job(resolve_envelope(letter_with(envelope(), stamp)))
    assert from_stamp.first_failed_at == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    body = envelope(firstFailedAt="2023-12-31T23:00:00+01:00")
    from_body = as_job(resolve_envelope(letter_with(body, stamp)))
    assert from_body.first_failed_at == datetime(2023, 12, 31, 22, 0, tzinfo=UTC)


def test_null_payload_is_allowed_and_missing_payload_is_not() -> None:
    """payload may be null (sent as JSON null) but must be present."""
    assert as_job(resolve_envelope(letter_with(envelope(payload=None)))).body == "null"
    assert as_invalid(resolve_envelope(letter_with(envelope(payload=_DROP)))) == (
        "payload: required field is missing"
    )


def test_string_payload_to_lambda_is_sent_as_json() -> None:
    """Lambda and Step Functions always get JSON, even for a string payload."""
    assert as_job(resolve_envelope(letter_with(envelope(payload="hi")))).body == '"hi"'


def test_unsupported_envelope_version_is_parked() -> None:
    """A newer envelope version is parked for a newer retryd, not guessed at."""
    detail = as_invalid(resolve_envelope(letter_with(envelope(envelope="retryd/v2"))))
    assert detail.startswith("unsupported envelope version 'retryd/v2'")


@pytest.mark.parametrize("value", ["sealed", 5, None, {"version": 1}])
def test_foreign_envelope_field_is_not_a_claim(value: Any) -> None:
    """Someone else's JSON with an `envelope` field outside retryd/* is left to other resolvers."""
    assert resolve_envelope(letter_with({"envelope": value, "orderId": "1"})) is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"attempt": "1"}, "attempt: Input should be a valid integer"),
        ({"attempt": True}, "attempt: Input should be a valid integer"),
        ({"maxAttempts": 0}, "maxAttempts: Input should be greater than or equal to 1"),
        ({"idempotencyKey": ""}, "idempotencyKey: String should have at least 1 character"),
        (
            {"idempotencyKey": "k" * 513},
            "idempotencyKey: String should have at most 512 characters",
        ),
        ({"error": {"code": "X", "stack": "..."}}, "error.stack: unknown field"),
        ({"firstFailedAt": 1718000000}, "firstFailedAt: must be an ISO-8601 timestamp"),
        ({"firstFailedAt": "2024-06-10T05:50:00"}, "firstFailedAt: Input should have timezone"),
        ({"target": {"type": "lambda"}}, "target.arn: required field is missing"),
        ({"target": {"type": "dynamodb", "arn": LAMBDA_ARN}}, "target.type: Input should be"),
        ({"target": {"type": "sqs", "arn": LAMBDA_ARN}}, "target: type 'sqs' does not match"),
        (
            {"target": {"type": "lambda", "arn": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/t"}},
            "target: unsupported target service 'dynamodb'",
        ),
        ({"target": {"type": "lambda", "arn": "charge"}}, "target: not an ARN"),
        (
            {"target": {"type": "sqs", "arn": f"arn:aws:sqs:{REGION}:abc:orders"}},
            "target: account 'abc' is not a 12-digit AWS account id",
        ),
        ({"target": "lambda"}, "target: Input should be a JSON object"),
    ],
)
def test_schema_violations_are_parked_with_the_field_path(
    fields: dict[str, Any], expected: str
) -> None:
    """Each kind of schema violation is named by its field path, never silently accepted."""
    assert as_invalid(resolve_envelope(letter_with(envelope(**fields)))).startswith(expected)


@given(account=st.text(alphabet=st.characters(blacklist_characters=":"), max_size=14))
# Another script's zero: `\d` takes it, AWS does not.
@example(account="00000000000\u0660")
def test_an_envelope_target_with_a_malformed_account_is_invalid(account: str) -> None:
    """A target account neither empty nor 12 digits parks invalid-envelope; SQS never sees it."""
    arn = f"arn:aws:sqs:{REGION}:{account}:orders"
    answer = resolve_envelope(letter_with(envelope(target={"type": "sqs", "arn": arn})))
    if account == "" or (len(account) == 12 and account.isascii() and account.isdigit()):
        assert as_job(answer).target.arn == arn
    else:
        assert "is not a 12-digit AWS account id" in as_invalid(answer)


def _bus_envelope(payload: Any) -> dict[str, Any]:
    bus_arn = f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/orders"
    return envelope(target={"type": "eventbridge", "arn": bus_arn}, payload=payload)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"Source": "s", "Detail": {}}, "payload.DetailType: required field is missing"),
        (
            {"Source": "s", "DetailType": "d", "Detail": "[1]"},
            "payload.Detail: must be a JSON object, or a string holding one",
        ),
        ({"Source": "s", "DetailType": "d", "Detail": 5}, "payload.Detail: must be a JSON object"),
        ({"Source": "s", "DetailType": "d", "Detail": {}, "Bus": "x"}, "payload.Bus: unknown"),
        (
            {"Source": "s", "DetailType": "d", "Detail": {}, "EventBusName": "default"},
            "payload: EventBusName names a different bus than target.arn",
        ),
        ("not an entry", "payload: Input should be a JSON object"),
    ],
)
def test_eventbridge_payload_must_be_a_put_events_entry(payload: Any, expected: str) -> None:
    """An EventBridge payload that is not a PutEvents entry for the target bus is parked."""
    assert as_invalid(resolve_envelope(letter_with(_bus_envelope(payload)))).startswith(expected)


def test_eventbridge_detail_string_and_time_are_kept() -> None:
    """A Detail already given as a JSON string passes through; Time is kept as ISO-8601."""
    bus_arn = f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/orders"
    payload = {
        "Source": "s",
        "DetailType": "d",
        "Detail": '{"a": 1}',
        "Time": "2024-06-10T05:50:00Z",
        "EventBusName": bus_arn,
    }
    entry = json.loads(as_job(resolve_envelope(letter_with(_bus_envelope(payload)))).body)
    assert entry == {
        "Source": "s",
        "DetailType": "d",
        "Detail": '{"a": 1}',
        "Time": "2024-06-10T05:50:00+00:00",
    }


# -- stamps ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attribute",
    [
        MessageAttribute("Number", "1.5"),
        MessageAttribute("Number", "-1"),
        MessageAttribute("Number", "1e9"),
        MessageAttribute("Number", None),
        MessageAttribute("String", "3"),
    ],
)
def test_malformed_attempt_stamp_is_ignored(attribute: MessageAttribute) -> None:
    """A retryd.attempt that is not a Number holding a whole count is not read."""
    assert stamped_attempt(letter_with("x", {"retryd.attempt": attribute})) is None


def test_attempt_stamp_accepts_custom_number_types() -> None:
    """SQS custom Number types (Number.int) still carry the count."""
    attribute = MessageAttribute("Number.int", " 7 ")
    assert stamped_attempt(letter_with("x", {"retryd.attempt": attribute})) == 7


def test_unusable_key_and_time_stamps_are_ignored() -> None:
    """An over-long key and a timestamp that is not ISO-8601 are treated as absent."""
    attributes = {
        "retryd.key": MessageAttribute.string("k" * 513),
        "retryd.first-failed-at": MessageAttribute.string("yesterday"),
    }
    letter = letter_with("x", attributes)
    assert stamped_key(letter) is None
    assert stamped_first_failed_at(letter) is None


def test_naive_stamped_time_is_read_as_utc() -> None:
    """A first-failed-at stamp without an offset is taken as UTC."""
    attributes = {"retryd.first-failed-at": MessageAttribute.string("2024-06-10T05:50:00")}
    moment = stamped_first_failed_at(letter_with("x", attributes))
    assert moment == datetime(2024, 6, 10, 5, 50, tzinfo=UTC)


def test_forward_attributes_drop_only_retryd_stamps() -> None:
    """Every attribute but retryd.* is forwarded."""
    letter = load_letter("retryd_attributes")
    assert set(forward_attributes(letter)) == {"tenant", "checksum"}


# -- static routes ---------------------------------------------------------------------


def test_first_matching_route_wins_in_config_order() -> None:
    """With overlapping routes, the earlier one in the config decides."""
    other = f"arn:aws:sqs:{REGION}:{ACCOUNT}:orders-replay"
    routes = [
        Route(queue="retry-ord*", target=other),
        Route(queue="retry-orders", target=ROUTED_ARN),
    ]
    assert StaticRouteResolver(routes).target_for("retry-orders") is not None
    assert as_job(StaticRouteResolver(routes).resolve(letter_with("x"))).target.arn == other
    assert as_job(StaticRouteResolver(routes[::-1]).resolve(letter_with("x"))).target.arn == (
        ROUTED_ARN
    )


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("retry-orders", "retry-orders", True),
        ("retry-*", "retry-orders", True),
        ("retry-*", "Retry-orders", False),
        ("retry-orders", "retry-orders-eu", False),
        ("retry-[ab]", "retry-a", True),
        ("*.fifo", "retry-orders.fifo", True),
    ],
)
def test_route_patterns(pattern: str, name: str, matches: bool) -> None:
    """Routes match the queue name exactly or as a case-sensitive glob."""
    resolver = StaticRouteResolver([Route(queue=pattern, target=ROUTED_ARN)])
    assert (resolver.target_for(name) is not None) == matches


# -- the chain -------------------------------------------------------------------------


def test_chain_order_is_envelope_then_routes(make_settings: SettingsFactory) -> None:
    """build_chain follows docs/design.md: what a message says about itself before static routes."""
    assert build_chain(make_settings()).names == (
        "envelope",
        "lambda-destination",
        "stepfunctions-execution",
        "eventbridge-dlq",
        "static-route",
    )


def test_envelope_wins_over_a_route_for_its_queue(make_settings: SettingsFactory) -> None:
    """In a routed queue an envelope still goes where it says, and a broken one is still parked."""
    chain = build_chain(make_settings(routes=[{"queue": "retry-*", "target": ROUTED_ARN}]))
    assert as_job(chain.resolve(load_letter("envelope_lambda"))).target.arn == LAMBDA_ARN
    assert as_invalid(chain.resolve(load_letter("envelope_schema_error")))
    assert as_job(chain.resolve(load_letter("plain_unrecognised"))).target.arn == ROUTED_ARN


class _Exploding:
    name = "boom"

    def resolve(self, letter: DeadLetter) -> Job | Unresolvable | None:
        raise RuntimeError(f"bug while reading {letter.body}")


class _Never:
    name = "never"

    def resolve(self, letter: DeadLetter) -> Job | Unresolvable | None:
        raise AssertionError("asked after an earlier resolver failed")


def test_resolver_bug_parks_the_message_and_logs_no_payload() -> None:
    """A raising resolver yields an Unresolvable naming it, and the log line holds no payload."""
    letter = letter_with("secret-card-number-4111")
    with capture_logs() as logs:
        answer = ResolverChain([_Exploding(), _Never()]).resolve(letter)
    assert answer == Unresolvable(
        letter, ParkReason.UNRESOLVABLE, "resolver boom failed: RuntimeError"
    )
    assert [entry["event"] for entry in logs] == ["resolver_failed"]
    assert logs[0]["resolver"] == "boom"
    assert "secret-card-number" not in repr(logs)


# -- properties ------------------------------------------------------------------------

json_values = strategies.json_values(max_leaves=10, max_size=3)
arns = st.sampled_from(
    [
        LAMBDA_ARN,
        f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:flow",
        f"arn:aws:sqs:{REGION}:{ACCOUNT}:q",
        f"arn:aws:sns:{REGION}:{ACCOUNT}:t",
        f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/b",
        f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/t",
        "arn:aws:lambda",
    ]
) | st.text(max_size=30)
targets = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from([kind.value for kind in TargetType]) | json_values,
        "arn": arns | json_values,
    },
)
bus_entries = st.fixed_dictionaries(
    {},
    optional={
        "Source": st.text(max_size=5) | json_values,
        "DetailType": st.text(max_size=5) | json_values,
        "Detail": json_values | json_values.map(json.dumps),
        "EventBusName": st.sampled_from(["b", "other"]) | json_values,
        "Resources": st.lists(st.text(max_size=5)) | json_values,
        "Time": st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat) | json_values,
    },
)
envelopes = st.fixed_dictionaries(
    {"envelope": st.sampled_from(["retryd/v1", "retryd/v2", "retryd/", "other"]) | json_values},
    optional={
        "target": targets | json_values,
        "payload": json_values | bus_entries,
        "attempt": st.integers(-2, 2**70) | json_values,
        "maxAttempts": st.integers(-2, 10) | json_values,
        "idempotencyKey": st.text(max_size=600) | json_values,
        "error": st.fixed_dictionaries({}, optional={"code": json_values, "message": json_values}),
        "firstFailedAt": st.datetimes().map(datetime.isoformat) | json_values,
        "maxAttempt": json_values,
    },
)
bodies = (
    st.text()
    | json_values.map(json.dumps)
    | envelopes.map(json.dumps)
    | st.dictionaries(st.sampled_from(["envelope", "payload", "x"]) | st.text(), json_values).map(
        json.dumps
    )
)
attribute_values = st.builds(
    MessageAttribute,
    data_type=st.sampled_from(["String", "Number", "Binary", "Number.int", "String.x"])
    | st.text(max_size=8),
    string_value=st.none() | st.text(max_size=40) | st.integers().map(str),
    binary_value=st.none() | st.binary(max_size=8),
)
attribute_maps = st.dictionaries(
    st.sampled_from(
        ["retryd.attempt", "retryd.key", "retryd.first-failed-at", "retryd.source-queue", "tenant"]
    )
    | st.text(min_size=1, max_size=10),
    attribute_values,
    max_size=6,
)
CHAIN = ResolverChain(
    [EnvelopeResolver(), StaticRouteResolver([Route(queue="retry-orders", target=ROUTED_ARN)])]
)


@settings(max_examples=400)
@given(
    body=bodies,
    attributes=attribute_maps,
    queue_name=st.sampled_from(["retry-orders", "retry-other"]),
    sent=st.sampled_from(["1718000000000", "", "abc"]),
)
def test_chain_answers_every_message_without_a_resolver_failing(
    body: str, attributes: dict[str, MessageAttribute], queue_name: str, sent: str
) -> None:
    """Any body and attributes give a well-formed Job or Unresolvable, and no resolver raises."""
    letter = DeadLetter(
        queue=queue(queue_name),
        message_id="m",
        receipt_handle="r",
        body=body,
        system_attributes={"SentTimestamp": sent},
        message_attributes=attributes,
    )
    answer = CHAIN.resolve(letter)
    if isinstance(answer, Unresolvable):
        assert answer.reason in (ParkReason.UNRESOLVABLE, ParkReason.INVALID_ENVELOPE)
        assert " failed: " not in answer.detail
        assert answer.detail
        return
    assert isinstance(answer, Job)
    assert answer.key
    assert answer.attempt >= 0
    assert answer.target.parsed.service
    assert not any(name.startswith("retryd.") for name in answer.forward_attributes)
    answer.body.encode("utf-8", errors="surrogatepass")


def test_the_chain_parses_a_body_once(make_settings: SettingsFactory) -> None:
    """Every resolver that looks at a JSON body, then its key, share one parse of it."""
    chain = build_chain(make_settings(routes=[{"queue": "retry-*", "target": ROUTED_ARN}]))
    body = json.dumps({"orderId": "parsed-once", "amount": 7})
    parsed_json.cache_clear()
    job = as_job(chain.resolve(letter_with(body)))
    assert job.target.arn == ROUTED_ARN
    assert job.key == hashed_key(ROUTED_ARN, body)
    calls = parsed_json.cache_info()
    # Parsed once (the envelope resolver); the Lambda destination and Step Functions
    # resolvers, then the key, read the same document.
    assert calls.misses == 1
    assert calls.hits >= 3


def test_a_route_kept_per_queue_is_that_queues_own() -> None:
    """Asked again, in any order, each DLQ gets its own route's target, or none."""
    resolver = StaticRouteResolver(
        [Route(queue="retry-orders", target=ROUTED_ARN), Route(queue="retry-*", target=LAMBDA_ARN)]
    )
    for _ in range(2):
        orders = resolver.target_for("retry-orders")
        assert orders is not None
        assert orders.arn == ROUTED_ARN
        other = resolver.target_for("retry-other")
        assert other is not None
        assert other.arn == LAMBDA_ARN
        assert resolver.target_for("payments-dlq") is None
