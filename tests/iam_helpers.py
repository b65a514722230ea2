"""Record the AWS calls retryd makes, name the IAM permission each needs, and judge a policy.

Recording is an observer on retryd's own clients: a `before-parameter-build`
handler sees (operation, parameters) of every API call, once per call however
often botocore retries it, and changes nothing. Each call is then mapped to the
IAM action it needs and the resource ARN that action is checked on, following
the Service Authorization Reference (per service:
https://docs.aws.amazon.com/service-authorization/latest/reference/reference_policies_actions-resources-contextkeys.html).

The policy judge reads wildcards the way IAM documents them
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_resource.html):
`*` is any run of characters and `?` one character; a `*` that ends a
colon-separated part of the ARN may run past the colon. A `*` inside a part, or
a `?`, is not taken to cross a colon: when in doubt the judge allows less than
IAM might, so a call it passes is one IAM allows.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from retryd.aws import AwsClients, open_clients, opened
from retryd.commands.inspect import run_inspect
from retryd.commands.plan import run_plan
from retryd.drain.cycle import CycleReport
from retryd.service.lifecycle import run_once
from retryd.settings import AwsSettings, Settings
from tests.e2e.helpers import one_decision_each

# Calls that AWS cannot scope to a resource: IAM checks them on "*".
UNSCOPED = "*"


@dataclass(frozen=True, slots=True)
class ApiCall:
    """One API call as the SDK was asked to make it."""

    phase: str
    service: str
    operation: str
    region: str
    params: Mapping[str, Any]


@dataclass
class CallLog:
    """Every call observed, tagged with the phase (`once`, `plan`, ...) running at the time."""

    phase: str = ""
    calls: list[ApiCall] = field(default_factory=list)

    def observer(self, service: str, region: str) -> Any:
        def observe(params: Mapping[str, Any], model: Any, **_: Any) -> None:
            # A shallow copy: the SDK may fill in defaults after this event.
            self.calls.append(ApiCall(self.phase, service, model.name, region, dict(params)))

        return observe


@asynccontextmanager
async def recording_clients(settings: AwsSettings, log: CallLog) -> AsyncIterator[AwsClients]:
    """retryd's own clients (`retryd.aws.open_clients`), each with `log` observing its calls."""
    async with open_clients(settings) as clients:
        for spec in dataclasses.fields(clients):
            # Made now (retryd makes all but SQS's on their first call): observed from the start.
            client = await opened(getattr(clients, spec.name))
            client.meta.events.register(
                "before-parameter-build",
                log.observer(client.meta.service_model.service_name, client.meta.region_name),
            )
        yield clients


# The key under which a call's place in SignedCallLog.calls rides in botocore's request context.
_CALL_INDEX = "retryd_test_call_index"
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


@dataclass
class SignedCallLog(CallLog):
    """A CallLog that also keeps the access key id each call was signed with.

    Watches whole botocore sessions (every client made from one afterwards, the STS
    clients of AssumeRole included), so it sees calls made with any credentials.
    """

    access_keys: dict[int, str] = field(default_factory=dict)

    def watch(self, session: Any) -> None:
        """Observe every client `session` (a botocore session) makes from now on."""
        emitter = session.get_component("event_emitter")
        emitter.register("before-parameter-build", self._parameters)
        # Last: after botocore's signer (also a request-created handler) has signed.
        emitter.register_last("request-created", self._signed)

    def _parameters(self, params: Mapping[str, Any], model: Any, context: Any, **_: Any) -> None:
        context[_CALL_INDEX] = len(self.calls)
        service = model.service_model.service_name
        region = str(context["client_region"])
        self.calls.append(ApiCall(self.phase, service, model.name, region, dict(params)))

    def _signed(self, request: Any, **_: Any) -> None:
        index = request.context.get(_CALL_INDEX)
        header = request.headers.get("Authorization") or b""
        text = header.decode() if isinstance(header, bytes) else str(header)
        match = _CREDENTIAL.search(text)
        if index is not None and match is not None:
            self.access_keys[index] = match.group(1)

    def signed_with(self) -> list[tuple[ApiCall, str | None]]:
        """Each call with the access key id that signed it (None: never signed, never sent)."""
        return [(call, self.access_keys.get(index)) for index, call in enumerate(self.calls)]


# -- Which permission a call needs ------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class IamRequest:
    """An IAM action on one resource ARN (or on UNSCOPED), with the condition keys it carries."""

    action: str
    resource: str
    # (condition key, value) the request context holds, e.g. ("s3:prefix", "aws/lambda/").
    context: tuple[tuple[str, str], ...] = ()


class UnmappedCallError(LookupError):
    """A call this module does not know the permission of: the mapping must be taught it."""


def partition_for(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def _arn(service: str, region: str, account: str, resource: str) -> str:
    return f"arn:{partition_for(region)}:{service}:{region}:{account}:{resource}"


def queue_arn_from_url(url: str, default_region: str) -> str:
    """`https://sqs.R.amazonaws.com/ACCOUNT/NAME` (or any host, with the client's region)."""
    parts = urlsplit(url)
    account, name = parts.path.strip("/").split("/")
    host = parts.hostname or ""
    region = default_region
    for pattern in (r"sqs\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?", r"([a-z0-9-]+)\.queue\."):
        match = re.match(pattern, host)
        if match:
            region = match.group(1)
            break
    return _arn("sqs", region, account, name)


# SQS operations checked on the queue of their QueueUrl; a batch call needs the
# permission of its single form
# (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-api-permissions-reference.html).
_SQS_ON_QUEUE = {
    "ChangeMessageVisibility": "ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
    "DeleteMessage": "DeleteMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "GetQueueAttributes": "GetQueueAttributes",
    "ListDeadLetterSourceQueues": "ListDeadLetterSourceQueues",
    "ListQueueTags": "ListQueueTags",
    "ReceiveMessage": "ReceiveMessage",
    "SendMessage": "SendMessage",
    "SendMessageBatch": "SendMessage",
}


def _sqs(call: ApiCall, account: str) -> list[IamRequest]:
    params = call.params
    if call.operation == "ListQueues":
        return [IamRequest("sqs:ListQueues", UNSCOPED)]
    if call.operation == "GetQueueUrl":
        owner = str(params.get("QueueOwnerAWSAccountId") or account)
        return [
            IamRequest("sqs:GetQueueUrl", _arn("sqs", call.region, owner, str(params["QueueName"])))
        ]
    action = _SQS_ON_QUEUE.get(call.operation)
    if action is None:
        raise UnmappedCallError(f"sqs {call.operation}")
    return [IamRequest(f"sqs:{action}", queue_arn_from_url(str(params["QueueUrl"]), call.region))]


def lambda_function_arn(
    function_name: str, qualifier: str | None, region: str, account: str
) -> str:
    """The ARN IAM checks for a FunctionName in any of its spellings, plus a Qualifier."""
    if function_name.startswith("arn:"):
        arn = function_name
    elif ":function:" in function_name:
        # ACCOUNT:function:NAME[:QUALIFIER]
        owner, _, rest = function_name.partition(":function:")
        arn = _arn("lambda", region, owner, f"function:{rest}")
    else:
        # NAME[:QUALIFIER]
        arn = _arn("lambda", region, account, f"function:{function_name}")
    return f"{arn}:{qualifier}" if qualifier else arn


def _lambda(call: ApiCall, account: str) -> list[IamRequest]:
    params = call.params
    if call.operation == "ListFunctions":
        return [IamRequest("lambda:ListFunctions", UNSCOPED)]
    # Invoke is authorised by lambda:InvokeFunction
    # (https://docs.aws.amazon.com/lambda/latest/dg/lambda-api-permissions-ref.html).
    action = {"Invoke": "InvokeFunction"}.get(call.operation, call.operation)
    if call.operation not in ("Invoke", "ListFunctionEventInvokeConfigs"):
        raise UnmappedCallError(f"lambda {call.operation}")
    function = lambda_function_arn(
        str(params["FunctionName"]), params.get("Qualifier"), call.region, account
    )
    return [IamRequest(f"lambda:{action}", function)]


def _states(call: ApiCall) -> list[IamRequest]:
    if call.operation == "StartExecution":
        return [IamRequest("states:StartExecution", str(call.params["stateMachineArn"]))]
    if call.operation in ("DescribeExecution", "RedriveExecution"):
        return [IamRequest(f"states:{call.operation}", str(call.params["executionArn"]))]
    raise UnmappedCallError(f"stepfunctions {call.operation}")


def _sns(call: ApiCall) -> list[IamRequest]:
    # PublishBatch needs sns:Publish (https://docs.aws.amazon.com/sns/latest/api/API_PublishBatch.html).
    if call.operation in ("Publish", "PublishBatch"):
        topic = call.params.get("TopicArn") or call.params.get("TargetArn")
        return [IamRequest("sns:Publish", str(topic))]
    # Neither has a resource type in the Service Authorization Reference: "*" only.
    if call.operation in ("ListSubscriptions", "GetSubscriptionAttributes"):
        return [IamRequest(f"sns:{call.operation}", UNSCOPED)]
    raise UnmappedCallError(f"sns {call.operation}")


def _events(call: ApiCall, account: str) -> list[IamRequest]:
    if call.operation != "PutEvents":
        raise UnmappedCallError(f"events {call.operation}")
    requests = []
    for entry in call.params["Entries"]:
        # An entry without EventBusName goes to the account's default bus.
        bus = str(entry.get("EventBusName") or "default")
        arn = (
            bus
            if bus.startswith("arn:")
            else _arn("events", call.region, account, f"event-bus/{bus}")
        )
        requests.append(IamRequest("events:PutEvents", arn))
    return requests


def _s3(call: ApiCall) -> list[IamRequest]:
    """S3's actions: ListObjectsV2 is s3:ListBucket on the bucket (its Prefix the s3:prefix
    condition key), DeleteObjects one s3:DeleteObject per key."""
    params = call.params
    bucket = f"arn:{partition_for(call.region)}:s3:::{params['Bucket']}"
    if call.operation == "ListObjectsV2":
        return [
            IamRequest("s3:ListBucket", bucket, (("s3:prefix", str(params.get("Prefix", ""))),))
        ]
    if call.operation == "GetObject":
        return [IamRequest("s3:GetObject", f"{bucket}/{params['Key']}")]
    if call.operation == "PutObjectTagging":
        return [IamRequest("s3:PutObjectTagging", f"{bucket}/{params['Key']}")]
    if call.operation == "DeleteObjects":
        return [
            IamRequest("s3:DeleteObject", f"{bucket}/{item['Key']}")
            for item in params["Delete"]["Objects"]
        ]
    raise UnmappedCallError(f"s3 {call.operation}")


def _table_arn(table: str, region: str, account: str) -> str:
    return (
        table if table.startswith("arn:") else _arn("dynamodb", region, account, f"table/{table}")
    )


def _dynamodb(call: ApiCall, account: str) -> list[IamRequest]:
    params = call.params
    if call.operation in ("BatchGetItem", "BatchWriteItem"):
        return [
            IamRequest(f"dynamodb:{call.operation}", _table_arn(table, call.region, account))
            for table in params["RequestItems"]
        ]
    if call.operation in ("GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query"):
        table = _table_arn(str(params["TableName"]), call.region, account)
        return [IamRequest(f"dynamodb:{call.operation}", table)]
    if call.operation == "TransactWriteItems":
        # Each action is authorised as its own operation
        # (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis-iam.html).
        actions = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem"}
        actions["ConditionCheck"] = "ConditionCheckItem"
        return [
            IamRequest(
                f"dynamodb:{actions[kind]}",
                _table_arn(str(body["TableName"]), call.region, account),
            )
            for item in params["TransactItems"]
            for kind, body in item.items()
        ]
    raise UnmappedCallError(f"dynamodb {call.operation}")


def _kinesis(call: ApiCall) -> list[IamRequest]:
    # Both are authorised on the stream (Service Authorization Reference, Kinesis Data Streams).
    if call.operation in ("GetShardIterator", "GetRecords"):
        return [IamRequest(f"kinesis:{call.operation}", str(call.params["StreamARN"]))]
    raise UnmappedCallError(f"kinesis {call.operation}")


def _dynamodbstreams(call: ApiCall) -> list[IamRequest]:
    # DynamoDB Streams' actions are `dynamodb:` actions on the stream ARN. GetRecords names
    # only the iterator, which starts with its stream's ARN (`<stream arn>|1|...`).
    if call.operation == "GetShardIterator":
        return [IamRequest("dynamodb:GetShardIterator", str(call.params["StreamArn"]))]
    if call.operation == "GetRecords":
        stream = str(call.params["ShardIterator"]).split("|", 1)[0]
        return [IamRequest("dynamodb:GetRecords", stream)]
    raise UnmappedCallError(f"dynamodbstreams {call.operation}")


def _sts(call: ApiCall) -> list[IamRequest]:
    if call.operation == "AssumeRole":
        return [IamRequest("sts:AssumeRole", str(call.params["RoleArn"]))]
    # Needs no permission: any principal may ask who it is
    # (https://docs.aws.amazon.com/STS/latest/APIReference/API_GetCallerIdentity.html).
    if call.operation == "GetCallerIdentity":
        return []
    raise UnmappedCallError(f"sts {call.operation}")


def iam_requests(call: ApiCall, account: str) -> list[IamRequest]:
    """What IAM checks for `call` made by a principal of `account`; UnmappedCallError if unknown."""
    mappings: dict[str, Callable[[], list[IamRequest]]] = {
        "sts": lambda: _sts(call),
        "sqs": lambda: _sqs(call, account),
        "lambda": lambda: _lambda(call, account),
        "stepfunctions": lambda: _states(call),
        "sns": lambda: _sns(call),
        "events": lambda: _events(call, account),
        "dynamodb": lambda: _dynamodb(call, account),
        "s3": lambda: _s3(call),
        "kinesis": lambda: _kinesis(call),
        "dynamodbstreams": lambda: _dynamodbstreams(call),
    }
    mapping = mappings.get(call.service)
    if mapping is None:
        raise UnmappedCallError(f"{call.service} {call.operation}")
    return mapping()


# -- Judging a policy document ----------------------------------------------------------


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def action_matches(pattern: str, action: str) -> bool:
    """IAM action names: case-insensitive, `*` any run, `?` one character."""
    regex = "".join(
        ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern
    )
    return re.fullmatch(regex, action, re.IGNORECASE) is not None


def _resource_regex(pattern: str) -> str:
    pieces = []
    for index, char in enumerate(pattern):
        if char == "*":
            ends_part = index + 1 == len(pattern) or pattern[index + 1] == ":"
            pieces.append(".*" if ends_part else "[^:]*")
        elif char == "?":
            pieces.append("[^:]")
        else:
            pieces.append(re.escape(char))
    return "".join(pieces)


def resource_matches(pattern: str, resource: str) -> bool:
    """Whether a Resource pattern covers an ARN (case-sensitive), read as the module doc says."""
    if pattern == "*":
        return True
    if resource == UNSCOPED:
        # Only "*" itself grants an action that has no resource type.
        return False
    return re.fullmatch(_resource_regex(pattern), resource) is not None


def statements(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The document's statements; NotAction/NotResource are refused (retryd never writes them)."""
    found = []
    for statement in document["Statement"]:
        unsupported = {"NotAction", "NotResource"} & set(statement)
        condition = statement.get("Condition", {})
        if unsupported or set(condition) - {"StringLike"}:
            raise ValueError(f"statement {statement.get('Sid')} uses {sorted(unsupported)}")
        found.append(statement)
    return found


def _conditions_hold(statement: Mapping[str, Any], request: IamRequest) -> bool:
    """StringLike: every key named must be in the request's context, matching a pattern
    (`*` any run, `?` one character); a key absent from the context fails it, as in IAM."""
    context = dict(request.context)
    for key, patterns in statement.get("Condition", {}).get("StringLike", {}).items():
        value = context.get(key)
        if value is None or not any(
            re.fullmatch(
                "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in p), value
            )
            for p in _as_list(patterns)
        ):
            return False
    return True


def allowing(document: Mapping[str, Any], request: IamRequest) -> list[str]:
    """The Sids of the Allow statements that grant `request`; empty if none (or a Deny matches)."""
    allowed = []
    for statement in statements(document):
        if not any(action_matches(p, request.action) for p in _as_list(statement["Action"])):
            continue
        if not any(resource_matches(p, request.resource) for p in _as_list(statement["Resource"])):
            continue
        if not _conditions_hold(statement, request):
            continue
        if statement["Effect"] == "Deny":
            return []
        allowed.append(str(statement["Sid"]))
    return allowed


def granted_pairs(document: Mapping[str, Any]) -> set[tuple[str, str]]:
    """Every (Sid, action) the document grants."""
    return {
        (str(statement["Sid"]), action)
        for statement in statements(document)
        if statement["Effect"] == "Allow"
        for action in _as_list(statement["Action"])
    }


async def inspect_plan_once(
    settings: Settings, log: CallLog, *, inspect: Sequence[str] = (), max_messages: int
) -> CycleReport:
    """`retryd inspect`, `plan` and `once`, each through its own entry point, each call
    tagged with its phase; read-only commands first, so they see every message before the
    cycle takes them. The cycle must end without errors."""
    log.phase = "inspect"
    assert (
        await run_inspect(settings, queues=list(inspect), output="json", max_messages=max_messages)
        == 0
    )
    log.phase = "plan"
    assert await run_plan(settings, output="json", max_messages=max_messages) == 0
    log.phase = "once"
    report = one_decision_each(await run_once(settings, collect=True))
    assert report.ok, report.errors
    return report
