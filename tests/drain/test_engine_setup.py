"""One set-up of a place for the cycle, a redrive and a plan (issue 20 part 4), moto server."""

from __future__ import annotations

import anyio
import pytest

from retryd.admission.guards import build_guards
from retryd.aws import AwsClients, open_clients
from retryd.drain.setup import PlaceBuilder, PlaceSetup, Purpose
from retryd.models import DeadLetter, Job, Target
from retryd.settings import Settings
from retryd.targets import TargetRouter
from tests.conftest import SettingsFactory
from tests.world import World, envelope

PARKING = "retryd-parking"
DLQ = "retry-orders"
TTL_S = 86_400.0


def world_with_letters(world: World, count: int) -> None:
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    world.create_queue("dest-a")
    for n in range(count):
        world.send(DLQ, envelope("sqs", world.queue_arn("dest-a"), {"n": n}))


def builder(settings: Settings, purpose: Purpose, clients: AwsClients) -> PlaceBuilder:
    guards = build_guards(settings, ledger=None, metrics=None)
    router = TargetRouter(clients, 4) if purpose.live else None
    return PlaceBuilder(settings, purpose, guards, router=router)


def set_up_twice(settings: Settings, purpose: Purpose) -> tuple[PlaceSetup, PlaceSetup]:
    """One builder's set-up of the home place, twice (as two cycles would)."""

    async def main() -> tuple[PlaceSetup, PlaceSetup]:
        async with open_clients(settings.aws) as clients:
            build = builder(settings, purpose, clients)
            return await build.set_up(clients, key="home"), await build.set_up(clients, key="home")

    return anyio.run(main)


def test_a_cycle_keeps_a_places_parts_across_cycles(
    world: World, make_settings: SettingsFactory
) -> None:
    """The cycle's set-up keeps the parking queue, feeds, chain and sender of a place."""
    world_with_letters(world, 0)
    first, second = set_up_twice(make_settings(), Purpose.CYCLE)
    assert second.parking is first.parking
    assert (second.feeds, second.chain, second.sender) == (first.feeds, first.chain, first.sender)
    assert [queue.name for queue in second.dlqs] == [DLQ]


def test_an_operator_looks_at_a_place_afresh(world: World, make_settings: SettingsFactory) -> None:
    """A redrive's (or a console's) set-up builds a place's parts anew for each look."""
    world_with_letters(world, 0)
    first, second = set_up_twice(make_settings(), Purpose.OPERATOR)
    assert second.parking is not first.parking
    assert second.feeds is not first.feeds
    assert second.chain is not first.chain


def test_a_dry_run_has_no_sender_and_the_guards_protect_the_place(
    world: World, make_settings: SettingsFactory
) -> None:
    """A plan's set-up sends nothing; its guards never resubmit into the DLQs or parking queue."""
    world_with_letters(world, 0)
    setup, _ = set_up_twice(make_settings(), Purpose.DRY_RUN)
    assert setup.sender is None
    with pytest.raises(RuntimeError):
        setup.live_sender()
    assert world.queue_arn(DLQ) in setup.survey.protected
    letter = DeadLetter(setup.dlqs[0], "-", "-", "")
    into_dlq = Job(letter, Target.from_arn(world.queue_arn(DLQ)), "", "-")
    assert setup.guards.check(into_dlq, budget=False) is not None
    elsewhere = Job(letter, Target.from_arn(world.queue_arn("dest-a")), "", "-")
    assert setup.guards.check(elsewhere, budget=False) is None


def test_a_live_set_up_needs_a_router_and_a_dry_run_takes_none(
    make_settings: SettingsFactory,
) -> None:
    """Sending is what tells a live set-up from a dry run: a mismatch is a programming error."""
    settings = make_settings()
    guards = build_guards(settings, ledger=None, metrics=None)
    with pytest.raises(ValueError, match="router"):
        PlaceBuilder(settings, Purpose.CYCLE, guards)
