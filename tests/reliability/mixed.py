"""The reliability world: every target type, poison and over-limit messages over many shallow DLQs.

Every message carries a unique id (`RLU` and six digits) in its payload, so each
one can be accounted for at the end: delivered (its copies counted where each
target keeps them), parked with a reason, or still in a DLQ. Anything else is lost.

Targets are read where they keep what they took: SQS queues (the destination, and
the spy queues behind the SNS topic and the EventBridge bus) straight from moto's
backend, which sees in-flight messages too; Step Functions by listing executions;
Lambda through the front's record of accepted invokes.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retryd.targets.sqs_queue import MAX_PAYLOAD_BYTES
from tests.reliability.front import Front
from tests.world import ACCOUNT, REGION, World, envelope

UID = re.compile(r"RLU\d{6}")
PARKING = "retryd-parking"
DEST = "rel-dest"
FUNCTION = "rel-fn"
MACHINE = "rel-flow"
TOPIC = "rel-topic"
TOPIC_SPY = "spy-rel-topic"
BUS = "rel-bus"
BUS_SOURCE = "rel.test"
ROUTED_DLQ = "retry-rel-routed"
FOREIGN_ACCOUNT = "999999999999"
MAX_ATTEMPTS = 5

# Kinds of message, and what must become of each.
LAMBDA, SFN, SQS, SNS, EVENTS, ROUTED = "lambda", "sfn", "sqs", "sns", "events", "routed"
POISON_ATTEMPTS, POISON_FORGED, POISON_BROKEN, OVER_LIMIT = (
    "poison-attempts",
    "poison-forged",
    "poison-broken",
    "over-limit",
)
DELIVERABLE = (LAMBDA, SFN, SQS, SNS, EVENTS, ROUTED)
# The target types as a retryd/v1 envelope names them.
ENVELOPE_TYPE = {
    LAMBDA: "lambda",
    SFN: "stepfunctions",
    SQS: "sqs",
    SNS: "sns",
    EVENTS: "eventbridge",
}
EXPECTED_PARK = {
    POISON_ATTEMPTS: "attempts-exhausted",
    POISON_FORGED: "target-not-allowed",
    POISON_BROKEN: "invalid-envelope",
    OVER_LIMIT: "payload-too-large",
}
# Out of every 20 messages: 3 of each target type, 2 routed, and one of each bad kind
# except over-limit (one in 40: each is 300 KiB).
_MIX = [*(kind for kind in DELIVERABLE[:5] for _ in range(3)), ROUTED, ROUTED]


def uid(number: int) -> str:
    return f"RLU{number:06d}"


@dataclass(frozen=True)
class Planned:
    """One message put into a DLQ, and what it is."""

    uid: str
    kind: str
    dlq: str


@dataclass(frozen=True)
class Copy:
    """One copy a target holds: whose, where, when, and retryd's stamps if the target keeps them."""

    uid: str
    target: str
    at_s: float
    key: str | None = None
    attempt: str | None = None


@dataclass
class Tally:
    """Where every planned message ended up."""

    planned: dict[str, Planned]
    copies: dict[str, list[Copy]] = field(default_factory=dict)
    parked: dict[str, list[str]] = field(default_factory=dict)
    in_dlq: Counter[str] = field(default_factory=Counter)
    strangers: list[str] = field(default_factory=list)
    # Accepted by a target outside this world (retryd's log says where): uid -> ARN.
    elsewhere: dict[str, str] = field(default_factory=dict)

    def only(self, uids: set[str]) -> Tally:
        """This tally narrowed to the messages in `uids` (one phase of a suite)."""
        return Tally(
            {u: p for u, p in self.planned.items() if u in uids},
            {u: c for u, c in self.copies.items() if u in uids},
            {u: r for u, r in self.parked.items() if u in uids},
            Counter({u: n for u, n in self.in_dlq.items() if u in uids}),
            list(self.strangers),
            {u: t for u, t in self.elsewhere.items() if u in uids},
        )

    @property
    def lost(self) -> list[str]:
        return sorted(
            u
            for u in self.planned
            if u not in self.copies
            and u not in self.parked
            and u not in self.in_dlq
            and u not in self.elsewhere
        )

    @property
    def duplicated(self) -> dict[str, list[Copy]]:
        return {u: c for u, c in self.copies.items() if len(c) > 1}

    @property
    def duplicates(self) -> int:
        return sum(len(c) - 1 for c in self.copies.values())

    def same_stamps(self, copies: list[Copy]) -> bool:
        """Whether copies that carry retryd's stamps all carry the same key and attempt."""
        stamped = {(c.key, c.attempt) for c in copies if c.key is not None or c.attempt is not None}
        return len(stamped) <= 1

    def wrongly_delivered(self) -> list[str]:
        return sorted(u for u in self.copies if self.planned[u].kind not in DELIVERABLE)

    def wrongly_parked(self) -> dict[str, list[str]]:
        """Parked messages that should not have been, or for another reason than their kind's."""
        wrong: dict[str, list[str]] = {}
        for u, reasons in self.parked.items():
            expected = EXPECTED_PARK.get(self.planned[u].kind)
            if any(reason != expected for reason in reasons):
                wrong[u] = reasons
        return wrong

    def summary(self) -> str:
        delivered = len(self.copies)
        return (
            f"{len(self.planned)} messages: {delivered} delivered, {len(self.parked)} parked, "
            f"{len(self.in_dlq)} still in a DLQ, {len(self.lost)} lost, "
            f"{self.duplicates} duplicates"
        )


@dataclass
class MixedWorld:
    """The reliability world on one moto server, with the plan of every message in it."""

    world: World
    front: Front
    dlqs: list[str]
    planned: dict[str, Planned] = field(default_factory=dict)
    machine_arn: str = ""
    # DLQ message id -> the id of the message in it.
    uid_of: dict[str, str] = field(default_factory=dict)

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def build(cls, world: World, front: Front, dlq_count: int = 12) -> MixedWorld:
        """Targets of every type, the parking queue and `dlq_count` empty DLQs."""
        mixed = cls(world, front, [f"retry-rel-{i:02d}" for i in range(dlq_count)])
        world.create_queue(PARKING)
        # A 256 KiB limit, so that an over-limit message is over its target's own limit.
        world.create_queue(DEST, MaximumMessageSize=str(MAX_PAYLOAD_BYTES))
        world.create_queue(ROUTED_DLQ)
        for dlq in mixed.dlqs:
            world.create_queue(dlq)
        world.create_function(FUNCTION)
        mixed.machine_arn = world.create_state_machine(MACHINE)
        sns = world.client("sns")
        topic_arn = sns.create_topic(Name=TOPIC)["TopicArn"]
        world.create_queue(TOPIC_SPY)
        # Not raw: moto's raw delivery breaks ReceiveMessage for Binary attributes.
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=world.queue_arn(TOPIC_SPY))
        world.create_bus_with_spy(BUS, source=BUS_SOURCE)
        return mixed

    def target_arn(self, kind: str) -> str:
        return {
            LAMBDA: f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{FUNCTION}",
            SFN: self.machine_arn,
            SQS: self.world.queue_arn(DEST),
            SNS: f"arn:aws:sns:{REGION}:{ACCOUNT}:{TOPIC}",
            EVENTS: f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/{BUS}",
        }[kind]

    def body(self, kind: str, number: int, rng: random.Random) -> str:
        """The DLQ body of message `number` of this kind."""
        u = uid(number)
        data = {"uid": u, "n": number, "blob": "x" * rng.randrange(0, 400)}
        if kind == EVENTS:
            payload: Any = {"Source": BUS_SOURCE, "DetailType": "Reliability", "Detail": data}
            return json.dumps(envelope("eventbridge", self.target_arn(EVENTS), payload))
        if kind in (LAMBDA, SFN, SQS, SNS):
            return json.dumps(envelope(ENVELOPE_TYPE[kind], self.target_arn(kind), data))
        if kind == ROUTED:
            return json.dumps(data)
        if kind == POISON_ATTEMPTS:
            return json.dumps(envelope(SQS, self.target_arn(SQS), data, attempt=MAX_ATTEMPTS))
        return self._bad_body(kind, data)

    def _bad_body(self, kind: str, data: dict[str, Any]) -> str:
        if kind == POISON_FORGED:
            forged = f"arn:aws:lambda:{REGION}:{FOREIGN_ACCOUNT}:function:drain-bank"
            return json.dumps(envelope(LAMBDA, forged, data))
        if kind == POISON_BROKEN:
            return json.dumps({"envelope": "retryd/v1", "target": {"type": SQS}, "payload": data})
        if kind == OVER_LIMIT:
            data["blob"] = "y" * (MAX_PAYLOAD_BYTES + 40_000)
            return json.dumps(envelope(SQS, self.target_arn(SQS), data))
        raise ValueError(f"unknown kind {kind}")

    def kind_of(self, number: int) -> str:
        slot = number % 40
        if slot == 39:
            return OVER_LIMIT
        if slot in (19,):
            return POISON_ATTEMPTS
        if slot in (18, 38):
            return POISON_FORGED if slot == 18 else POISON_BROKEN
        return _MIX[slot % 20 % len(_MIX)]

    def fill(self, count: int, seed: int, start: int = 0) -> list[Planned]:
        """Put `count` mixed messages into the DLQs (the routed ones into the routed DLQ)."""
        rng = random.Random(seed)
        by_dlq: dict[str, list[tuple[Planned, str]]] = {}
        added = []
        for number in range(start, start + count):
            kind = self.kind_of(number)
            dlq = ROUTED_DLQ if kind == ROUTED else self.dlqs[number % len(self.dlqs)]
            planned = Planned(uid(number), kind, dlq)
            by_dlq.setdefault(dlq, []).append((planned, self.body(kind, number, rng)))
            added.append(planned)
        for dlq, items in by_dlq.items():
            self.send_bodies(dlq, [(p, body, None) for p, body in items])
        return added

    def send_bodies(
        self,
        dlq: str,
        items: Iterable[tuple[Planned, str, Mapping[str, Any] | None]],
    ) -> None:
        """Send planned messages to a DLQ, ten per call but never more than 1 MiB a call."""
        sqs = self.world.client("sqs")
        url = self.world.queue_url(dlq)
        batch: list[dict[str, Any]] = []
        batch_bytes = 0
        sent: list[Planned] = []
        for planned, body, attributes in items:
            self.planned[planned.uid] = planned
            entry: dict[str, Any] = {"Id": str(len(batch)), "MessageBody": body}
            if attributes:
                entry["MessageAttributes"] = dict(attributes)
            size = len(body.encode("utf-8", "surrogatepass")) + 2048
            if batch and (len(batch) == 10 or batch_bytes + size > 1_000_000):
                self._send_batch(sqs, url, batch, sent)
                batch, batch_bytes, sent = [], 0, []
            batch.append(entry)
            sent.append(planned)
            batch_bytes += size
        if batch:
            self._send_batch(sqs, url, batch, sent)

    def _send_batch(
        self, sqs: Any, url: str, entries: list[dict[str, Any]], planned: list[Planned]
    ) -> None:
        for index, entry in enumerate(entries):
            entry["Id"] = str(index)
        response = sqs.send_message_batch(QueueUrl=url, Entries=entries)
        if response.get("Failed"):
            raise AssertionError(f"the world could not be filled: {response['Failed'][:3]}")
        for entry in response["Successful"]:
            self.uid_of[entry["MessageId"]] = planned[int(entry["Id"])].uid

    # -- observing --------------------------------------------------------------------------

    def create_ledger_table(self, table: str = "retryd-ledger") -> None:
        """The DynamoDB ledger's table, as `retryd ledger create-table` makes it."""
        self.world.client("dynamodb").create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": "key", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "key", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )

    def dlq_depth(self) -> int:
        """Messages left in every DLQ, in flight or not."""
        return sum(len(backend_messages(name)) for name in [*self.dlqs, ROUTED_DLQ])

    def tally(self) -> Tally:
        tally = Tally(dict(self.planned))
        for copy in self._copies():
            if copy.uid in tally.planned:
                tally.copies.setdefault(copy.uid, []).append(copy)
            else:
                tally.strangers.append(copy.uid)
        for message in backend_messages(PARKING):
            reason = _attribute(message, "retryd.reason") or "?"
            for u in set(_uids(message.body)):
                tally.parked.setdefault(u, []).append(reason)
        for name in [*self.dlqs, ROUTED_DLQ]:
            for message in backend_messages(name):
                for u in set(_uids(message.body)):
                    tally.in_dlq[u] += 1
        return tally

    def _copies(self) -> Iterator[Copy]:
        """Every copy every target holds, one per message id found in it."""
        for message in backend_messages(DEST):
            for u in _uids(message.body):
                yield Copy(u, SQS, message.sent_timestamp / 1000, *_stamps(message))
        for message in backend_messages(TOPIC_SPY):
            notification = json.loads(message.body)
            attributes = notification.get("MessageAttributes", {})
            key = attributes.get("retryd.key", {}).get("Value")
            attempt = attributes.get("retryd.attempt", {}).get("Value")
            for u in _uids(notification.get("Message", "")):
                yield Copy(u, SNS, message.sent_timestamp / 1000, key, attempt)
        for message in backend_messages(f"spy-{BUS}"):
            for u in _uids(message.body):
                yield Copy(u, EVENTS, message.sent_timestamp / 1000)
        yield from self._lambda_copies()
        for execution in self._executions():
            attempt = execution["name"].rsplit("-a", 1)[-1]
            for u in _uids(execution["input"]):
                yield Copy(u, SFN, execution["startDate"].timestamp(), None, attempt)

    def _lambda_copies(self) -> Iterator[Copy]:
        for invocation in list(self.front.invocations):
            context = invocation.context
            for u in _uids(invocation.payload):
                key, attempt = context.get("retryd.key"), context.get("retryd.attempt")
                yield Copy(u, LAMBDA, invocation.at_s, key, attempt)

    def _executions(self) -> list[dict[str, Any]]:
        sfn = self.world.client("stepfunctions")
        executions = []
        for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=self.machine_arn):
            for item in page["executions"]:
                described = sfn.describe_execution(executionArn=item["executionArn"])
                executions.append(described)
        return executions


def _uids(text: str) -> list[str]:
    return UID.findall(text)


def backend_messages(queue: str) -> list[Any]:
    """Every message of a queue, visible or in flight, straight from moto's backend."""
    from moto.sqs.models import sqs_backends  # noqa: PLC0415 - only with the sandbox extra

    queues = sqs_backends[ACCOUNT][REGION].queues
    if queue not in queues:
        return []
    return list(queues[queue]._messages)  # observation only, nothing changed


def _attribute(message: Any, name: str) -> str | None:
    value = (message.message_attributes or {}).get(name)
    if not isinstance(value, dict):
        return None
    text = value.get("StringValue", value.get("string_value"))
    return str(text) if text is not None else None


def _stamps(message: Any) -> tuple[str | None, str | None]:
    return _attribute(message, "retryd.key"), _attribute(message, "retryd.attempt")


def write_config(path: Path, tables: Mapping[str, Mapping[str, Any]]) -> Path:
    """A retryd TOML file from {table: {key: value}}; `routes` may hold a list of tables."""
    lines: list[str] = []
    for table, values in tables.items():
        if isinstance(values, list):
            for item in values:
                lines.append(f"[[{table}]]")
                lines.extend(f"{k} = {json.dumps(v)}" for k, v in item.items())
            continue
        lines.append(f"[{table}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def base_tables(tmp_path: Path, **overrides: Mapping[str, Any]) -> dict[str, Any]:
    """retryd settings for the reliability world; `overrides` replace keys table by table."""
    tables: dict[str, Any] = {
        "aws": {"max_attempts": 1, "connect_timeout_s": 2, "read_timeout_s": 10},
        "discovery": {"queue_prefixes": ["retry-"]},
        "schedule": {"interval_s": 0.2},
        "drain": {"receive_wait_s": 0, "visibility_timeout_s": 10, "workers_per_queue": 1},
        "guards": {"allow_targets": [f"arn:aws:*:{REGION}:{ACCOUNT}:*"], "max_attempts": 5},
        "backoff": {"base_s": 0.001, "max_s": 0.001},
        "rate_limit": {"per_s": 10000, "burst": 10000},
        "ledger": {"backend": "sqlite", "path": str(tmp_path / "ledger.sqlite3")},
        "parking": {"queue": PARKING},
        "http": {"enabled": False},
        "log": {"level": "info", "format": "json"},
        "routes": [{"queue": ROUTED_DLQ, "target": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{DEST}"}],
    }
    for table, values in overrides.items():
        tables[table] = {**tables.get(table, {}), **values}
    return tables
