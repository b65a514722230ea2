"""AWS clients for one run, built from the standard AWS chain plus retryd's call tuning.

Endpoint, region and credentials are left to botocore's own resolution
(AWS_ENDPOINT_URL, AWS_REGION, profiles, the ECS task role); retryd only says how
patient each call is. Throttling of retryd's own API calls is botocore's job
(its standard/adaptive retry modes), kept apart from retryd's message attempts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import aioboto3
import aiobotocore
from aiobotocore.config import AioConfig

from retryd.settings import AwsSettings

# aiobotocore builds clients from service models at run time: there is no static
# type to name, so clients are `Any` behind these named fields.
Client = Any


@dataclass(frozen=True, slots=True)
class AwsClients:
    """One client per service retryd talks to, shared by every task of a run."""

    sqs: Client
    lambda_: Client
    stepfunctions: Client
    sns: Client
    events: Client
    # The attempt ledger's table, when ledger.backend is "dynamodb".
    dynamodb: Client


@cache
def user_agent() -> str:
    """retryd's User-Agent, built once: it names retryd in CloudTrail's userAgent field.

    A fixed string also spares botocore rebuilding and sanitising its component-wise
    User-Agent on every call (about 60 us each, a few percent of a redrive's CPU).
    """
    try:
        retryd_version = version("retryd")
    except PackageNotFoundError:
        retryd_version = "unknown"
    # The session appends its own extra (botocore's version) to this.
    return f"retryd/{retryd_version} aiobotocore/{aiobotocore.__version__}"


def client_config(settings: AwsSettings) -> AioConfig:
    return AioConfig(
        retries={"mode": settings.retry_mode, "total_max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        max_pool_connections=settings.max_pool_connections,
        user_agent=user_agent(),
        # retryd builds every request itself from typed values, so botocore's
        # per-call walk of the request against the service model only costs CPU;
        # a malformed request is still refused by the service.
        parameter_validation=False,
    )


@asynccontextmanager
async def open_clients(settings: AwsSettings) -> AsyncIterator[AwsClients]:
    """Open every client once; they are closed together when the run ends."""
    session = aioboto3.Session()
    config = client_config(settings)
    async with AsyncExitStack() as stack:

        async def make(service: str) -> Client:
            return await stack.enter_async_context(session.client(service, config=config))

        yield AwsClients(
            sqs=await make("sqs"),
            lambda_=await make("lambda"),
            stepfunctions=await make("stepfunctions"),
            sns=await make("sns"),
            events=await make("events"),
            dynamodb=await make("dynamodb"),
        )
