"""docs/examples/rename_field.py, the example transform the Hooks page shows, does what it says."""

from __future__ import annotations

from docs.examples.rename_field import transform
from retryd.resolve.hooks import FailureContext, ParkInstead

CONTEXT = FailureContext(
    "retry-orders", "arn:aws:sqs:us-east-1:123456789012:orders", 1, None, "m1", {}
)


def test_the_old_name_becomes_the_new_one_and_nothing_else_changes() -> None:
    """customer_id is renamed customerId; other fields are kept as they were."""
    assert transform({"customer_id": "c1", "total": 3}, CONTEXT) == {"customerId": "c1", "total": 3}


def test_messages_already_in_the_new_shape_pass_unchanged() -> None:
    """A message written after the producer's fix is left alone."""
    assert transform({"customerId": "c1"}, CONTEXT) == {"customerId": "c1"}


def test_both_names_with_the_same_value_collapse_to_one() -> None:
    """No conflict when both names agree."""
    assert transform({"customer_id": "c1", "customerId": "c1"}, CONTEXT) == {"customerId": "c1"}


def test_conflicting_names_are_parked_not_guessed() -> None:
    """Two different customers in one message: parked with the reason."""
    answer = transform({"customer_id": "c1", "customerId": "c2"}, CONTEXT)
    assert isinstance(answer, ParkInstead)
    assert "customer_id" in answer.reason


def test_a_payload_that_is_not_an_object_is_parked() -> None:
    """A list or a text body is not an order."""
    for payload in ([1, 2], "text", None):
        assert isinstance(transform(payload, CONTEXT), ParkInstead)


def test_the_payload_given_is_not_modified() -> None:
    """The transform returns a copy: the caller's payload is untouched."""
    payload = {"customer_id": "c1"}
    transform(payload, CONTEXT)
    assert payload == {"customer_id": "c1"}
