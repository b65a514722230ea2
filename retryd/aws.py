"""AWS clients for one run, built from the standard AWS chain plus retryd's call tuning.

Endpoint, region and credentials are left to botocore's own resolution
(AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, profiles, the ECS task role), with one
addition: AWS_REGION, which the AWS SDKs for other languages and the Lambda and
ECS runtimes set, is honoured when AWS_DEFAULT_REGION is not (botocore reads only
the latter). retryd only says how patient each call is. Throttling of retryd's
own API calls is botocore's job (its standard/adaptive retry modes), kept apart
from retryd's message attempts.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import cache, partial
from typing import TYPE_CHECKING, Any, TypeVar

import aioboto3
import aiobotocore
import anyio
from aiobotocore.config import AioConfig
from botocore.exceptions import ProfileNotFound

from retryd.errors import AwsSetupError

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient
    from types_aiobotocore_events import EventBridgeClient
    from types_aiobotocore_lambda import LambdaClient
    from types_aiobotocore_sns import SNSClient
    from types_aiobotocore_sqs import SQSClient
    from types_aiobotocore_stepfunctions import SFNClient
from retryd.settings import AwsSettings
from retryd.version import package_version

# aiobotocore builds clients from service models at run time. The fields of AwsClients
# are typed with the types-aiobotocore stubs (a dev dependency, read by mypy only); code
# that takes "any one client" (the ledger, the batch targets) names it `Client`.
Client = Any
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AwsClients:
    """One client per service retryd talks to, shared by every task of a run."""

    sqs: SQSClient
    lambda_: LambdaClient
    stepfunctions: SFNClient
    sns: SNSClient
    events: EventBridgeClient
    # The attempt ledger's table, when ledger.backend is "dynamodb".
    dynamodb: DynamoDBClient
    # Reading back the stream batches Lambda event source mappings gave up on
    # (retryd.targets.stream_replay); no stubs are installed for these two.
    kinesis: Client
    dynamodbstreams: Client
    # S3 failure destinations ([discovery] s3_sources); None where a caller builds its own.
    s3: Client = None


@cache
def user_agent() -> str:
    """retryd's User-Agent, built once: it names retryd in CloudTrail's userAgent field.

    A fixed string also spares botocore rebuilding and sanitising its component-wise
    User-Agent on every call (about 60 us each, a few percent of a redrive's CPU).
    """
    # The session appends its own extra (botocore's version) to this.
    return f"retryd/{package_version()} aiobotocore/{aiobotocore.__version__}"


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


NO_REGION = (
    "no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION, a region in the AWS profile, "
    "or --region)"
)


def region_from_environ(environ: Mapping[str, str]) -> str | None:
    """The region the environment names: AWS_DEFAULT_REGION first (botocore's), then AWS_REGION."""
    return environ.get("AWS_DEFAULT_REGION") or environ.get("AWS_REGION") or None


def open_session(environ: Mapping[str, str] | None = None) -> aioboto3.Session:
    """A session whose profile exists and which knows its region, or AwsSetupError saying why not.

    Checked here, once, rather than left to the first client: botocore's own
    errors (NoRegionError, ProfileNotFound) would surface as a traceback from
    wherever that happens to be.
    """
    environ = os.environ if environ is None else environ
    try:
        # An explicit region would override the profile's own, so it is passed only
        # when the environment names one; otherwise the profile (or IMDS) decides.
        session = aioboto3.Session(region_name=region_from_environ(environ))
        region = session.region_name
    except ProfileNotFound as exc:
        raise AwsSetupError(f"{exc}: fix AWS_PROFILE (or --profile)") from None
    if not region:
        raise AwsSetupError(NO_REGION)
    return session


# What a lazy client cannot hand out before it is made: not calls, so not awaitable.
_NOT_CALLS = frozenset({"meta", "exceptions", "get_paginator", "get_waiter", "can_paginate"})


class LazyClient:
    """One service's client, made on its first call and closed with the others.

    Building a client from its service model costs 3 to 35 ms of CPU (S3's the most),
    and most runs call two or three of the nine services (a redrive of SQS DLQs to
    SQS queues calls SQS alone): made at once, the others cost every `retryd once`
    about 80 ms. A call (any of the client's async methods) makes the client first,
    under a lock, so concurrent first calls make one. What is not a call (`meta`,
    `exceptions`, `get_paginator`, `get_waiter`) needs the client made: `await
    opened(client)` first.
    """

    __slots__ = ("_client", "_lock", "_make", "_service")

    def __init__(self, service: str, make: Callable[[], Awaitable[Client]]) -> None:
        self._service = service
        self._make = make
        self._client: Client = None
        self._lock = anyio.Lock()

    async def open(self) -> Client:
        """The client, made now if this is its first use."""
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    self._client = await self._make()
        return self._client

    def __getattr__(self, name: str) -> Any:
        client = self._client
        if client is not None:
            return getattr(client, name)
        if name.startswith("_") or name in _NOT_CALLS:
            raise AttributeError(
                f"the {self._service} client is made on its first call; "
                f"`await retryd.aws.opened(client)` before reading {name!r}"
            )

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await getattr(await self.open(), name)(*args, **kwargs)

        return call

    def __repr__(self) -> str:
        state = "made" if self._client is not None else "not made yet"
        return f"LazyClient({self._service!r}, {state})"


async def opened(client: T) -> T:
    """`client` itself once made (a LazyClient is made now); any other client as it is."""
    if isinstance(client, LazyClient):
        made: T = await client.open()
        return made
    return client


async def enter_clients(
    stack: AsyncExitStack, session: aioboto3.Session, config: AioConfig, region: str | None = None
) -> AwsClients:
    """One client per service from `session` (in `region`, else the session's), each closed
    with `stack`: the one list of the services retryd talks to.

    SQS's is made now (every command reads its `meta` and calls it); the others on
    their first call (LazyClient), until `stack` closes.
    """
    closed = False

    def close() -> None:
        nonlocal closed
        closed = True

    # Called after the clients made later are closed (an exit stack unwinds last-in first).
    stack.callback(close)

    async def make(service: str) -> Client:
        if closed:
            raise RuntimeError(f"the {service} client is wanted after its run ended")
        return await stack.enter_async_context(
            session.client(service, region_name=region, config=config)
        )

    def lazy(service: str) -> Any:
        return LazyClient(service, partial(make, service))

    return AwsClients(
        sqs=await make("sqs"),
        lambda_=lazy("lambda"),
        stepfunctions=lazy("stepfunctions"),
        sns=lazy("sns"),
        events=lazy("events"),
        dynamodb=lazy("dynamodb"),
        kinesis=lazy("kinesis"),
        dynamodbstreams=lazy("dynamodbstreams"),
        s3=lazy("s3"),
    )


@asynccontextmanager
async def open_clients(settings: AwsSettings) -> AsyncIterator[AwsClients]:
    """Open every client once; they are closed together when the run ends."""
    session = open_session()
    async with AsyncExitStack() as stack:
        yield await enter_clients(stack, session, client_config(settings))
