"""`retryd inspect`: per DLQ, how deep it is, what feeds it, and its messages grouped by failure.

The groups are retryd.resolve.failure_groups'. Messages are read under a short
lease that is handed back at once (retryd.discovery.survey, the survey a cycle
uses): nothing is resubmitted, parked or deleted. The text is laid out by
retryd.commands.render.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from retryd import classify
from retryd.admission.allowlist import Allowlist
from retryd.admission.paused import Pause
from retryd.arns import Arn
from retryd.aws import AwsClients
from retryd.commands import progress, render
from retryd.control.pauses import describe as describe_pauses
from retryd.control.pauses import pauses_in_force
from retryd.discovery.survey import (
    KMS_KEY_ATTRIBUTE,
    Depth,
    ReadProgress,
    look_at_each,
    look_at_objects,
    select_queues,
)
from retryd.drain.setup import read_chain, s3_sources
from retryd.errors import ExitCode
from retryd.models import DeadLetter, QueueRef
from retryd.places import PlaceError, Places, Visit, open_places
from retryd.resolve.failure_groups import (
    FailureGroup,
    group_failures,
)
from retryd.resolve.static_route import StaticRouteResolver
from retryd.settings import Settings
from retryd.targets.router import PickClients, place_unavailable

JSON_FORMAT_VERSION = 1


@dataclass
class QueueInspection:
    """Everything `inspect` says about one DLQ."""

    queue: QueueRef
    depth: Depth | None = None
    feeds: list[dict[str, str]] = field(default_factory=list)
    route: str | None = None
    sampled: int = 0
    truncated: bool = False
    groups: list[FailureGroup] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # The KmsMasterKeyId of each SQS target queue its messages go back to (None: not
    # encrypted with a KMS key); resubmitting there needs kms:GenerateDataKey on it.
    target_kms_keys: dict[str, str | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.queue.name,
            "url": self.queue.url,
            "arn": self.queue.arn,
            "depth": self.depth.to_json() if self.depth else None,
            "retention_s": self.depth.retention_s if self.depth else None,
            "kms_key": self.depth.kms_key if self.depth else None,
            "target_kms_keys": self.target_kms_keys,
            "feeds": self.feeds,
            "route": self.route,
            "sampled": self.sampled,
            "truncated": self.truncated,
            "groups": [group.to_json() for group in self.groups],
            "errors": self.errors,
            "warnings": self.warnings,
        }


@dataclass
class InspectReport:
    """Every inspected DLQ, plus what could not be found or learned."""

    queues: list[QueueInspection]
    max_messages: int
    missing: list[str] = field(default_factory=list)
    feed_errors: list[str] = field(default_factory=list)
    # Operator pauses in force (their targets' messages wait; see `retryd pauses`).
    pauses: list[Pause] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.missing) or any(inspection.errors for inspection in self.queues)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": JSON_FORMAT_VERSION,
            "max_messages": self.max_messages,
            "queues": [inspection.to_json() for inspection in self.queues],
            "missing": self.missing,
            "feed_errors": self.feed_errors,
            "pauses": [pause.to_json() for pause in self.pauses],
        }


async def inspect_queues(
    settings: Settings,
    clients: AwsClients,
    names: Sequence[str],
    *,
    max_messages: int,
    bars: ReadProgress,
    home: AwsClients | None = None,
    pick: PickClients | None = None,
) -> InspectReport:
    """Depth, feeds and failure groups of each selected DLQ; AWS errors listing queues propagate.

    `clients` are those of the place the DLQs are in; `home` (default: the same)
    those of the place keeping the operator's pauses; `pick` (with [[accounts]]:
    `Places.for_sending`) the clients a target is sent with, which read its key.
    """
    queues, missing = await select_queues(clients.sqs, settings, names)
    chain, feeds = await read_chain(settings, clients, queues)
    routes = StaticRouteResolver(settings.routes)

    async def group(letters: list[DeadLetter]) -> list[FailureGroup]:
        # Grouped while the leases are held; they are handed back after.
        return group_failures(chain, letters)

    looks = await look_at_each(
        clients.sqs,
        queues,
        group,
        max_messages=max_messages,
        wait_s=settings.drain.receive_wait_s,
        concurrency=settings.drain.queue_concurrency,
        progress=bars,
    )
    if clients.s3 is not None:
        # S3 sources, all of them or those named (`bucket/prefix`, its `s3://` URL or its
        # ARN): each object is a message.
        sources = [b for b in s3_sources(settings, feeds) if not names or _named(b, names)]
        missing = [name for name in missing if not any(_named(b, [name]) for b in sources)]
        for source in sources:
            looks.append(
                await look_at_objects(clients.s3, source, group, max_messages=max_messages)
            )
    inspections = []
    for look in looks:
        route = routes.target_for(look.queue.name)
        inspections.append(
            QueueInspection(
                look.queue,
                depth=look.depth,
                feeds=[
                    {"kind": feed.kind.value, "source_arn": feed.source_arn}
                    for feed in feeds.feeding(look.queue.arn)
                ],
                route=route.arn if route else None,
                sampled=look.sampled,
                truncated=look.truncated,
                groups=look.finding or [],
                errors=look.errors,
                warnings=look.warnings,
            )
        )
    await _add_target_keys(
        settings, clients, inspections, {queue.arn for queue in queues}, pick=pick
    )
    pauses = await pauses_in_force(settings.ledger, home or clients)
    return InspectReport(inspections, max_messages, missing, list(feeds.errors), pauses)


def _named(source: QueueRef, names: Sequence[str]) -> bool:
    return any(name in (source.name, source.url, source.arn) for name in names)


async def inspect_everywhere(
    settings: Settings,
    places: Places,
    names: Sequence[str],
    *,
    max_messages: int,
    bars: ReadProgress,
) -> InspectReport:
    """The selected DLQs of every place, as one report.

    A name is looked for in every place, a URL or ARN in the place it names; it is
    missing when no place has it. A place that cannot be read is a feed error line
    naming it, and the report fails. With no [[accounts]], one place, as always.
    """
    home = await places.home_clients()
    if not places.configured:
        return await inspect_queues(settings, home, names, max_messages=max_messages, bars=bars)
    visiting = [place for place in places.places if not names or places.entries_for(place, names)]

    async def inspect_in(visit: Visit) -> InspectReport:
        return await inspect_queues(
            settings,
            visit.clients,
            places.entries_for(visit.place, names),
            max_messages=max_messages,
            bars=bars,
            home=home,
            pick=places.for_sending,
        )

    read, failures = await places.each(
        settings, inspect_in, only=visiting, catch=(PlaceError, ClientError, BotoCoreError)
    )
    reports = [report for _, report in read]
    problems = [str(failure) for failure in failures]
    unread = [failure.place for failure in failures]
    found: set[str] = set()
    for place, report in read:
        for name in names:
            entry = places.entries_for(place, [name])
            if entry and entry[0] not in report.missing:
                found.add(name)
    # Not found anywhere it could be; a place that could not be read may still hold it.
    missing = [
        name
        for name in names
        if name not in found and not any(places.entries_for(p, [name]) for p in unread)
    ]
    return InspectReport(
        [queue for report in reports for queue in report.queues],
        max_messages,
        missing,
        [error for report in reports for error in report.feed_errors] + problems,
        reports[0].pauses if reports else [],
    )


async def _add_target_keys(
    settings: Settings,
    clients: AwsClients,
    inspections: list[QueueInspection],
    dlqs: set[str],
    *,
    pick: PickClients | None = None,
) -> None:
    """Each inspection's SQS target queues' keys, each queue asked once.

    Only targets the allowlist admits (the policy lets retryd read no others), never a
    DLQ (the loop guard refuses those as targets). Each is read with the clients it is
    sent with: `pick`'s (its own account and region, `Places.sending_place`), else
    this place's, and then only in this client's region.
    """
    allowlist = Allowlist(settings.guards.allow_targets, settings.guards.allow_any_target)
    region = clients.sqs.meta.region_name if pick is None else None
    read: dict[str, str | _Unread | None] = {}
    for inspection in inspections:
        targets = [group.target for group in inspection.groups]
        if inspection.route:
            targets.append(inspection.route)
        for target in dict.fromkeys(targets):
            arn = _key_bearing(target, region)
            if arn is None or target in dlqs or not allowlist.allows(target):
                continue
            if target not in read:
                read[target] = await _read_key(clients, pick, arn, inspection.queue.arn)
            key = read[target]
            if isinstance(key, _Unread):
                inspection.warnings.append(f"target {target}: KMS key not read ({key.why})")
            else:
                inspection.target_kms_keys[target] = key


@dataclass(frozen=True, slots=True)
class _Unread:
    """A target whose key could not be read, and why."""

    why: str


def _key_bearing(target: str, region: str | None) -> Arn | None:
    """The ARN of an SQS queue (in `region`, unless None); else None.

    (An SNS topic's key is left to `retryd iam-policy --kms`: reading it needs
    sns:GetTopicAttributes, which the daemon's policy does not grant.)
    """
    try:
        arn = Arn.parse(target)
    except ValueError:
        return None
    if arn.service != "sqs" or region not in (None, arn.region):
        return None
    return arn


async def _read_key(
    clients: AwsClients, pick: PickClients | None, arn: Arn, queue_arn: str
) -> str | _Unread | None:
    """The target's key, read with the clients it is sent with; what went wrong instead."""
    try:
        reader = clients if pick is None else await pick(str(arn), queue_arn)
        return await _target_key(reader, arn)
    except PlaceError as exc:
        return _Unread(str(place_unavailable(exc)))
    except (ClientError, BotoCoreError) as exc:
        return _Unread(str(classify.from_exception(exc)))


async def _target_key(clients: AwsClients, arn: Arn) -> str | None:
    url = (
        await clients.sqs.get_queue_url(QueueName=arn.resource, QueueOwnerAWSAccountId=arn.account)
    )["QueueUrl"]
    response = await clients.sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=[KMS_KEY_ATTRIBUTE]
    )
    return response.get("Attributes", {}).get(KMS_KEY_ATTRIBUTE) or None


async def run_inspect(
    settings: Settings, *, queues: Sequence[str], output: str, max_messages: int
) -> int:
    """The `inspect` command: 0, or 1 when a queue is missing or could not be read."""
    if max_messages < 1:
        print("retryd inspect: --max-messages must be at least 1", file=sys.stderr)
        return ExitCode.CONFIG
    async with open_places(settings) as places:
        try:
            with progress.QueueProgress(enabled=progress.wanted(output)) as bars:
                report = await inspect_everywhere(
                    settings, places, queues, max_messages=max_messages, bars=bars
                )
        except (ClientError, BotoCoreError) as exc:
            print(
                f"retryd inspect: cannot find the DLQs: {classify.from_exception(exc)}",
                file=sys.stderr,
            )
            return ExitCode.AWS
    if output == "json":
        print(json.dumps(report.to_json(), indent=2))
    else:
        render.show(inspect_document(report))
    for name in report.missing:
        print(f"retryd inspect: no such queue: {name}", file=sys.stderr)
    for error in report.feed_errors:
        print(f"retryd inspect: feeds incomplete: {error}", file=sys.stderr)
    for inspection in report.queues:
        for error in inspection.errors:
            print(f"retryd inspect: {inspection.queue.name}: {error}", file=sys.stderr)
    return ExitCode.CYCLE_FAILED if report.failed else ExitCode.OK


# -- The text of `retryd inspect` (retryd.commands.render lays it out) ------------------

FAILURE_GROUP_COLUMNS = (
    # The failure-group id `retryd redrive --group` takes.
    render.Column("GROUP", min_width=10),
    render.Column("COUNT", min_width=5),
    render.Column("TARGET", min_width=12),
    render.Column("OLDEST", min_width=10),
    render.Column("NEWEST", min_width=10),
    render.Column("SOURCE TRIES", min_width=6),
    render.Column("EXAMPLE", min_width=render.MESSAGE_ID_WIDTH),
    render.Column("ERROR", min_width=12),
)


def _kms_key(inspection: QueueInspection) -> str:
    if inspection.depth is None:
        return "unknown"
    return inspection.depth.kms_key or "none (not encrypted with a KMS key)"


def _target_keys(inspection: QueueInspection) -> list[str]:
    return [
        f"{target}: {key or 'none (not encrypted with a KMS key)'}"
        for target, key in sorted(inspection.target_kms_keys.items())
    ]


def _inspection_blocks(inspection: QueueInspection) -> list[render.Block]:
    blocks: list[render.Block] = [render.Line(f"{inspection.queue.name}  {inspection.queue.arn}")]
    fed_by = [f"{feed['kind']} {feed['source_arn']}" for feed in inspection.feeds]
    if inspection.route:
        fed_by.append(f"static route -> {inspection.route}")
    note = " (--max-messages reached)" if inspection.truncated else ""
    blocks.append(
        render.Fields(
            [
                ("depth", [inspection.depth.describe() if inspection.depth else "unknown"]),
                ("kms key", [_kms_key(inspection)]),
                ("fed by", fed_by or ["nothing found"]),
                ("sampled", [f"{inspection.sampled} message(s){note}"]),
            ],
            indent=2,
        )
    )
    if inspection.target_kms_keys:
        # A block of its own, so that the fields above keep their alignment.
        blocks.append(render.Fields([("target kms keys", _target_keys(inspection))], indent=2))
    if inspection.groups:
        rows = [
            [
                group.id,
                str(group.count),
                group.target,
                render.when(group.oldest),
                render.when(group.newest),
                f"up to {group.source_attempts_max}" if group.source_attempts_max else "-",
                group.example_message_id,
                group.signature,
            ]
            for group in inspection.groups
        ]
        blocks.append(render.Table(FAILURE_GROUP_COLUMNS, rows, indent=2))
    blocks += [render.Line(f"warning: {warning}", 2) for warning in inspection.warnings]
    blocks += [render.Line(f"error: {error}", 2) for error in inspection.errors]
    return blocks


def inspect_document(report: InspectReport) -> render.Document:
    """A section per DLQ: its depth, its feeds, and a table of failure groups."""
    sections = [_inspection_blocks(inspection) for inspection in report.queues]
    if not sections:
        sections.append([render.Line("no DLQs to inspect")])
    if report.pauses:
        sections.append([render.Line(line) for line in describe_pauses(report.pauses, time.time())])
    return render.Document(sections)
