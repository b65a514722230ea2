"""Hooks on the way back, over a whole cycle on the moto server: what is sent, what is parked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retryd.settings import Settings
from tests import hook_transforms
from tests.conftest import SettingsFactory
from tests.e2e.helpers import cycle
from tests.world import World

PARKING = "retryd-parking"
SCHEMA = {"type": "object", "required": ["customerId"]}


@pytest.fixture(autouse=True)
def _release_hung_transforms() -> Iterator[None]:
    hook_transforms.RELEASE.clear()
    yield
    hook_transforms.RELEASE.set()


def parked(world: World) -> dict[str, dict[str, Any]]:
    """Parked copies by their body."""
    return {message["Body"]: message for message in world.drain(PARKING)}


def routed(make_settings: SettingsFactory, world: World, **hook: Any) -> Settings:
    return make_settings(
        routes=[{"queue": "retry-orders", "target": world.queue_arn("orders")}],
        hooks=[{"queue": "retry-orders", **hook}],
    )


def test_a_schema_parks_what_fails_it_and_sends_the_rest(
    world: World, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """invalid-payload, with the schema error on the parked copy; valid messages go through."""
    for name in (PARKING, "retry-orders", "orders"):
        world.create_queue(name)
    schema = tmp_path / "order.json"
    schema.write_text(json.dumps(SCHEMA))
    world.send("retry-orders", {"customerId": "c1"})
    world.send("retry-orders", {"customer_id": "c2"})

    report = cycle(routed(make_settings, world, schema_path=str(schema)))

    assert report.outcomes == {"resubmitted": 1, "parked": 1}
    assert [json.loads(m["Body"]) for m in world.drain("orders")] == [{"customerId": "c1"}]
    copy = parked(world)['{"customer_id": "c2"}']
    attributes = copy["MessageAttributes"]
    assert attributes["retryd.reason"]["StringValue"] == "invalid-payload"
    assert attributes["retryd.detail"]["StringValue"] == (
        'schema order.json: $ fails required ["customerId"]'
    )
    assert world.depth("retry-orders") == 0


def test_a_transform_resubmits_the_transformed_payload_stamped(
    world: World, make_settings: SettingsFactory
) -> None:
    """The example rename runs on the way back; the target sees retryd.transform."""
    for name in (PARKING, "retry-orders", "orders"):
        world.create_queue(name)
    world.send("retry-orders", {"customer_id": "c1", "total": 3})

    report = cycle(routed(make_settings, world, transform="docs.examples.rename_field:transform"))

    assert report.outcomes == {"resubmitted": 1}
    (message,) = world.drain("orders")
    assert json.loads(message["Body"]) == {"customerId": "c1", "total": 3}
    attributes = message["MessageAttributes"]
    assert attributes["retryd.transform"]["StringValue"] == (
        "docs.examples.rename_field:transform@1.0.0"
    )
    assert attributes["retryd.attempt"]["StringValue"] == "1"


@pytest.mark.parametrize(
    ("transform", "detail"),
    [("raises", "raised KeyError"), ("hangs", "did not finish within 0.5 s")],
)
def test_a_failing_transform_parks_its_message_and_the_cycle_goes_on(
    world: World, make_settings: SettingsFactory, transform: str, detail: str
) -> None:
    """Raising or hanging parks transform-failed, stamped; another queue's message is sent."""
    for name in (PARKING, "retry-orders", "retry-audit", "orders", "audit"):
        world.create_queue(name)
    world.send("retry-orders", {"customer_id": "c1"})
    world.send("retry-audit", {"event": "login"})
    settings = make_settings(
        routes=[
            {"queue": "retry-orders", "target": world.queue_arn("orders")},
            {"queue": "retry-audit", "target": world.queue_arn("audit")},
        ],
        hooks=[
            {
                "queue": "retry-orders",
                "transform": f"tests.hook_transforms:{transform}",
                "transform_timeout_s": 0.5,
            }
        ],
    )

    report = cycle(settings)

    assert report.outcomes == {"resubmitted": 1, "parked": 1}
    assert [json.loads(m["Body"]) for m in world.drain("audit")] == [{"event": "login"}]
    assert world.drain("orders") == []
    copy = parked(world)['{"customer_id": "c1"}']
    attributes = copy["MessageAttributes"]
    assert attributes["retryd.reason"]["StringValue"] == "transform-failed"
    assert detail in attributes["retryd.detail"]["StringValue"]
    assert attributes["retryd.transform"]["StringValue"] == (
        f"tests.hook_transforms:{transform}@0.0.1"
    )
    assert world.depth("retry-orders") == 0
