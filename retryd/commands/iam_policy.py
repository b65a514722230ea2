"""The least-privilege IAM policy for one configuration (`retryd iam-policy`).

The document grants what the code calls, on the resources this configuration can
reach and no others:

- SQS reads, deletes and lease changes only on the DLQs (one `PREFIX*` ARN per
  discovery prefix, one ARN per explicit queue);
- sends only to the parking queue;
- resubmission (invoke, start, send, publish, put) only on `guards.allow_targets`,
  split by service;
- the DynamoDB ledger table, when that is the backend (operator state — pauses,
  redrive jobs, audit records, deferral notes — lives in the same table, so the
  same three actions cover it).

`--role operator` prints the policy of whoever runs `retryd redrive`, `pause`,
`resume`, `jobs` and `audit`: the daemon's, plus reading, hiding and deleting
on the parking queue (a redrive `--from parking` takes parked copies back).
It is a separate policy, not one covering both, because the daemon never takes
anything out of the parking queue: a daemon role that could would let a fault
or a compromise empty the one place unrecoverable messages are kept. The
caller's identity for audit records comes from sts:GetCallerIdentity, which
needs no permission
(https://docs.aws.amazon.com/STS/latest/APIReference/API_GetCallerIdentity.html).

Only List-level calls that AWS cannot scope to a resource get `"Resource": "*"`:
`sqs:ListQueues` and `lambda:ListFunctions` (Service Authorization Reference:
https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonsqs.html
and .../list_awslambda.html list no resource type for either). No write action is
ever granted on `*`.

IAM takes `*` and `?` inside each colon-separated part of an ARN but none in
the service part
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_resource.html).
An allowlist glob is therefore copied into the policy as is, except that a
wildcard service (`arn:aws:*:...`) becomes one ARN per target service it matches.
A trailing `*` may run past a colon in IAM; no function, state machine, queue,
topic or bus name holds a colon, so that reaches no other account's resources.
`fnmatch` character classes (`[abc]`) have no IAM spelling and are refused
rather than widened.
"""

from __future__ import annotations

import fnmatch
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import anyio

from retryd.admission.allowlist import (
    LAMBDA_RESOURCE_PREFIX,
    LAMBDA_SERVICE,
    subscriber_may_be_target,
)
from retryd.admission.matching import could_match_prefix, parse_glob
from retryd.commands.kms_keys import KeyFindings, look_up_keys
from retryd.discovery.queues import is_queue_url, parse_queue_url, partition_for_region
from retryd.errors import ConfigError, ExitCode
from retryd.models import is_account_id, is_region_name
from retryd.settings import Settings

POLICY_VERSION = "2012-10-17"
UNSCOPED = "*"


DLQ_ACTIONS = (
    "sqs:ChangeMessageVisibility",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
    "sqs:ListDeadLetterSourceQueues",
    "sqs:ListQueueTags",
    "sqs:ReceiveMessage",
)
PARKING_ACTIONS = ("sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:SendMessage")
# What `retryd redrive --from parking` adds: take parked copies back out.
REDRIVE_PARKING_ACTIONS = (
    "sqs:ChangeMessageVisibility",
    "sqs:DeleteMessage",
    "sqs:ReceiveMessage",
)
ROLES = ("daemon", "operator")
# What the daemon's ledger calls (reads, and conditional puts for every write), and
# the UpdateItem of replicas agreeing on one item of the same table (retryd.cluster);
# `retryd ledger create-table` is an operator's one-off, run with their own rights.
LEDGER_ACTIONS = (
    "dynamodb:BatchGetItem",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
)


# Receiving from an SSE-KMS queue; sending to an SSE-KMS queue or topic (kms_keys.py).
DECRYPT_ACTIONS = ("kms:Decrypt",)
ENCRYPT_ACTIONS = ("kms:GenerateDataKey", "kms:Decrypt")


@dataclass(frozen=True, slots=True)
class _TargetService:
    """How one target service's ARNs look: the resource part always starts with `prefix`."""

    service: str
    prefix: str


# The services retryd resubmits to (models.Target), in the order statements are written.
_LAMBDA = _TargetService(LAMBDA_SERVICE, LAMBDA_RESOURCE_PREFIX)
_STATES = _TargetService("states", "stateMachine:")
_SQS = _TargetService("sqs", "")
_SNS = _TargetService("sns", "")
_EVENTS = _TargetService("events", "event-bus/")
TARGET_SERVICES = (_LAMBDA, _STATES, _SQS, _SNS, _EVENTS)


def _statement(sid: str, actions: Iterable[str], resources: list[str]) -> dict[str, Any]:
    # Always lists, so that the document and the CloudFormation template have one shape.
    return {"Sid": sid, "Effect": "Allow", "Action": list(actions), "Resource": resources}


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


class _Scope:
    """Partition, region and account for ARNs the configuration names only by queue name."""

    def __init__(self, account: str | None, region: str | None, partition: str) -> None:
        problems = []
        if account is not None and not is_account_id(account):
            problems.append(f"--account: {account!r} is not a 12-digit AWS account id")
        if region is not None and not is_region_name(region):
            problems.append(f"--region: {region!r} is not an AWS region name")
        if not re.fullmatch(r"aws(?:-[a-z]+)*", partition):
            problems.append(f"--partition: {partition!r} is not an ARN partition")
        if problems:
            raise ConfigError(problems)
        self.account = account or "*"
        self.region = region or "*"
        self.partition = partition

    def queue_arn(self, name_or_url: str, *, suffix: str = "") -> str:
        """The ARN of a queue given by name (in this scope) or URL (which names its owner)."""
        if not is_queue_url(name_or_url):
            return f"arn:{self.partition}:sqs:{self.region}:{self.account}:{name_or_url}{suffix}"
        location = parse_queue_url(name_or_url)
        partition = self.partition
        region = self.region
        if location.region is not None:
            region = location.region
            partition = partition_for_region(region)
        return f"arn:{partition}:sqs:{region}:{location.account}:{location.name}{suffix}"


def target_arns(allow_targets: Iterable[str]) -> dict[str, list[str]]:
    """Each allowlist glob as the ARN patterns of the target services it can match."""
    by_service: dict[str, list[str]] = {spec.service: [] for spec in TARGET_SERVICES}
    for glob in allow_targets:
        if "[" in glob:
            raise ConfigError(
                [f"guards.allow_targets: {glob!r} uses a [...] class, which IAM cannot express"]
            )
        partition, service_glob, region, account, resource = parse_glob(glob)
        for spec in TARGET_SERVICES:
            if not fnmatch.fnmatchcase(spec.service, service_glob):
                continue
            if not could_match_prefix(resource, spec.prefix):
                continue
            # "*" alone would also cover layers, aliases' policies and so on: narrow it to the
            # one resource type the target can be.
            narrowed = f"{spec.prefix}*" if set(resource) == {"*"} else resource
            by_service[spec.service].append(
                f"arn:{partition}:{spec.service}:{region}:{account}:{narrowed}"
            )
    return {service: _unique(arns) for service, arns in by_service.items()}


def lambda_resources(function_globs: list[str]) -> list[str]:
    """Each function glob, then the same glob with `:*` for its versions and aliases.

    Lambda treats `function:name` and `function:name:qualifier` as different
    resources, and a Lambda destination record names the qualified ARN
    (https://docs.aws.amazon.com/lambda/latest/dg/lambda-api-permissions-ref.html).
    """
    return _unique([*function_globs, *(f"{glob}:*" for glob in function_globs)])


def execution_resources(state_machine_globs: list[str]) -> list[str]:
    """Execution ARN patterns of the state machines (DescribeExecution after a name clash)."""
    arns = []
    for glob in state_machine_globs:
        head, _, machine = glob.partition(":stateMachine:")
        # A qualifier (version or alias) is not part of an execution's ARN.
        name = machine.split(":", 1)[0]
        arns.append(f"{head}:execution:{name}:*")
    return _unique(arns)


def _target_statements(targets: dict[str, list[str]], scope: _Scope) -> list[dict[str, Any]]:
    statements = []
    if targets["lambda"]:
        functions = lambda_resources(targets["lambda"])
        statements.append(_statement("ResubmitToLambda", ["lambda:InvokeFunction"], functions))
        # Mapping a Lambda's DLQ or on-failure destination back to its function
        # (retryd.discovery.feeds) is only worth it when a Lambda may be a target. ListFunctions
        # has no resource type; it also returns each DeadLetterConfig, so the
        # environment-revealing GetFunctionConfiguration is not needed. The async
        # invoke configs hold only destinations and retry limits, and are read for
        # every function ListFunctions returns, in this account and region.
        statements.append(_statement("ListLambdaFunctions", ["lambda:ListFunctions"], ["*"]))
        statements.append(
            _statement(
                "ReadLambdaFailureDestinations",
                ["lambda:ListFunctionEventInvokeConfigs"],
                [f"arn:{scope.partition}:lambda:{scope.region}:{scope.account}:function:*"],
            )
        )
    if targets["states"]:
        statements.append(
            _statement("ResubmitToStepFunctions", ["states:StartExecution"], targets["states"])
        )
        statements.append(
            _statement(
                "CheckStepFunctionsExecutions",
                ["states:DescribeExecution"],
                execution_resources(targets["states"]),
            )
        )
    if targets["sqs"]:
        statements.append(
            _statement(
                "ResubmitToSqs",
                # GetQueueAttributes reads each target queue's MaximumMessageSize.
                ["sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:SendMessage"],
                targets["sqs"],
            )
        )
    if targets["sns"]:
        statements.append(_statement("ResubmitToSns", ["sns:Publish"], targets["sns"]))
    if targets["events"]:
        statements.append(
            _statement("ResubmitToEventBridge", ["events:PutEvents"], targets["events"])
        )
    return statements


# Neither action has a resource type (Service Authorization Reference for Amazon SNS,
# https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonsns.html):
# they can only be granted on "*". Both only read: subscriptions, endpoints, policies.
SUBSCRIPTION_READ_ACTIONS = ("sns:GetSubscriptionAttributes", "sns:ListSubscriptions")


def policy_document(
    settings: Settings,
    *,
    account: str | None,
    region: str | None,
    partition: str = "aws",
    role: str = "daemon",
    keys: KeyFindings | None = None,
) -> dict[str, Any]:
    """The IAM policy document retryd needs for `settings`; ConfigError if none can be derived.

    `account` and `region` fill in the ARNs of queues given by name (None: any, `*`).
    `role` is "daemon" (`run`, `once`, `plan`, `inspect`) or "operator" (those and the
    operator's commands).
    `keys`, when looked up, adds the KMS actions on exactly the keys found.
    """
    if role not in ROLES:
        raise ConfigError([f"--role: {role!r} is not one of {', '.join(ROLES)}"])
    if settings.guards.allow_any_target:
        raise ConfigError(
            [
                "guards.allow_any_target = true: a least-privilege policy cannot be derived, "
                "since retryd may then call any resource; list the targets in "
                "guards.allow_targets instead"
            ]
        )
    scope = _Scope(account, region, partition)
    dlqs = _unique(
        [
            *(scope.queue_arn(prefix, suffix="*") for prefix in settings.discovery.queue_prefixes),
            *(scope.queue_arn(queue) for queue in settings.discovery.queues),
        ]
    )
    statements = [
        # ListQueues has no resource type: it can only be granted on "*".
        _statement("FindDeadLetterQueues", ["sqs:ListQueues"], ["*"]),
        _statement("DrainDeadLetterQueues", DLQ_ACTIONS, dlqs),
        _statement("ParkMessages", PARKING_ACTIONS, [scope.queue_arn(settings.parking.queue)]),
        *_target_statements(target_arns(settings.guards.allow_targets), scope),
    ]
    if subscriber_may_be_target(settings.guards):
        # The subscriber of each SNS subscription DLQ (retryd.discovery.subscriptions).
        statements.append(
            _statement("ReadSnsSubscriptionDlqs", SUBSCRIPTION_READ_ACTIONS, [UNSCOPED])
        )
    if role == "operator":
        statements.append(
            _statement(
                "RedriveParkedMessages",
                REDRIVE_PARKING_ACTIONS,
                [scope.queue_arn(settings.parking.queue)],
            )
        )
    if settings.ledger.backend == "dynamodb":
        table = (
            f"arn:{scope.partition}:dynamodb:{scope.region}:{scope.account}"
            f":table/{settings.ledger.table}"
        )
        statements.append(_statement("AttemptLedger", LEDGER_ACTIONS, [table]))
    if keys is not None and keys.decrypt:
        statements.append(_statement("DecryptDeadLetters", DECRYPT_ACTIONS, keys.decrypt))
    if keys is not None and keys.encrypt:
        statements.append(_statement("EncryptResubmissions", ENCRYPT_ACTIONS, keys.encrypt))
    return {"Version": POLICY_VERSION, "Statement": statements}


def render(document: dict[str, Any]) -> str:
    """The document as `retryd iam-policy` prints it (stable, so it can be diffed and pasted)."""
    return json.dumps(document, indent=2)


def run_iam_policy(
    settings: Settings,
    *,
    account: str | None,
    region: str | None,
    partition: str = "aws",
    role: str = "daemon",
    kms: bool = False,
) -> int:
    """Print the policy document as JSON; exit status 0 (errors raise ConfigError: exit 2).

    With `kms`, the KMS keys of encrypted DLQs, parking queue and targets are looked up
    in AWS first; an alias that cannot be resolved is named on stderr.
    """
    keys = anyio.run(look_up_keys, settings) if kms else None
    document = policy_document(
        settings, account=account, region=region, partition=partition, role=role, keys=keys
    )
    print(render(document))
    for problem in keys.unresolved if keys is not None else []:
        print(f"retryd: warning: {problem}", file=sys.stderr)
    return ExitCode.OK
