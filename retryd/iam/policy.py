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
`--role console` prints the policy of `retryd console`: the operator's, no more
and no less, because the console runs the same redrive jobs (reading the DLQs and the
parking queue, sending to the targets, writing the ledger) besides reading the read
model and control store (the ledger's table) and each DLQ's GetQueueAttributes, which
the operator's policy already holds.
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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from retryd.admission.allowlist import (
    lambda_may_be_target,
    subscriber_may_be_target,
)
from retryd.arns import (
    is_account_id,
    is_queue_url,
    is_region_name,
    parse_glob,
    parse_queue_url,
    partition_for_region,
)
from retryd.errors import ConfigError
from retryd.iam.kms_keys import KeyFindings
from retryd.iam.targets import target_arns, unique
from retryd.places import Place, Places
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
ROLES = ("daemon", "operator", "console")
# The roles that take parked copies back (a redrive --from parking).
REDRIVING_ROLES = frozenset({"operator", "console"})
# What the daemon's ledger calls (reads, and conditional puts for every write), and
# the UpdateItem of replicas agreeing on one item of the same table (retryd.cluster);
# `retryd ledger create-table` is an operator's one-off, run with their own rights.
LEDGER_ACTIONS = (
    "dynamodb:BatchGetItem",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
)


# S3 failure destinations ([discovery] s3_sources, s3_from_destinations): list the prefix,
# read each object, then delete or tag it once its copy is safe.
S3_LIST_ACTIONS = ("s3:ListBucket",)
S3_READ_ACTIONS = ("s3:GetObject",)
S3_SETTLE_ACTIONS = {"delete": ("s3:DeleteObject",), "tag": ("s3:PutObjectTagging",)}


# Receiving from an SSE-KMS queue; sending to an SSE-KMS queue or topic (retryd.iam.kms_keys).
DECRYPT_ACTIONS = ("kms:Decrypt",)
ENCRYPT_ACTIONS = ("kms:GenerateDataKey", "kms:Decrypt")


def _statement(sid: str, actions: Iterable[str], resources: list[str]) -> dict[str, Any]:
    # Always lists, so that the document and the CloudFormation template have one shape.
    return {"Sid": sid, "Effect": "Allow", "Action": list(actions), "Resource": resources}


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


def lambda_resources(function_globs: list[str]) -> list[str]:
    """Each function glob, then the same glob with `:*` for its versions and aliases.

    Lambda treats `function:name` and `function:name:qualifier` as different
    resources, and a Lambda destination record names the qualified ARN
    (https://docs.aws.amazon.com/lambda/latest/dg/lambda-api-permissions-ref.html).
    """
    return unique([*function_globs, *(f"{glob}:*" for glob in function_globs)])


def execution_resources(state_machine_globs: list[str]) -> list[str]:
    """Execution ARN patterns of the state machines (DescribeExecution after a name clash,
    and of a failed execution; RedriveExecution)."""
    arns = []
    for glob in state_machine_globs:
        head, _, machine = glob.partition(":stateMachine:")
        # A qualifier (version or alias) is not part of an execution's ARN.
        name = machine.split(":", 1)[0]
        arns.append(f"{head}:execution:{name}:*")
    return unique(arns)


def _target_statements(
    targets: dict[str, list[str]], scopes: list[_Scope], *, lambda_reads: bool
) -> list[dict[str, Any]]:
    statements = []
    if targets["lambda"]:
        functions = lambda_resources(targets["lambda"])
        statements.append(_statement("ResubmitToLambda", ["lambda:InvokeFunction"], functions))
    if lambda_reads:
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
                unique(
                    f"arn:{scope.partition}:lambda:{scope.region}:{scope.account}:function:*"
                    for scope in scopes
                ),
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
        # A failed execution a message names is resumed in place (RedriveExecution)
        # rather than started again: its ARN is an execution of an allowed machine.
        statements.append(
            _statement(
                "RedriveStepFunctionsExecutions",
                ["states:RedriveExecution"],
                execution_resources(targets["states"]),
            )
        )
    if targets["lambda"]:
        statements += _stream_statements(targets)
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


def _stream_statements(targets: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Reading back a failed stream batch (retryd.targets.stream_replay) from the streams the
    allowlist admits: an iterator at its first record, then its records. Nothing else."""
    statements = []
    if targets["kinesis"]:
        statements.append(
            _statement(
                "ReadKinesisBatches",
                ["kinesis:GetShardIterator", "kinesis:GetRecords"],
                targets["kinesis"],
            )
        )
    if targets["dynamodb"]:
        statements.append(
            _statement(
                "ReadDynamoDbStreamBatches",
                ["dynamodb:GetShardIterator", "dynamodb:GetRecords"],
                targets["dynamodb"],
            )
        )
    return statements


def _check_role(role: str, settings: Settings) -> None:
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


def _work_statements(
    settings: Settings,
    scopes: list[_Scope],
    targets: dict[str, list[str]],
    *,
    dlqs: list[str],
    role: str,
) -> list[dict[str, Any]]:
    """What draining the DLQs of `scopes` (one account, its regions) calls there."""
    parking = unique(scope.queue_arn(settings.parking.queue) for scope in scopes)
    statements = [
        # ListQueues has no resource type: it can only be granted on "*".
        _statement("FindDeadLetterQueues", ["sqs:ListQueues"], ["*"]),
        *([_statement("DrainDeadLetterQueues", DLQ_ACTIONS, dlqs)] if dlqs else []),
        *_s3_statements(settings, scopes[0].partition if scopes else "aws"),
        _statement("ParkMessages", PARKING_ACTIONS, parking),
        # Feeds are read wherever DLQs are found, whichever place the Lambda target is in.
        *_target_statements(targets, scopes, lambda_reads=lambda_may_be_target(settings.guards)),
    ]
    if subscriber_may_be_target(settings.guards):
        # The subscriber of each SNS subscription DLQ (retryd.discovery.subscriptions).
        statements.append(
            _statement("ReadSnsSubscriptionDlqs", SUBSCRIPTION_READ_ACTIONS, [UNSCOPED])
        )
    if role in REDRIVING_ROLES:
        statements.append(_statement("RedriveParkedMessages", REDRIVE_PARKING_ACTIONS, parking))
    return statements


def _s3_statements(settings: Settings, partition: str) -> list[dict[str, Any]]:
    """Listing each S3 source's prefix (and nothing else of its bucket), reading and
    settling its objects. Buckets found from destinations are not known in advance: any
    bucket, but only Lambda's `aws/lambda/async/` keys."""
    discovery = settings.discovery
    sources = [source.partition("/") for source in discovery.s3_sources]
    pairs = [(bucket, prefix) for bucket, _, prefix in sources]
    if discovery.s3_from_destinations:
        pairs.append(("*", "aws/lambda/async/"))
    if not pairs:
        return []
    statements = []
    for n, (bucket, prefix) in enumerate(dict.fromkeys(pairs), start=1):
        statement = _statement(
            f"ListS3FailureRecords{n}", S3_LIST_ACTIONS, [f"arn:{partition}:s3:::{bucket}"]
        )
        statement["Condition"] = {"StringLike": {"s3:prefix": [f"{prefix}*"]}}
        statements.append(statement)
    objects = unique(f"arn:{partition}:s3:::{bucket}/{prefix}*" for bucket, prefix in pairs)
    actions = (*S3_READ_ACTIONS, *S3_SETTLE_ACTIONS[discovery.s3_settle])
    statements.append(_statement("SettleS3FailureRecords", actions, objects))
    return statements


def _ledger_statements(settings: Settings, scope: _Scope) -> list[dict[str, Any]]:
    if settings.ledger.backend != "dynamodb":
        return []
    table = (
        f"arn:{scope.partition}:dynamodb:{scope.region}:{scope.account}"
        f":table/{settings.ledger.table}"
    )
    return [_statement("AttemptLedger", LEDGER_ACTIONS, [table])]


def _key_statements(keys: KeyFindings | None) -> list[dict[str, Any]]:
    statements = []
    if keys is not None and keys.decrypt:
        statements.append(_statement("DecryptDeadLetters", DECRYPT_ACTIONS, keys.decrypt))
    if keys is not None and keys.encrypt:
        statements.append(_statement("EncryptResubmissions", ENCRYPT_ACTIONS, keys.encrypt))
    return statements


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
    `role` is "daemon" (`run`, `once`, `plan`, `inspect`), "operator" (those and the
    operator's commands) or "console" (`retryd console`, which runs redrive jobs too).
    `keys`, when looked up, adds the KMS actions on exactly the keys found.
    This is the one-account document; with [[accounts]], see organisation_policies.
    """
    _check_role(role, settings)
    scope = _Scope(account, region, partition)
    dlqs = unique(
        [
            *(scope.queue_arn(prefix, suffix="*") for prefix in settings.discovery.queue_prefixes),
            *(scope.queue_arn(queue) for queue in settings.discovery.queues),
        ]
    )
    targets = target_arns(settings.guards.allow_targets)
    statements = [
        *_work_statements(settings, [scope], targets, dlqs=dlqs, role=role),
        *_ledger_statements(settings, scope),
        *_key_statements(keys),
    ]
    return {"Version": POLICY_VERSION, "Statement": statements}


# -- The organisation set-up: one policy per account ------------------------------------------

# (account, region), as [[accounts]] lists them.
AccountRegion = tuple[str, str]


def _glob_accounts(glob: str, places: Iterable[AccountRegion]) -> list[str]:
    """The listed accounts an allowlist glob can name a resource of (any region of the
    glob's, in the account's partition), in the order listed."""
    partition, _, _, account, _ = parse_glob(glob)
    return unique(
        place_account
        for place_account, place_region in places
        if fnmatch.fnmatchcase(place_account, account)
        and fnmatch.fnmatchcase(partition_for_region(place_region), partition)
    )


def place_target_globs(
    allow_targets: Iterable[str], own: list[AccountRegion], every: list[AccountRegion]
) -> list[str]:
    """The allowlist globs one account's role resubmits to, narrowed to its account.

    retryd sends to a target in a listed account with that account's role, in the
    target's own region (listed or not), and to a target in any other account with the
    role of the DLQ's account (the target's resource policy must then admit it). So a
    glob that can name a resource of a listed account is granted, narrowed to that
    account and keeping its region, to that account's role only; a glob that can name
    none (another account) is granted as is to every role. A glob matching both is
    narrowed to the listed accounts: list an outside target with its own account to
    have it granted.
    """
    own_accounts = {account for account, _ in own}
    globs = []
    for glob in allow_targets:
        partition, service, region, _, resource = parse_glob(glob)
        matched = _glob_accounts(glob, every)
        if not matched:
            globs.append(glob)
            continue
        for account in matched:
            if account not in own_accounts:
                continue
            part = partition
            if "*" in partition:
                part = partition_for_region(next(r for a, r in own if a == account))
            globs.append(f"arn:{part}:{service}:{region}:{account}:{resource}")
    return unique(globs)


@dataclass(frozen=True, slots=True)
class AccountPolicy:
    """The documents one account of the organisation set-up needs."""

    account_id: str
    # The member role to create (None: the home account, whose role retryd runs with).
    role_arn: str | None
    policy: dict[str, Any]
    # Who may assume the member role; None for the home account.
    trust_policy: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"policy": self.policy}
        if self.trust_policy is not None:
            document["trust_policy"] = self.trust_policy
        return document


_ROLE_ARN = re.compile(r"arn:(?P<partition>aws[a-z-]*):iam::(?P<account>[0-9]{12}):role/.+")


def _home_account(settings: Settings, account: str | None, home_role: str | None) -> str | None:
    """The home account: its [[accounts]] entry, else --account, else --home-role's."""
    candidates: dict[str, str] = {}
    for entry in settings.accounts:
        if entry.role_arn is None:
            candidates["the [[accounts]] entry without role_arn"] = entry.account_id
    if account is not None:
        candidates["--account"] = account
    if home_role is not None:
        match = _ROLE_ARN.fullmatch(home_role)
        if match is None:
            raise ConfigError(
                [
                    f"--home-role: {home_role!r} is not an IAM role ARN "
                    "(arn:aws:iam::ACCOUNT:role/NAME)"
                ]
            )
        candidates["--home-role"] = match["account"]
    if len(set(candidates.values())) > 1:
        said = ", ".join(f"{source} says {value}" for source, value in candidates.items())
        raise ConfigError([f"the home account is given twice, differently: {said}"])
    return next(iter(candidates.values()), None)


def trust_policy(
    *, home_account: str, home_role: str | None, external_id: str | None, partition: str
) -> dict[str, Any]:
    """Who may assume a member role: the home account (any role its admins allow to call
    sts:AssumeRole on it), or exactly the home role; with the external id when one is set."""
    principal = home_role or f"arn:{partition}:iam::{home_account}:root"
    statement: dict[str, Any] = {
        "Sid": "RetrydHomeAccount",
        "Effect": "Allow",
        "Principal": {"AWS": principal},
        "Action": ["sts:AssumeRole"],
    }
    if external_id is not None:
        statement["Condition"] = {"StringEquals": {"sts:ExternalId": external_id}}
    return {"Version": POLICY_VERSION, "Statement": [statement]}


def _account_scopes(account: str, regions: list[str]) -> list[_Scope]:
    return [_Scope(account, region, partition_for_region(region)) for region in regions]


def _account_dlqs(settings: Settings, scopes: list[_Scope], account: str) -> list[str]:
    """DLQ ARNs in one account's places: prefixes and names in each region; a queue given
    by URL or ARN only in the place retryd reads it in (`Places.entries_for`: a URL whose
    host names no region in the account's first listed region), and nowhere when that
    place is not listed."""
    view = Places.listed(settings.accounts, Place(account, scopes[0].region))
    arns = [
        scope.queue_arn(prefix, suffix="*")
        for scope in scopes
        for prefix in settings.discovery.queue_prefixes
    ]
    for queue in settings.discovery.queues:
        named = queue.startswith("arn:") or is_queue_url(queue)
        for scope in scopes:
            if not named:
                arns.append(scope.queue_arn(queue))
            elif view.entries_for(Place(account, scope.region), [queue]):
                arns.append(queue if queue.startswith("arn:") else scope.queue_arn(queue))
    return unique(arns)


def organisation_policies(
    settings: Settings,
    *,
    account: str | None,
    region: str | None,
    role: str = "daemon",
    home_role: str | None = None,
    keys: dict[str, KeyFindings] | None = None,
) -> list[AccountPolicy]:
    """The home account's policy, then each member account's policy and trust policy.

    The home role keeps what the one-account document grants, scoped to the home entry's
    regions (nothing of the kind when the home account is not drained), the DynamoDB
    table of the ledger, control store and cluster (in the home entry's first region,
    else `region`), and sts:AssumeRole on exactly the member roles listed. Each member role
    gets what draining its account's DLQs calls there, in its regions. `keys` maps an
    account id to the KMS keys found in its places.
    """
    _check_role(role, settings)
    if not settings.accounts:
        raise ConfigError(["no [[accounts]] configured: use policy_document"])
    home_account = _home_account(settings, account, home_role)
    keys = keys or {}
    places = [(entry.account_id, r) for entry in settings.accounts for r in entry.regions]
    members = [entry for entry in settings.accounts if entry.role_arn is not None]
    home_entry = next((entry for entry in settings.accounts if entry.role_arn is None), None)
    if members and home_account is None:
        raise ConfigError(
            [
                "the member roles' trust policies need the home account: list it in "
                "[[accounts]] (without role_arn), or pass --account or --home-role"
            ]
        )
    statements: list[dict[str, Any]] = []
    if home_entry is not None:
        scopes = _account_scopes(home_entry.account_id, home_entry.regions)
        own = [(home_entry.account_id, r) for r in home_entry.regions]
        targets = target_arns(place_target_globs(settings.guards.allow_targets, own, places))
        dlqs = _account_dlqs(settings, scopes, home_entry.account_id)
        statements += _work_statements(settings, scopes, targets, dlqs=dlqs, role=role)
        ledger_scope = scopes[0]
    else:
        partition = partition_for_region(region) if region else "aws"
        ledger_scope = _Scope(home_account, region, partition)
    statements += _ledger_statements(settings, ledger_scope)
    if members:
        statements.append(
            _statement(
                "AssumeMemberRoles",
                ["sts:AssumeRole"],
                [entry.role_arn for entry in members if entry.role_arn is not None],
            )
        )
    if home_account is not None:
        statements += _key_statements(keys.get(home_account))
    result = [
        AccountPolicy(
            home_account or "home", None, {"Version": POLICY_VERSION, "Statement": statements}
        )
    ]
    assert home_account is not None or not members
    for entry in members:
        assert entry.role_arn is not None
        scopes = _account_scopes(entry.account_id, entry.regions)
        own = [(entry.account_id, r) for r in entry.regions]
        targets = target_arns(place_target_globs(settings.guards.allow_targets, own, places))
        dlqs = _account_dlqs(settings, scopes, entry.account_id)
        # Named S3 sources are read in the home place only (retryd.places.settings_for).
        member = settings.model_copy(
            update={"discovery": settings.discovery.model_copy(update={"s3_sources": []})}
        )
        member_statements = [
            *_work_statements(member, scopes, targets, dlqs=dlqs, role=role),
            *_key_statements(keys.get(entry.account_id)),
        ]
        role_match = _ROLE_ARN.fullmatch(entry.role_arn)
        assert role_match is not None  # settings validated it
        result.append(
            AccountPolicy(
                entry.account_id,
                entry.role_arn,
                {"Version": POLICY_VERSION, "Statement": member_statements},
                trust_policy(
                    home_account=str(home_account),
                    home_role=home_role,
                    external_id=entry.external_id,
                    partition=role_match["partition"],
                ),
            )
        )
    return result


def render(document: dict[str, Any]) -> str:
    """The document as `retryd iam-policy` prints it (stable, so it can be diffed and pasted)."""
    return json.dumps(document, indent=2)


def render_organisation(policies: list[AccountPolicy], output: str) -> str:
    """Text: one labelled section per document; json: one object keyed by account id."""
    if output == "json":
        return render({policy.account_id: policy.to_json() for policy in policies})
    sections = []
    for policy in policies:
        if policy.role_arn is None:
            sections.append(
                f"# home account {policy.account_id}: policy of retryd's own role\n"
                + render(policy.policy)
            )
            continue
        sections.append(
            f"# member account {policy.account_id}: policy of {policy.role_arn}\n"
            + render(policy.policy)
        )
        sections.append(
            f"# member account {policy.account_id}: trust policy of {policy.role_arn}\n"
            + render(policy.trust_policy or {})
        )
    return "\n\n".join(sections)
