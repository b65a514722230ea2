"""The AWS clients' call tuning: what retryd asks of botocore for every call."""

from __future__ import annotations

from typing import Any

import anyio

from retryd.aws import client_config, open_clients, user_agent
from retryd.settings import AwsSettings
from retryd.version import package_version
from tests.conftest import SettingsFactory
from tests.world import World


def test_requests_are_not_validated_client_side_and_name_retryd() -> None:
    """retryd builds its requests itself: no per-call validation walk, a fixed User-Agent."""
    # The stubs describe AioConfig's constructor, not the attributes it sets.
    config: Any = client_config(AwsSettings())
    assert config.parameter_validation is False
    assert config.user_agent == user_agent()
    assert user_agent().startswith("retryd/")


def test_the_user_agent_names_the_installed_version() -> None:
    """The version in the User-Agent is the installed distribution's (retryd-aws), not 'unknown'."""
    assert package_version() != "unknown"
    assert user_agent().startswith(f"retryd/{package_version()} ")


def test_every_call_carries_retrys_user_agent(world: World, make_settings: SettingsFactory) -> None:
    """The User-Agent a call sends is retryd's fixed string, not botocore's per-call one."""
    sent: list[str] = []

    async def main() -> None:
        async with open_clients(make_settings().aws) as clients:
            clients.sqs.meta.events.register(
                "before-send.sqs.ListQueues",
                lambda request, **_: sent.append(request.headers["User-Agent"]),
            )
            await clients.sqs.list_queues()

    anyio.run(main)
    (header,) = sent
    text = header.decode() if isinstance(header, bytes) else header
    assert text.startswith(user_agent())
    # botocore's own per-call string has these; the fixed one does not.
    assert " ua/" not in text
    assert " os/" not in text
