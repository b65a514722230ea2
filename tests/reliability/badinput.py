"""A seeded generator of hostile DLQ messages: whatever a DLQ writer (or attacker) could put there.

Every message still carries its unique id somewhere in the body, so it can be
accounted for; everything else about it may be wrong. Only what SQS itself
accepts is generated (XML characters, at most 1 MiB with attributes, at most 10
attributes): anything else never reaches a DLQ.
"""

from __future__ import annotations

import base64
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.world import ACCOUNT, REGION

Attributes = dict[str, dict[str, Any]]

# Characters SQS accepts, grouped by how they tend to break things.
_UNICODE_POOLS = [
    "\t\n\r ",
    "\u00e9\u00df\u00f8\u0416\u05d0\u0627\u4e2d\u6587",  # Latin-1, Cyrillic, Hebrew, Arabic, CJK
    "\u0301\u0308\u20dd",  # combining marks
    "\u200b\u200d\u2028\u2029\u202e\ufeff",  # zero-width, line separators, RTL override, BOM
    "\ue000\uf8ff\ufffd",  # private use, replacement character
    "\U0001f600\U0001f9d1\u200d\U0001f680\U0001d54f\U00010348",  # astral, ZWJ sequences
    '"\\/{}[]:,',  # JSON's own syntax
]
TYPES = ["lambda", "stepfunctions", "sqs", "sns", "eventbridge"]
# The share of failed executions told in a retryd envelope rather than a status-change event.
ENVELOPED_EXECUTIONS = 0.5


# What AWS accepts as the resource part of each target ARN (API references: Lambda
# CreateFunction FunctionName and Qualifier, SQS CreateQueue QueueName, SNS CreateTopic
# Name, Step Functions CreateStateMachine name, EventBridge CreateEventBus Name).
_PREFIX = r"arn:aws:(?P<service>[a-z]+):[a-z]{2}(-[a-z]+)+-\d:\d{12}:"
WELL_FORMED = {
    "lambda": re.compile(
        _PREFIX + r"function:[A-Za-z0-9_-]{1,64}(:(\$LATEST|[A-Za-z0-9_-]{1,128}))?"
    ),
    "sqs": re.compile(_PREFIX + r"[A-Za-z0-9_-]{1,80}(\.fifo)?"),
    "sns": re.compile(_PREFIX + r"[A-Za-z0-9_-]{1,256}(\.fifo)?"),
    "states": re.compile(_PREFIX + r"stateMachine:[A-Za-z0-9_-]{1,80}(:[A-Za-z0-9_-]{1,80})?"),
    "events": re.compile(_PREFIX + r"event-bus/[/.A-Za-z0-9_-]{1,256}"),
}


def well_formed(arn: str) -> bool:
    """Whether `arn` names a resource AWS could have: the right shape for its service."""
    match = re.match(_PREFIX, arn)
    pattern = WELL_FORMED.get(match.group("service")) if match else None
    return pattern is not None and pattern.fullmatch(arn) is not None


def allowed_arns(machine_arn: str) -> list[str]:
    """Allowlisted ARNs of targets that exist (their copies are counted)."""
    return [
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:rel-fn",
        machine_arn,
        f"arn:aws:sqs:{REGION}:{ACCOUNT}:rel-dest",
        f"arn:aws:sns:{REGION}:{ACCOUNT}:rel-topic",
        f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/rel-bus",
    ]


def malformed_arns(rng: random.Random) -> list[Any]:
    """ARNs of every wrong shape, and things that are not ARNs at all."""
    junk = "".join(rng.choice(_UNICODE_POOLS[rng.randrange(len(_UNICODE_POOLS))]) for _ in range(8))
    return [
        "",
        "arn",
        "arn:",
        "arn:aws",
        "arn:aws:lambda",
        f"arn:aws:lambda:{REGION}",
        f"arn:aws:lambda:{REGION}:{ACCOUNT}",
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:",
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:",
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:rel-fn:",
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:rel-fn:$LATEST:extra",
        f"arn:aws:lambda:{REGION}:999999999999:function:rel-fn",
        f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:rel-fn",
        f"arn:aws-cn:lambda:{REGION}:{ACCOUNT}:function:rel-fn",
        f"arn:aws:lambda:*:{ACCOUNT}:function:*",
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:rel-fn*",
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:../../rel-fn",
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:rel fn",
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{junk}",
        f"arn:aws:s3:::bucket/{junk}",
        f"arn:aws:iam::{ACCOUNT}:role/admin",
        f"arn:aws:states:{REGION}:{ACCOUNT}:execution:rel-flow:x",
        f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:",
        f"arn:aws:sqs:{REGION}:{ACCOUNT}:",
        f"arn:aws:sqs:{REGION}:{ACCOUNT}:retryd-parking",
        f"arn:aws:sqs:{REGION}:{ACCOUNT}:retry-rel-00",
        f"arn:aws:sns:{REGION}:{ACCOUNT}:",
        f"arn:aws:events:{REGION}:{ACCOUNT}:rule/x",
        f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/",
        f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/rel-dest",
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:" + "a" * 3000,
        "arn:aws:lambda:" + ":" * 40,
        "\u202earn:aws:lambda",
        None,
        7,
        ["arn:aws:lambda"],
        {"arn": "arn:aws:lambda"},
    ]


@dataclass(frozen=True)
class Hostile:
    """One generated message: its body, its attributes, and which generator made it."""

    body: str
    attributes: Attributes
    family: str
    routed: bool = False


class Generator:
    """Draws hostile messages from every family, reproducibly from a seed."""

    def __init__(self, seed: int, machine_arn: str) -> None:
        self.rng = random.Random(seed)
        self.targets = allowed_arns(machine_arn)
        self.families: list[tuple[str, Callable[[str], Hostile]]] = [
            ("invalid-json", self.invalid_json),
            ("unicode", self.unicode),
            ("huge", self.huge),
            ("nested", self.nested),
            ("wrong-types", self.wrong_types),
            ("forged-attempt", self.forged_attempt),
            ("malformed-arn", self.malformed_arn),
            ("attributes", self.attributes),
            ("lookalike", self.lookalike),
            ("routed-junk", self.routed_junk),
            ("execution-change", self.execution_change),
            ("stream-pointer", self.stream_pointer),
        ]

    def draw(self, uid: str) -> Hostile:
        family, make = self.rng.choice(self.families)
        # Huge ones are few: each is most of a mebibyte.
        if family == "huge" and self.rng.random() < 0.8:
            family, make = self.families[0]
        return make(uid)

    # -- pieces -----------------------------------------------------------------------------

    def text(self, length: int) -> str:
        pool = self.rng.choice(_UNICODE_POOLS)
        return "".join(self.rng.choice(pool) for _ in range(length))

    def envelope(self, uid: str, **changes: Any) -> dict[str, Any]:
        index = self.rng.randrange(len(TYPES))
        payload: Any = {"uid": uid, "note": self.text(self.rng.randrange(0, 40))}
        if TYPES[index] == "eventbridge":
            payload = {"Source": "rel.test", "DetailType": "Fuzz", "Detail": payload}
        document = {
            "envelope": "retryd/v1",
            "target": {"type": TYPES[index], "arn": self.targets[index]},
            "payload": payload,
        }
        document.update(changes)
        return document

    # -- families ---------------------------------------------------------------------------

    def invalid_json(self, uid: str) -> Hostile:
        valid = json.dumps(self.envelope(uid))
        # The id first, so that a cut anywhere keeps it.
        tagged = f'{{"uid": "{uid}", ' + valid[1:]
        choices = [
            tagged[: self.rng.randrange(20, len(tagged))],
            "\ufeff" + valid,
            valid.replace('"', "'"),
            valid + "}" * self.rng.randrange(1, 4),
            f'{{"uid": "{uid}", "x": NaN, "y": Infinity, "z": 1e999}}',
            f'{{"uid": "{uid}", "uid": "{uid}", "envelope": "retryd/v1", "envelope": 1}}',
            f"{uid} " + self.text(self.rng.randrange(1, 200)),
            f"[{uid}",
            f'"{uid}"',
            f"{uid}\u0000".replace("\u0000", "\ufffd"),
            f'{{"envelope": "retryd/v1" "target": {{}}, "uid": "{uid}"}}',
        ]
        return Hostile(self.rng.choice(choices), {}, "invalid-json")

    def unicode(self, uid: str) -> Hostile:
        document = self.envelope(uid)
        document["payload"] = {
            "uid": uid,
            self.text(5): self.text(self.rng.randrange(1, 300)),
            "astral": "\U0001f600" * self.rng.randrange(1, 50),
        }
        if self.rng.random() < 0.3 and document["target"]["type"] == "eventbridge":
            document["payload"] = {"Source": "rel.test", "DetailType": "Fuzz", "Detail": {}}
            document["payload"]["Detail"] = {"uid": uid, "t": self.text(30)}
        body = json.dumps(document, ensure_ascii=self.rng.random() < 0.5)
        return Hostile(body, {}, "unicode")

    def huge(self, uid: str) -> Hostile:
        size = self.rng.choice([200_000, 262_000, 300_000, 700_000, 950_000])
        document = self.envelope(uid)
        document["payload"] = {"uid": uid, "blob": "z" * size}
        if document["target"]["type"] == "eventbridge":
            document["payload"] = {"Source": "rel.test", "DetailType": "F", "Detail": {"uid": uid}}
            document["payload"]["Detail"]["blob"] = "z" * size
        return Hostile(json.dumps(document), {}, "huge")

    def nested(self, uid: str) -> Hostile:
        depth = self.rng.choice([64, 500, 1000, 5000, 100_000])
        inner = "[" * depth + f'"{uid}"' + "]" * depth
        if self.rng.random() < 0.5:
            body = inner if self.rng.random() < 0.5 else '{"a":' * depth + "1" + "}" * depth
            body = f'{{"uid": "{uid}", "deep": {body}}}'
        else:
            prefix = json.dumps(self.envelope(uid))[:-1]
            body = f'{prefix}, "payload": {{"uid": "{uid}", "deep": {inner}}}}}'
        return Hostile(body, {}, "nested")

    def wrong_types(self, uid: str) -> Hostile:
        values: list[Any] = [None, 0, -1, 1.5, True, "", "x", [], {}, [1, 2], {"a": 1}, 10**40]
        field = self.rng.choice(
            ["envelope", "target", "payload", "attempt", "idempotencyKey", "error", "firstFailedAt"]
        )
        document = self.envelope(uid)
        document[field] = self.rng.choice(values)
        if field == "target" and self.rng.random() < 0.5:
            document["target"] = {
                "type": self.rng.choice([*values, "lambda", "LAMBDA", "s3"]),
                "arn": self.rng.choice(values + self.targets),
            }
        if field == "payload":
            document["uid"] = uid
        return Hostile(json.dumps(document), {}, "wrong-types")

    def forged_attempt(self, uid: str) -> Hostile:
        attempt = self.rng.choice([0, -1, -(10**9), 1, 4, 5, 6, 10**30, 4.5, "3", "5", None])
        document = self.envelope(uid, attempt=attempt)
        attributes: Attributes = {}
        if self.rng.random() < 0.5:
            value = str(self.rng.choice([0, 1, 4, 5, 99, -3]))
            attributes["retryd.attempt"] = {"DataType": "Number", "StringValue": value}
        return Hostile(json.dumps(document), attributes, "forged-attempt")

    def malformed_arn(self, uid: str) -> Hostile:
        document = self.envelope(uid)
        document["target"]["arn"] = self.rng.choice(malformed_arns(self.rng))
        return Hostile(json.dumps(document), {}, "malformed-arn")

    def attributes(self, uid: str) -> Hostile:
        attributes: Attributes = {}
        for index in range(self.rng.randrange(1, 11)):
            kind = self.rng.choice(["String", "Number", "Binary", "String.x", "Number.int", "Bin"])
            name = self.rng.choice(
                [f"a{index}", f"retryd.{index}", "retryd.key", "retryd.reason", f"x.y-z_{index}"]
            )
            if kind.startswith("Binary") or kind == "Bin":
                raw = bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 64)))
                attributes[name] = {"DataType": "Binary", "BinaryValue": raw}
            elif kind.startswith("Number"):
                value = str(self.rng.choice([0, -1, 3.25, 10**30, "1e10"]))
                attributes[name] = {"DataType": kind, "StringValue": value}
            else:
                attributes[name] = {"DataType": kind, "StringValue": self.text(20) or "v"}
        return Hostile(json.dumps(self.envelope(uid)), attributes, "attributes")

    def lookalike(self, uid: str) -> Hostile:
        shape = self.rng.randrange(5)
        function = self.rng.choice(
            [*malformed_arns(self.rng)[:12], self.targets[0], f"{self.targets[0]}:$LATEST"]
        )
        if shape == 0:  # a Lambda on-failure destination record, fields off
            body = {
                "version": self.rng.choice(["1.0", "2.0", 1, None]),
                "timestamp": self.rng.choice(["2020-01-01T00:00:00Z", "yesterday", 0]),
                "requestContext": self.rng.choice(
                    [
                        {
                            "requestId": uid,
                            "functionArn": function,
                            "condition": "RetriesExhausted",
                            "approximateInvokeCount": self.rng.choice([1, "3", -1]),
                        },
                        None,
                        "ctx",
                    ]
                ),
                "requestPayload": self.rng.choice([{"uid": uid}, uid, None]),
                "responseContext": {"statusCode": 200, "functionError": "Unhandled"},
                "uid": uid,
            }
            return Hostile(json.dumps(body), {}, "lookalike")
        if shape == 1:  # an EventBridge rule DLQ message with odd attributes
            attributes = {
                name: {"DataType": "String", "StringValue": str(value)}
                for name, value in {
                    "RULE_ARN": self.rng.choice(malformed_arns(self.rng)[:20]) or "x",
                    "TARGET_ARN": self.rng.choice([*self.targets, function or "x"]) or "x",
                    "ERROR_CODE": self.rng.choice(["SDK_CLIENT_ERROR", "NO_PERMISSIONS", "?", "x"]),
                    "ERROR_MESSAGE": self.text(30) or "m",
                    "RETRY_ATTEMPTS": self.rng.choice(["2", "-1", "x", "1e9"]),
                }.items()
            }
            event = {"version": "0", "id": uid, "source": "rel.test", "detail": {"uid": uid}}
            return Hostile(json.dumps(event), attributes, "lookalike")
        if shape == 2:  # a Scheduler DLQ message claiming a truncated payload
            attributes = {
                "SCHEDULE_ARN": {
                    "DataType": "String",
                    "StringValue": f"arn:aws:scheduler:{REGION}:{ACCOUNT}:schedule/default/s",
                },
                "TARGET_ARN": {"DataType": "String", "StringValue": self.targets[2]},
                "ERROR_CODE": {"DataType": "String", "StringValue": "ThrottlingException"},
                "IS_PAYLOAD_TRUNCATED": {
                    "DataType": "String",
                    "StringValue": self.rng.choice(["true", "false", "maybe"]),
                },
            }
            return Hostile(json.dumps({"uid": uid}), attributes, "lookalike")
        if shape == 3:  # an SNS notification, as a non-raw subscription writes it
            body = {
                "Type": "Notification",
                "MessageId": uid,
                "TopicArn": self.rng.choice(malformed_arns(self.rng)[:20]) or "x",
                "Message": json.dumps(self.envelope(uid)),
            }
            return Hostile(json.dumps(body), {}, "lookalike")
        # A Lambda async DLQ message: the event, plus Lambda's three attributes.
        attributes = {
            "RequestID": {"DataType": "String", "StringValue": uid},
            "ErrorCode": {"DataType": "Number", "StringValue": self.rng.choice(["200", "x1"])},
            "ErrorMessage": {"DataType": "String", "StringValue": self.text(10) or "e"},
        }
        if attributes["ErrorCode"]["StringValue"] == "x1":
            attributes["ErrorCode"] = {"DataType": "String", "StringValue": "x1"}
        return Hostile(json.dumps({"uid": uid}), attributes, "lookalike")

    def execution_change(self, uid: str) -> Hostile:
        """A Step Functions status-change event naming any execution, forged ones included."""
        machine = self.targets[1]
        executions = [
            *malformed_arns(self.rng)[:24],
            machine.replace(":stateMachine:", ":execution:") + f":{uid}",
            f"arn:aws:states:{REGION}:999999999999:execution:rel-flow:{uid}",
            f"arn:aws:states:eu-west-1:{ACCOUNT}:execution:rel-flow:{uid}",
            f"arn:aws:states:{REGION}:{ACCOUNT}:express:rel-flow:{uid}:x",
        ]
        event = {
            "source": "aws.states",
            "detail-type": "Step Functions Execution Status Change",
            "detail": {
                "executionArn": self.rng.choice(executions),
                "stateMachineArn": self.rng.choice([machine, *malformed_arns(self.rng)[:8]]),
                "status": self.rng.choice(["FAILED", "TIMED_OUT", "ABORTED", "SUCCEEDED", 3]),
                "input": self.rng.choice([json.dumps({"uid": uid}), None, uid, 7]),
                "redriveCount": self.rng.choice([0, 1, -1, "1", None]),
                "stopDate": self.rng.choice([0, 1e30, "today", None]),
                "uid": uid,
            },
        }
        # Half of them are told in an envelope instead, drawn from a generator of their own,
        # so the seeded draws of every other message stay what they were.
        own = random.Random(f"execution-envelope-{uid}")
        if own.random() < ENVELOPED_EXECUTIONS:
            return self.execution_envelope(uid, own)
        return Hostile(json.dumps(event), {}, "execution-change")

    def execution_envelope(self, uid: str, rng: random.Random) -> Hostile:
        """A retryd envelope naming any execution to redrive, forged ones included."""
        machine = self.targets[1]
        target: dict[str, Any] = {
            "type": rng.choice(["stepfunctions", "stepfunctions", "lambda"]),
            "arn": rng.choice(
                [
                    *malformed_arns(rng)[:16],
                    machine.replace(":stateMachine:", ":execution:") + f":{uid}",
                    f"arn:aws:states:{REGION}:999999999999:execution:rel-flow:{uid}",
                    f"arn:aws:states:eu-west-1:{ACCOUNT}:execution:rel-flow:{uid}",
                    f"arn:aws:states:{REGION}:{ACCOUNT}:express:rel-flow:{uid}:x",
                    f"arn:aws:states:{REGION}:{ACCOUNT}:execution:rel-flow",
                ]
            ),
        }
        count = rng.choice([None, 0, 2, -1, "1", True])
        if count is not None:
            target["redriveCount"] = count
        body = {"envelope": "retryd/v1", "target": target, "payload": {"uid": uid}}
        return Hostile(json.dumps(body), {}, "execution-envelope")

    def stream_pointer(self, uid: str) -> Hostile:
        """A stream batch pointer naming any stream and range, forged ones included."""
        streams = [
            *malformed_arns(self.rng)[:24],
            f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/rel-{uid}",
            f"arn:aws:kinesis:{REGION}:999999999999:stream/rel-stream",
            f"arn:aws:kinesis:eu-west-1:{ACCOUNT}:stream/rel-stream",
            f"arn:aws:dynamodb:{REGION}:999999999999:table/rel/stream/2024-01-01T00:00:00.000",
            f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/rel-{uid}/stream/2024-01-01T00:00:00.000",
        ]
        sequences = [
            "1",
            "0",
            "49601189658422359378836298521827638475320189012309704722",
            "-1",
            "x",
            7,
        ]
        info = {
            "streamArn": self.rng.choice(streams),
            "shardId": self.rng.choice(["shardId-000000000000", "", 7, "../x"]),
            "startSequenceNumber": self.rng.choice(sequences),
            "endSequenceNumber": self.rng.choice(sequences),
            "batchSize": self.rng.choice([1, 0, 10_000, 10_001, "5", True]),
        }
        record = {
            "requestContext": {
                "requestId": uid,
                "functionArn": self.rng.choice([self.targets[0], *malformed_arns(self.rng)[:12]]),
                "condition": "RetryAttemptsExhausted",
            },
            self.rng.choice(["KinesisBatchInfo", "DDBStreamBatchInfo"]): info,
            "uid": uid,
        }
        return Hostile(json.dumps(record), {}, "stream-pointer")

    def routed_junk(self, uid: str) -> Hostile:
        body = self.rng.choice(
            [
                f"{uid} plain text " + self.text(50),
                json.dumps({"uid": uid, "envelope": "retryd/v1"}),
                json.dumps(self.envelope(uid)),
                f"{uid} " + base64.b64encode(self.rng.randbytes(300)).decode(),
            ]
        )
        return Hostile(body, {}, "routed-junk", routed=True)
