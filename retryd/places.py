"""The places retryd works in (account and region) and the AWS clients for each.

With no `[[accounts]]` there is one place: the home account in the session's
region, with the clients `aws.open_clients` has always built. With accounts
listed, each (account, region) pair is a place. The home account's places use
the session's own credentials (the AWS chain); a member account's places use
credentials from sts:AssumeRole on its role, one set per account shared by its
regions. Those credentials are botocore's refreshable kind: aiobotocore calls
AssumeRole again before they expire, on the first call that finds them due.

Clients for a place are opened on first use and kept for the run. Opening them
calls nothing; a role that cannot be assumed shows up when the place is first
used (`Places.ready`), as that place's error only.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aioboto3
import anyio
from aiobotocore.config import AioConfig
from aiobotocore.credentials import (
    AioAssumeRoleCredentialFetcher,
    AioCredentialResolver,
    AioDeferredRefreshableCredentials,
)
from aiobotocore.session import AioSession
from botocore.credentials import CredentialProvider
from botocore.exceptions import BotoCoreError, ClientError
from botocore.session import Session as BotocoreSession

from retryd import classify
from retryd.arns import Arn, is_queue_url, is_region_name, parse_glob, parse_queue_url
from retryd.aws import AwsClients, client_config, enter_clients, open_clients, open_session
from retryd.errors import AwsSetupError, ExitCode, RetrydError
from retryd.settings import AccountSettings, GuardSettings, Settings

# aiobotocore logs a failed refresh as a warning with its traceback (through the
# standard library's last-resort handler, onto stderr). retryd says it once itself,
# as the place's error (`place-failed`), so that line is kept out. Process-wide:
# retryd is the whole process.
logging.getLogger("aiobotocore.credentials").setLevel(logging.ERROR)

# The RoleSessionName every AssumeRole names: CloudTrail in the member account shows it.
ROLE_SESSION_NAME = "retryd"
# What botocore calls these credentials (its `method`, shown in its debug logs).
ASSUME_ROLE_METHOD = "retryd-assume-role"
# The services retryd sends to: a wildcard region in `allow_targets` stands for the
# regions botocore knows them in.
TARGET_SERVICES = ("sqs", "sns", "lambda", "states", "events")
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True, slots=True, order=True)
class Place:
    """One account in one region. `account_id` is "" only when it was never needed.

    (With no [[accounts]] retryd does not ask STS who it is: the queues' ARNs say it.)
    """

    account_id: str
    region: str

    @classmethod
    def of_arn(cls, arn: str) -> Place:
        """The account and region an ARN names (ValueError when it is no ARN)."""
        parsed = Arn.parse(arn)
        return cls(parsed.account, parsed.region)

    def __str__(self) -> str:
        return f"{self.account_id or 'home'}/{self.region}"


class PlaceError(RetrydError):
    """A place cannot be used now (its role cannot be assumed): the others go on.

    Exit 1 when it stops a command, as for a cycle that had a place fail.
    """

    exit_code = ExitCode.CYCLE_FAILED

    def __init__(self, place: Place, why: str, error_class: str = "config") -> None:
        self.place = place
        self.why = why
        # A bounded label: classify's ErrorClass values.
        self.error_class = error_class
        super().__init__(why)


T = TypeVar("T")
# What makes one place fail while the others go on (a bug is not one of them).
PLACE_FAILURES: tuple[type[Exception], ...] = (PlaceError, RetrydError, ClientError, BotoCoreError)


class _Provide(CredentialProvider):
    """Hands the session one credentials object: the member account's refreshable ones."""

    METHOD = ASSUME_ROLE_METHOD

    def __init__(self, credentials: AioDeferredRefreshableCredentials) -> None:
        super().__init__()
        self._credentials = credentials

    async def load(self) -> AioDeferredRefreshableCredentials:
        return self._credentials


@dataclass
class _Member:
    """A member account: its role's refreshable credentials and a session using them."""

    account: AccountSettings
    credentials: AioDeferredRefreshableCredentials
    session: aioboto3.Session


def assumed_credentials(
    sts_session: AioSession,
    source: Any,
    account: AccountSettings,
    config: AioConfig,
    region: str,
    *,
    duration_s: int | None = None,
) -> AioDeferredRefreshableCredentials:
    """Refreshable credentials for `account`'s role, assumed with `source` (the home chain's).

    Nothing is called until they are first used; aiobotocore calls AssumeRole again
    when they come within its refresh window of expiring. `duration_s` (tests only)
    asks for a shorter session than STS's default hour.
    """
    if account.role_arn is None:
        raise ValueError(f"account {account.account_id} has no role_arn to assume")

    def sts_client(_service: str, **keys: str) -> Any:
        # The fetcher asks for "sts" with the source credentials' keys. The client
        # honours AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_STS like every other.
        return sts_session.create_client(
            "sts",
            region_name=region,
            config=config,
            aws_access_key_id=keys["aws_access_key_id"],
            aws_secret_access_key=keys["aws_secret_access_key"],
            aws_session_token=keys.get("aws_session_token"),
        )

    extra: dict[str, Any] = {"RoleSessionName": ROLE_SESSION_NAME}
    if account.external_id is not None:
        extra["ExternalId"] = account.external_id
    if duration_s is not None:
        extra["DurationSeconds"] = duration_s
    fetcher = AioAssumeRoleCredentialFetcher(
        client_creator=sts_client,
        source_credentials=source,
        role_arn=account.role_arn,
        extra_args=extra,
    )
    return AioDeferredRefreshableCredentials(
        refresh_using=fetcher.fetch_credentials, method=ASSUME_ROLE_METHOD
    )


def target_regions(
    guards: GuardSettings, botocore: BotocoreSession | None = None
) -> frozenset[str]:
    """The regions a target may be sent to in, beyond the listed places' own.

    Those `guards.allow_targets` names: a pattern's literal region as it is; a wildcard
    region as every region botocore's endpoint data knows for a target service in the
    pattern's partitions (all of them with `allow_any_target`). A finite set, so the
    clients made for targets stay bounded whatever region a DLQ's writer names.
    """
    patterns = [("*", "*", "*")] if guards.allow_any_target else []
    for glob in guards.allow_targets:
        partition, service, region, _, _ = parse_glob(glob)
        patterns.append((partition, service, region))
    botocore = botocore or BotocoreSession()
    regions: set[str] = set()
    for partition_glob, service_glob, region_glob in patterns:
        if not _GLOB_CHARS.intersection(region_glob):
            regions.add(region_glob)
            continue
        for partition in fnmatch.filter(botocore.get_available_partitions(), partition_glob):
            for service in fnmatch.filter(TARGET_SERVICES, service_glob):
                known: Iterable[str] = botocore.get_available_regions(service, partition)
                regions.update(fnmatch.filter(known, region_glob))
    return frozenset(regions)


def _session_with(credentials: AioDeferredRefreshableCredentials) -> aioboto3.Session:
    core = AioSession()
    core.register_component("credential_provider", AioCredentialResolver([_Provide(credentials)]))
    return aioboto3.Session(botocore_session=core)


@dataclass
class Places:
    """Every place retryd drains, the home place, and the clients for each (opened on first use)."""

    home: Place
    places: tuple[Place, ...]
    # False with no [[accounts]]: one place, today's behaviour, no account labels asked for.
    configured: bool
    _home_session: aioboto3.Session | None
    _members: dict[str, _Member]
    _config: AioConfig | None
    _stack: AsyncExitStack | None
    _clients: dict[Place, AwsClients] = field(default_factory=dict)
    _locks: dict[Place, anyio.Lock] = field(default_factory=dict)
    # Regions outside the places that a target may be sent to in (see `target_regions`).
    _target_regions: frozenset[str] = frozenset()

    @classmethod
    def single(cls, clients: AwsClients) -> Places:
        """One place served by clients already open (no [[accounts]]; tests, commands)."""
        home = Place("", str(clients.sqs.meta.region_name))
        return cls(home, (home,), False, None, {}, None, None, {home: clients})

    @classmethod
    def listed(cls, accounts: Sequence[AccountSettings], home: Place | None = None) -> Places:
        """The places of `accounts` with no clients: where entries and targets belong, for
        the commands that only reason about them (`retryd iam-policy`). `home` defaults to
        the first place listed."""
        places = tuple(Place(entry.account_id, r) for entry in accounts for r in entry.regions)
        return cls(home or places[0], places, True, None, {}, None, None)

    def place_of(self, arn: str) -> Place | None:
        """The configured place an ARN lives in; None when it is in none of them.

        With no [[accounts]] every ARN is taken to be at home: that is what today's
        single set of clients does with it.
        """
        if not self.configured:
            return self.home
        try:
            place = Place.of_arn(arn)
        except ValueError:
            return None
        return place if place in self._known else None

    def entries_for(self, place: Place, entries: Sequence[str]) -> list[str]:
        """The queue entries (names, URLs, ARNs) that may name a queue in `place`.

        A name may be in any place; a URL or an ARN only in the account and region it
        names. A URL whose host names no region (an emulator's, or an AWS host without
        one) names one queue all the same: it is taken to be in its account's first
        listed region, never in each (one DLQ, drained once). ARNs are given back as
        names, which GetQueueUrl takes. With no [[accounts]], the entries as given.
        """
        if not self.configured:
            return list(entries)
        kept: list[str] = []
        for entry in entries:
            if entry.startswith("arn:"):
                try:
                    arn = Arn.parse(entry)
                except ValueError:
                    continue
                if arn.service == "sqs" and Place(arn.account, arn.region) == place:
                    kept.append(arn.resource)
            elif is_queue_url(entry):
                try:
                    location = parse_queue_url(entry)
                except ValueError:
                    kept.append(entry)
                    continue
                if location.account == place.account_id and place.region == (
                    location.region or self._first_region.get(place.account_id)
                ):
                    kept.append(entry)
            else:
                kept.append(entry)
        return kept

    def settings_for(self, settings: Settings, place: Place) -> Settings:
        """`settings` with `discovery.queues` narrowed to the entries that may be in `place`,
        and the named S3 sources read in the home place only (its clients read the buckets;
        S3 bucket names are global)."""
        if not self.configured:
            return settings
        update: dict[str, list[str]] = {}
        if settings.discovery.queues:
            update["queues"] = self.entries_for(place, settings.discovery.queues)
        if settings.discovery.s3_sources and place != self.home:
            update["s3_sources"] = []
        if not update:
            return settings
        discovery = settings.discovery.model_copy(update=update)
        return settings.model_copy(update={"discovery": discovery})

    def to_survey(self, settings: Settings) -> list[Place]:
        """The places discovery may find a DLQ in: all with queue prefixes; else those the
        explicit `discovery.queues` entries may name (`retryd once QUEUE` touches no other)."""
        if settings.discovery.queue_prefixes or not self.configured:
            return list(self.places)
        queues = settings.discovery.queues
        return [
            place
            for place in self.places
            if self.entries_for(place, queues)
            or (place == self.home and settings.discovery.s3_sources)
        ]

    def place_for_sources(self, sources: Sequence[str]) -> Place:
        """The one place a redrive's sources name by URL or ARN; for names only, the home
        place (or the first listed when the home account is not drained).

        ValueError when they name a place retryd does not work in, or two places.
        """
        if not self.configured:
            return self.home
        named: set[Place] = set()
        for source in sources:
            if not (source.startswith("arn:") or is_queue_url(source)) or _names_s3(source):
                # A name, or an S3 source (whose ARN names no account or region).
                continue
            candidates = [place for place in self.places if self.entries_for(place, [source])]
            if not candidates:
                raise ValueError(f"{source} is in no account and region listed in [[accounts]]")
            named.add(candidates[0])
        if len(named) > 1:
            where = ", ".join(sorted(str(place) for place in named))
            raise ValueError(f"sources in {where}: redrive one account and region at a time")
        if named:
            return named.pop()
        return self.home if self.home in self.places else self.places[0]

    def __post_init__(self) -> None:
        # Asked once per message sent (which clients to send with): a set, built once.
        self._known = frozenset((*self.places, self.home))
        self._listed = frozenset(self.places)
        # Where a queue URL that names no region is read: its account's first listed region.
        self._first_region: dict[str, str] = {}
        for place in self.places:
            self._first_region.setdefault(place.account_id, place.region)

    async def ready(self, place: Place) -> None:
        """Make sure `place` can be worked in: a member's role assumed (or still valid).

        PlaceError naming the role when it cannot be assumed. Refreshes only when
        the credentials are due, so this costs no call on most cycles.
        """
        member = self._members.get(place.account_id)
        if member is None:
            return
        try:
            await member.credentials.get_frozen_credentials()
        except Exception as exc:
            error = classify.from_exception(exc)
            raise PlaceError(
                place,
                f"cannot assume {member.account.role_arn}: {error}",
                error.error_class.value,
            ) from exc

    async def clients(self, place: Place) -> AwsClients:
        """The clients for `place`, opened on first use and kept for the run."""
        opened = self._clients.get(place)
        if opened is not None:
            return opened
        lock = self._locks.setdefault(place, anyio.Lock())
        async with lock:
            opened = self._clients.get(place)
            if opened is None:
                member = self._members.get(place.account_id)
                session = self._home_session if member is None else member.session
                if session is None or self._stack is None or self._config is None:
                    raise PlaceError(place, "no clients for this place")
                opened = await enter_clients(self._stack, session, self._config, place.region)
                self._clients[place] = opened
        return opened

    def sending_place(self, target_arn: str, queue_arn: str) -> Place:
        """Where a target is sent to from: always in the target's own region, with the
        credentials of the target's account when [[accounts]] lists it, else with those
        of the DLQ's account (and the target's resource policy decides).

        A region no place covers gets clients of its own only when `target_regions`
        holds it; otherwise PlaceError (CONFIG: the message stays in its DLQ, with why).
        A target ARN whose region is no region name is left to the DLQ's place, whose
        resubmitter refuses it.
        """
        source = self.place_of(queue_arn) or self.home
        try:
            target = Place.of_arn(target_arn)
        except ValueError:
            return source
        # A listed place only: the home place, when [[accounts]] does not list it, is one
        # `retryd iam-policy` grants no target to (its targets go with the DLQ's role).
        if target in self._listed:
            return target
        if not is_region_name(target.region):
            return source
        # A listed account's own credentials (the home entry's chain, a member's role), as
        # `retryd iam-policy` grants its targets to that account's role; else the DLQ's.
        listed = target.account_id in self._first_region
        owner = target.account_id if listed else source.account_id
        place = Place(owner, target.region)
        if place in self._known or target.region in self._target_regions:
            return place
        raise PlaceError(
            place,
            f"target {target_arn} is in region {target.region}, which no [[accounts]] entry "
            "lists, no guards.allow_targets pattern spells out, and no AWS partition botocore "
            "knows has: retryd makes no clients there",
        )

    async def for_sending(self, target_arn: str, queue_arn: str) -> AwsClients:
        """The clients to send to a target with (see `sending_place`), opened on first use.

        PlaceError when that place's role cannot be assumed: a send would fail on
        retryd's own credentials, which is no answer of the target's.
        """
        place = self.sending_place(target_arn, queue_arn)
        await self.ready(place)
        return await self.clients(place)

    async def home_clients(self) -> AwsClients:
        """The clients of the home place: the ledger, the operator state, the cluster item."""
        return await self.clients(self.home)

    async def each(
        self,
        settings: Settings,
        work: Callable[[Visit], Awaitable[T]],
        *,
        only: Sequence[Place] | None = None,
        catch: tuple[type[Exception], ...] = PLACE_FAILURES,
        side_by_side: bool = False,
    ) -> tuple[list[tuple[Place, T]], list[PlaceFailure]]:
        """`work` in every place (or `only` those), each with its settings and clients.

        The one owner of the per-place rules, for the cycle, `plan`, `inspect`, a
        redrive and the console alike: with no [[accounts]] there is one place and
        its errors propagate, as they always did; with accounts a place whose role,
        discovery or parking queue fails (an error of `catch`) is a PlaceFailure and
        the others go on. The results are in the configured order of the places.
        """
        visiting = list(self.places if only is None else only)
        if not self.configured:
            return [
                (place, await work(await self._visit(settings, place))) for place in visiting
            ], []
        done: dict[Place, T] = {}
        failures: list[PlaceFailure] = []

        async def one(place: Place) -> None:
            try:
                done[place] = await work(await self._visit(settings, place))
            except catch as exc:
                failures.append(PlaceFailure(place, exc))

        if side_by_side:
            async with anyio.create_task_group() as group:
                for place in visiting:
                    group.start_soon(one, place)
        else:
            for place in visiting:
                await one(place)
        order = {place: index for index, place in enumerate(self.places)}
        failures.sort(key=lambda failure: order.get(failure.place, len(order)))
        return [(place, done[place]) for place in sorted(done, key=lambda p: order[p])], failures

    async def _visit(self, settings: Settings, place: Place) -> Visit:
        await self.ready(place)
        return Visit(place, self.settings_for(settings, place), await self.clients(place))


@dataclass(frozen=True, slots=True)
class Visit:
    """One place as `Places.each` hands it to the work: its settings and its clients."""

    place: Place
    # The run's settings with `discovery.queues` narrowed to what may be in this place.
    settings: Settings
    clients: AwsClients


def leaves(exc: BaseException) -> list[BaseException]:
    """The real errors inside (possibly nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


@dataclass(frozen=True, slots=True)
class PlaceFailure:
    """A place that could not be worked in this time, and why (the others were)."""

    place: Place
    error: Exception

    @property
    def why(self) -> str:
        if isinstance(self.error, PlaceError):
            return self.error.why
        if isinstance(self.error, RetrydError):
            return str(self.error)
        return "; ".join(str(classify.from_exception(leaf)) for leaf in leaves(self.error))

    @property
    def error_class(self) -> str:
        """The metric label of the failure: config for a role or a setting, else its class."""
        if isinstance(self.error, PlaceError):
            return self.error.error_class
        if isinstance(self.error, RetrydError):
            return "config"
        return classify.from_exception(leaves(self.error)[0]).error_class.value

    def __str__(self) -> str:
        return f"{self.place}: {self.why}"


def _home_entry(accounts: Sequence[AccountSettings]) -> AccountSettings | None:
    return next((a for a in accounts if a.role_arn is None), None)


async def _caller_account(session: aioboto3.Session, region: str, config: AioConfig) -> str:
    """The home account's id (the session's credentials'), asked once at start."""
    try:
        async with session.client("sts", region_name=region, config=config) as sts:
            return str((await sts.get_caller_identity())["Account"])
    except Exception as exc:  # noqa: BLE001 - said once, as a setup error, not a traceback
        raise AwsSetupError(
            f"cannot learn the home account (sts:GetCallerIdentity): {classify.from_exception(exc)}"
        ) from None


@asynccontextmanager
async def open_places(settings: Settings) -> AsyncIterator[Places]:
    """The places of this run; every client opened is closed together at its end."""
    accounts = settings.accounts
    if not accounts:
        # One place: the very clients retryd has always opened.
        async with open_clients(settings.aws) as clients:
            yield Places.single(clients)
        return
    session = open_session()
    config = client_config(settings.aws)
    session_region = str(session.region_name)
    async with AsyncExitStack() as stack:
        home_entry = _home_entry(accounts)
        home_region = home_entry.regions[0] if home_entry is not None else session_region
        # Asked even when an entry names the home account: its places are worked in with
        # the session's own credentials, which must be that account's, or every call
        # there (discovery, sends) would be made in another account's name.
        home_account = await _caller_account(session, home_region, config)
        if home_entry is not None and home_entry.account_id != home_account:
            raise AwsSetupError(
                f"accounts: the entry without role_arn is account {home_entry.account_id}, "
                f"but retryd's AWS credentials are account {home_account}'s "
                "(give that entry the account's role_arn, or run retryd in it)"
            )
        source = await session.get_credentials()
        if source is None and any(a.role_arn for a in accounts):
            raise AwsSetupError("no AWS credentials to assume the member roles with")
        sts_session = AioSession()
        members: dict[str, _Member] = {}
        for account in accounts:
            if account.role_arn is None:
                continue
            credentials = assumed_credentials(sts_session, source, account, config, home_region)
            members[account.account_id] = _Member(account, credentials, _session_with(credentials))
        places = tuple(
            Place(account.account_id, region) for account in accounts for region in account.regions
        )
        yield Places(
            Place(home_account, home_region),
            places,
            True,
            session,
            members,
            config,
            stack,
            _target_regions=target_regions(settings.guards),
        )


def _names_s3(source: str) -> bool:
    """Whether a source given by ARN is an S3 one (`arn:aws:s3:::bucket/prefix`)."""
    try:
        return Arn.parse(source).service == "s3"
    except ValueError:
        return False
