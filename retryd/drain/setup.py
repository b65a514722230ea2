"""What one cycle needs in one place, built once for every path that judges a message.

The daemon's cycle, a redrive job, `retryd plan`, `retryd inspect` (the chain
only) and the console all see a place the same way: its parking queue (located
by name: ParkingQueueMissingError stops the work in that place), the survey of
the DLQs beside it (and the ARNs no message may be resubmitted into), the feed
map, the resolver chain, the guards, the sender and the hidden book.

Where the paths differ, they differ on purpose, and that is a `Purpose`:

- the **cycle** keeps what it built per place across cycles (the parking queue
  once found, the feed cache it refreshes every few cycles, the chain, the
  sender) and learns a DLQ's redrive sources only once it has messages;
- an **operator** action (a redrive) looks once, joins the cluster as the
  daemon's replicas do, and may put its `--transform` rule first;
- a **dry run** (a plan) judges with guards that take no token and write
  nothing: the ledger is only read (and not opened at all when its SQLite file
  does not exist), the cluster item is read without joining, nothing is sent.

Guards are shared by every place of a run; the builder is given them, built by
`admit_live` (cycle, operator) or `open_dry_run` (dry run).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from enum import StrEnum

import anyio
import structlog
from botocore.exceptions import BotoCoreError, ClientError

from retryd import classify
from retryd.admission.breaker import Breakers
from retryd.admission.guards import Guards, build_guards
from retryd.admission.paused import PauseSet
from retryd.aws import AwsClients
from retryd.cluster.factory import SharedAdmission, admit_in_cluster
from retryd.cluster.view import (
    ClusterUnreadError,
    ClusterView,
    hold_as_the_cluster_does,
    read_cluster,
)
from retryd.control.deferrals import HiddenBook
from retryd.control.pauses import pauses_in_force
from retryd.control.store import ControlStore
from retryd.discovery.feeds import FeedCache, FeedMap
from retryd.discovery.survey import Survey, survey_queues
from retryd.ledger import Ledger, open_ledger
from retryd.metrics import Metrics
from retryd.models import QueueRef, queue_ref_from_url
from retryd.resolve import ResolverChain, build_chain
from retryd.s3_objects import LAMBDA_ASYNC_PREFIX, source_ref
from retryd.settings import HookRule, Settings
from retryd.settle.parking import Parking, locate_parking
from retryd.targets import TargetRouter
from retryd.targets.sender import Sender

log = structlog.get_logger("retryd.setup")


# arn:partition:lambda:region:account:function:<name>[:qualifier]: the name's field.
FUNCTION_NAME_FIELD = 6


class Purpose(StrEnum):
    """Why a place is set up: the one switch for where the paths differ on purpose."""

    # The daemon: live, and what it builds per place is kept across cycles.
    CYCLE = "cycle"
    # An operator's action (a redrive job, a console's): live, one look.
    OPERATOR = "operator"
    # A plan (a console's view): judged only; nothing is sent, written or hidden.
    DRY_RUN = "dry-run"

    @property
    def live(self) -> bool:
        return self is not Purpose.DRY_RUN

    @property
    def keeps(self) -> bool:
        """Whether a place's parts outlive one look (only a cycle comes back to a place)."""
        return self is Purpose.CYCLE


# -- the guards every place of a run shares ------------------------------------------------


def admit_live(
    settings: Settings,
    clients: AwsClients,
    *,
    ledger: Ledger | None,
    metrics: Metrics,
    member: str | None = None,
) -> SharedAdmission:
    """A cycle's or an operator's guards, joined to the cluster (`clients`: the home place's).

    A redrive during an incident is one more replica: it must neither hit a target
    the daemon found broken nor add its own rate on top of the daemon's.
    """
    return admit_in_cluster(settings, clients, ledger=ledger, metrics=metrics, me=member)


@dataclass(frozen=True)
class DryRunGuards:
    """A dry run's guards, and the cluster item they were set from (None: no cluster)."""

    guards: Guards
    cluster: ClusterView | None = None


@asynccontextmanager
async def open_dry_run(settings: Settings, clients: AwsClients) -> AsyncIterator[DryRunGuards]:
    """The guards a cycle applies, built as a cycle builds them, for dry-run assessment.

    On the DynamoDB ledger the breakers start as the replicas' cluster item has them
    (read, never written: a dry run does not join the cluster), so a target the
    cluster holds open is deferred here as it would be in the next cycle. The queues
    to protect are added by each place's set-up.
    """
    # Only read: counts and backoff come from the ledger. A SQLite file that does not
    # exist yet has counted nothing, and opening it would create it: a dry run writes
    # nothing, so it judges with no ledger instead.
    exists = settings.ledger.backend != "sqlite" or await anyio.Path(settings.ledger.path).exists()
    ledger_scope: AbstractAsyncContextManager[Ledger | None] = (
        open_ledger(settings.ledger, clients) if exists else nullcontext(None)
    )
    async with ledger_scope as ledger:
        breakers = Breakers(settings.breaker, anyio.current_time, logged=False)
        cluster = None
        if settings.ledger.backend == "dynamodb":
            cluster = await _read_cluster(settings, clients)
            if cluster is not None:
                hold_as_the_cluster_does(
                    cluster,
                    breakers,
                    cooldown_s=settings.breaker.cooldown_s,
                    monotonic_s=anyio.current_time(),
                )
        guards = build_guards(settings, ledger=ledger, metrics=None, breakers=breakers)
        # Judged with the operator's pauses, as the next cycle will be.
        guards.set_pauses(PauseSet(tuple(await pauses_in_force(settings.ledger, clients))))
        yield DryRunGuards(guards, cluster)


async def _read_cluster(settings: Settings, clients: AwsClients) -> ClusterView | None:
    """The replicas' cluster item; None (breakers judged closed, said in a log line) if unread."""
    try:
        return await read_cluster(clients.dynamodb, settings.ledger.table, wall_s=time.time)
    except (ClientError, BotoCoreError, ClusterUnreadError) as exc:
        log.warning(
            "plan-cluster-unread",
            error=str(classify.from_exception(exc)),
            why="the breakers the replicas hold open are not known: they are judged closed",
        )
        return None


# -- one place ---------------------------------------------------------------------------


async def read_chain(
    settings: Settings, clients: AwsClients, queues: Sequence[QueueRef]
) -> tuple[ResolverChain, FeedMap]:
    """The chain a cycle would use for these DLQs, their feeds read now, and that feed map.

    For a look at queues chosen by name rather than surveyed (`retryd inspect`).
    """
    feeds = FeedCache.for_settings(settings)
    await feeds.refresh_if_due(clients, queues)
    return build_chain(settings, feeds), feeds.current


@dataclass(frozen=True, slots=True)
class PlaceSetup:
    """What one cycle needs in one place, as found now."""

    parking: Parking
    parking_queue: QueueRef
    survey: Survey
    # The DLQs this run works in the place (a cycle's worker process: those that fall to it).
    dlqs: list[QueueRef]
    feeds: FeedCache
    chain: ResolverChain
    guards: Guards
    # None in a dry run: it sends nothing.
    sender: Sender | None
    # Where deferred messages are noted as hidden (the cycle's; None when nothing is hidden).
    hidden: HiddenBook | None
    # The S3 failure destinations this run drains in the place ([discovery] s3_sources).
    buckets: list[QueueRef] = field(default_factory=list)

    def live_sender(self) -> Sender:
        """The sender; only a live set-up has one."""
        if self.sender is None:
            raise RuntimeError("a dry-run set-up sends nothing")
        return self.sender


@dataclass
class _Kept:
    """A place's parts that a cycle keeps from one cycle to the next."""

    feeds: FeedCache
    chain: ResolverChain
    sender: Sender | None
    parking: tuple[Parking, QueueRef] | None = None
    # ARNs no message may go into (its DLQs and parking queue), as last surveyed: kept
    # when a later survey of the place fails, so the loop guard never forgets them.
    protected: list[str] = field(default_factory=list)


class PlaceBuilder:
    """Builds what one cycle needs in each place of one run, for one `Purpose`."""

    def __init__(
        self,
        settings: Settings,
        purpose: Purpose,
        guards: Guards,
        *,
        router: TargetRouter | None = None,
        metrics: Metrics | None = None,
        control: ControlStore | None = None,
        qualified: bool = False,
        transform: str | None = None,
        owns: Callable[[QueueRef], bool] | None = None,
    ) -> None:
        """`router` sends (live only); `metrics` counts the hooks' runs (the cycle's);
        `control` keeps the hidden book (the cycle's: only it hides deferred messages;
        `qualified`, with [[accounts]], notes them by queue ARN); `transform` is an
        operator's hook put before the configured ones; `owns` narrows the DLQs worked
        (a cycle's worker process drains only those that fall to it)."""
        if purpose.live != (router is not None):
            raise ValueError("a live set-up needs a router; a dry run has none")
        self._settings = settings
        self._purpose = purpose
        self._guards = guards
        self._router = router
        self._metrics = metrics
        self._owns = owns
        self._transform = transform
        self._kept: dict[Hashable, _Kept] = {}
        self.hidden = (
            HiddenBook(control, qualified=qualified)
            if control is not None and purpose is Purpose.CYCLE
            else None
        )

    @property
    def protected(self) -> list[str]:
        """Every place's protected ARNs as last surveyed (what the guards protect)."""
        return [arn for kept in self._kept.values() for arn in kept.protected]

    def kept(self, key: Hashable) -> _Kept:
        """The parts of the place `key`: kept across calls by a cycle, fresh otherwise."""
        kept = self._kept.get(key) if self._purpose.keeps else None
        if kept is None:
            # The cycle learns a DLQ's redrive sources once it has messages (lazily), as
            # most DLQs are empty most of the time; one look reads them all up front.
            feeds = FeedCache.for_settings(self._settings, lazy_redrive=self._purpose.keeps)
            kept = _Kept(
                feeds,
                # The hooks' runs are counted when metrics are given (the cycle's).
                build_chain(_hooked(self._settings, self._transform), feeds, self._metrics),
                Sender(targets=self._router, guards=self._guards) if self._router else None,
            )
            self._kept[key] = kept
        return kept

    async def set_up(
        self, clients: AwsClients, *, settings: Settings | None = None, key: Hashable = None
    ) -> PlaceSetup:
        """Locate the parking queue, survey the DLQs, refresh the feeds, protect the queues.

        `clients` and `settings` (default: the run's) are the place's; `key` names the
        place among the run's. Errors propagate (a missing parking queue, discovery).
        """
        kept = self.kept(key)
        sqs = clients.sqs
        # A cycle locates it every cycle until found, so a missing parking queue stops
        # draining the place (nothing could be parked) without stopping the daemon.
        if kept.parking is None:
            parking = await locate_parking(sqs, self._settings)
            kept.parking = parking, queue_ref_from_url(parking.queue_url, sqs.meta.region_name)
        parking, parking_ref = kept.parking
        survey = await survey_queues(sqs, settings or self._settings, parking_ref.arn)
        dlqs = [queue for queue in survey.dlqs if self._owns is None or self._owns(queue)]
        await kept.feeds.refresh_if_due(clients, dlqs)
        kept.protected = survey.protected
        self._guards.protect_queues(self.protected)
        return PlaceSetup(
            parking,
            parking_ref,
            survey,
            dlqs,
            kept.feeds,
            kept.chain,
            self._guards,
            kept.sender,
            self.hidden,
            [
                b
                for b in s3_sources(settings or self._settings, kept.feeds.current)
                if self._owns is None or self._owns(b)
            ],
        )


def s3_sources(settings: Settings, feeds: FeedMap) -> list[QueueRef]:
    """The S3 sources [discovery] names, and with `s3_from_destinations` those the functions'
    on-failure destinations name, one per function: Lambda writes a function's records under
    `aws/lambda/async/<function-name>/` with the time after it, so a per-function source lists
    in the order they were written."""
    named = [source.partition("/") for source in settings.discovery.s3_sources]
    found = [(bucket, prefix) for bucket, _, prefix in named]
    if settings.discovery.s3_from_destinations:
        for bucket_arn, function_arn in feeds.s3_destinations:
            bucket = bucket_arn.rpartition(":")[2]
            parts = function_arn.split(":")
            function = parts[6] if len(parts) > FUNCTION_NAME_FIELD else ""
            if bucket and function:
                found.append((bucket, f"{LAMBDA_ASYNC_PREFIX}{function}/"))
    return [source_ref(bucket, prefix) for bucket, prefix in dict.fromkeys(found)]


def _hooked(settings: Settings, transform: str | None) -> Settings:
    """The settings whose [[hooks]] run: with an operator's `--transform`, that one first.

    The first matching rule wins, so a rule matching every DLQ (`queue = "*"`) put in
    front gives each message the operator's transform; loading it is checked like the
    configured ones (ConfigError, exit 2, when it cannot be loaded).
    """
    if transform is None:
        return settings
    rule = HookRule(queue="*", transform=transform)
    return settings.model_copy(update={"hooks": [rule, *settings.hooks]})
