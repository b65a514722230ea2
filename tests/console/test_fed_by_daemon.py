"""The daemon feeds the read model: after `once`, the API shows what inspect and parking hold."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from retryd.aws import open_clients
from retryd.commands.cli import main
from retryd.console.auth import NoAuth
from retryd.control.memory import MemoryControlStore
from retryd.sandbox.world import PARKING, SANDBOX_CONFIG_TOML, build_world, sandbox_settings
from retryd.settings import Settings
from retryd.stamps import REASON, SOURCE_QUEUE
from tests.console.harness import Caller, console_for, serving
from tests.world import World


async def _parking_queue(settings: Settings) -> Counter[tuple[str, str]]:
    """(reason, source queue) of every copy in the parking queue, each handed back at once."""
    found: Counter[tuple[str, str]] = Counter()
    seen: set[str] = set()
    async with open_clients(settings.aws) as clients:
        url = (await clients.sqs.get_queue_url(QueueName=PARKING))["QueueUrl"]
        for _ in range(20):
            answer = await clients.sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
            )
            messages = answer.get("Messages", [])
            if not messages:
                break
            for message in messages:
                if message["MessageId"] in seen:
                    continue
                seen.add(message["MessageId"])
                attributes = message["MessageAttributes"]
                found[
                    (attributes[REASON]["StringValue"], attributes[SOURCE_QUEUE]["StringValue"])
                ] += 1
    return found


def _api(settings: Settings, path: str) -> Any:
    with serving(console_for(settings, MemoryControlStore()), NoAuth()) as base:
        reply = Caller(base)(path)
    assert reply.status == 200, reply.text
    return reply.json()


def test_once_then_the_console_shows_what_inspect_and_the_parking_queue_hold(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After one cycle, /api/overview's groups are inspect's and /api/parking's copies parking's."""
    config = tmp_path / "sandbox.toml"
    config.write_text(SANDBOX_CONFIG_TOML)
    settings = sandbox_settings()

    async def build() -> None:
        async with open_clients(settings.aws) as clients:
            await build_world(clients, 1)

    anyio.run(build)
    assert main(["once", "--config", str(config)]) in (0, 1)
    capsys.readouterr()
    assert main(["inspect", "--output", "json", "--config", str(config)]) in (0, 1)
    inspected = json.loads(capsys.readouterr().out)

    overview = _api(settings, "/api/overview")
    shown = sorted((g["id"], g["queue"], g["count"]) for g in overview["groups"])
    expected = sorted(
        (group["id"], queue["name"], group["count"])
        for queue in inspected["queues"]
        for group in queue["groups"]
    )
    assert shown == expected
    # Every DLQ drained is on the overview, the emptied ones with no groups.
    assert {d["name"] for d in overview["dlqs"]} == {q["name"] for q in inspected["queues"]}

    parking = _api(settings, "/api/parking?page=1")
    in_queue = anyio.run(_parking_queue, settings)
    assert in_queue, "the sandbox world parks some messages"
    assert parking["total"] == sum(in_queue.values())
    indexed: Counter[tuple[str, str]] = Counter()
    for page in range(1, parking["pages"] + 1):
        for copy in _api(settings, f"/api/parking?page={page}")["copies"]:
            indexed[(copy["reason"], copy["source_queue"])] += 1
    assert indexed == in_queue
