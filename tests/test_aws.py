"""The AWS clients' call tuning: what retryd asks of botocore for every call."""

from __future__ import annotations

from typing import Any, cast

import anyio
import anyio.lowlevel
import pytest

from retryd.aws import LazyClient, client_config, open_clients, opened, user_agent
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


def test_a_client_is_made_on_its_first_call_and_not_after_the_run(
    world: World, make_settings: SettingsFactory
) -> None:
    """Only SQS's client is made at once; another is made by its first call, then reads like
    any client; one first used after its run ended is refused, not left unclosed."""

    async def main() -> None:
        async with open_clients(make_settings().aws) as clients:
            assert "not made yet" in repr(clients.lambda_)
            with pytest.raises(AttributeError, match="made on its first call"):
                _ = clients.lambda_.meta
            assert (await clients.lambda_.list_functions())["Functions"] == []
            assert "made" in repr(clients.lambda_)
            assert clients.lambda_.meta.service_model.service_name == "lambda"
            client = await opened(clients.lambda_)
            assert client.meta is clients.lambda_.meta
            assert "not made yet" in repr(clients.s3)
        with pytest.raises(RuntimeError, match="after its run ended"):
            await clients.s3.list_buckets()

    anyio.run(main)


def test_calls_that_come_together_make_one_client() -> None:
    """Three first calls at once wait for one client, made once, and each is answered."""

    class Client:
        async def echo(self, value: int) -> int:
            await anyio.lowlevel.checkpoint()
            return value

    made: list[Client] = []

    async def make() -> Client:
        await anyio.sleep(0.01)
        made.append(Client())
        return made[-1]

    answers: list[int] = []

    async def main() -> None:
        lazy = cast(Any, LazyClient("fake", make))

        async def call(value: int) -> None:
            answers.append(await lazy.echo(value))

        async with anyio.create_task_group() as calls:
            for value in range(3):
                calls.start_soon(call, value)
        assert await opened(lazy) is made[0]

    anyio.run(main)
    assert len(made) == 1
    assert sorted(answers) == [0, 1, 2]
