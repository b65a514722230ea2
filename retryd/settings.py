"""One validated, frozen Settings object: a TOML file overlaid by RETRYD_* environment variables.

AWS endpoint, region and credentials are deliberately absent: they come from the
standard AWS chain (AWS_ENDPOINT_URL, AWS_REGION, profiles, the ECS task role),
so retryd behaves like every other AWS tool on the same host.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from retryd.arns import is_region_name
from retryd.environment import CONFIG_ENV, ENV_PREFIX
from retryd.errors import ConfigError
from retryd.models import Target

# SQS caps a message's invisibility at 12 hours.
MAX_VISIBILITY_TIMEOUT_S = 43_200


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveSeconds = Annotated[float, Field(gt=0)]


class AwsSettings(_Group):
    """How retryd's own AWS API calls behave (not where they go: that is the AWS chain's job)."""

    retry_mode: Literal["standard", "adaptive", "legacy"] = Field(
        "standard",
        description=(
            "botocore's retry mode for retryd's own AWS API calls (adaptive adds client-side "
            "rate limiting). retryd's resubmissions of a message are counted apart, in the "
            "ledger."
        ),
    )
    # botocore's total attempts per API call, first try included.
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 3
    connect_timeout_s: PositiveSeconds = Field(
        5,
        description="Seconds to wait for a connection to an AWS endpoint.",
    )
    read_timeout_s: PositiveSeconds = Field(
        30,
        description=(
            "Seconds to wait for an AWS answer once a request is sent; a call past it is a "
            "transient error."
        ),
    )
    max_pool_connections: Annotated[int, Field(ge=1, le=1000)] = Field(
        50,
        description="Most HTTP connections each AWS client (one per service) keeps open.",
    )


def _check_account_id(value: str) -> str:
    if not re.fullmatch(r"[0-9]{12}", value):
        raise ValueError(f"{value!r} is not an AWS account id (12 digits)")
    return value


def _check_region(value: str) -> str:
    # Region names as AWS spells them: us-east-1, us-gov-west-1, cn-north-1, eusc-de-east-1.
    if not is_region_name(value):
        raise ValueError(f"{value!r} is not an AWS region name (like eu-west-1)")
    return value


AccountId = Annotated[str, AfterValidator(_check_account_id)]
RegionName = Annotated[str, AfterValidator(_check_region)]
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(?P<account>[0-9]{12}):role/[\w+=,.@/-]{1,512}$")


class AccountSettings(_Group):
    """One account retryd drains, in the regions listed, through a role it assumes there."""

    account_id: AccountId = Field(
        description="The account's 12-digit id.",
    )
    regions: Annotated[list[RegionName], Field(min_length=1)] = Field(
        description="Regions of this account whose DLQs retryd discovers and drains.",
    )
    role_arn: str | None = Field(
        None,
        description=(
            "IAM role in this account that retryd assumes (sts:AssumeRole) to work there; "
            "left out for the home account, whose credentials retryd already has."
        ),
    )
    external_id: Annotated[str, Field(min_length=2, max_length=1224)] | None = Field(
        None,
        description="ExternalId passed to sts:AssumeRole, when the member role's trust policy "
        "requires one.",
    )

    @field_validator("regions")
    @classmethod
    def _distinct_regions(cls, regions: list[str]) -> list[str]:
        repeated = sorted({r for r in regions if regions.count(r) > 1})
        if repeated:
            raise ValueError(f"region listed twice: {', '.join(repeated)}")
        return regions

    @model_validator(mode="after")
    def _role_in_account(self) -> AccountSettings:
        if self.role_arn is None:
            if self.external_id is not None:
                raise ValueError("external_id needs a role_arn to assume")
            return self
        match = _ROLE_ARN.match(self.role_arn)
        if match is None:
            raise ValueError(
                f"role_arn {self.role_arn!r} is not an IAM role ARN "
                "(arn:aws:iam::<account>:role/<name>)"
            )
        if match["account"] != self.account_id:
            raise ValueError(f"role_arn is in account {match['account']}, not in {self.account_id}")
        return self


# S3 bucket names are 3-63 characters (Amazon S3 User Guide, "Bucket naming rules").
BUCKET_NAME_MIN = 3
BUCKET_NAME_MAX = 63


class DiscoverySettings(_Group):
    """Which queues are DLQs retryd is responsible for."""

    queue_prefixes: list[str] = Field(
        [],
        description=(
            "ListQueues name prefixes: every queue whose name starts with one is a DLQ retryd"
            " drains (the parking queue never is)."
        ),
    )
    queue_tags: dict[str, str] = Field(
        {},
        description=(
            "Only queues carrying all of these tags (key = value) are drained; empty: no tag "
            "filter."
        ),
    )
    queues: list[str] = Field(
        [],
        description="DLQs named explicitly (name or URL), drained besides those the prefixes find.",
    )
    # Cycles between rebuilds of the "what feeds this DLQ" map (Lambda functions
    # and SQS redrive sources): it costs paginated list calls, not per-message ones.
    feeds_refresh_cycles: Annotated[int, Field(ge=1, le=10_000)] = 10
    s3_sources: list[str] = Field(
        [],
        description=(
            "S3 failure destinations drained as DLQs, each `bucket/prefix` (Lambda writes"
            " under `aws/lambda/async/<function>/`); every object is one invocation record."
        ),
    )
    s3_from_destinations: bool = Field(
        False,
        description=(
            "Also drain every S3 bucket a Lambda function's on-failure destination names"
            " (EventInvokeConfig), under `aws/lambda/async/<function>/`; needs Lambda among"
            " the allowed targets (the feed map reads the configs then)."
        ),
    )
    s3_settle: Literal["delete", "tag"] = Field(
        "delete",
        description=(
            "What becomes of an S3 object once its copy is safe: deleted, or tagged"
            " `retryd-settled` (kept; the listing marker passes it)."
        ),
    )
    s3_marker_lag_s: Annotated[int, Field(ge=0, le=86_400)] = Field(
        300,
        description=(
            "The listing marker of an S3 source never passes an object younger than this,"
            " so a record whose key sorts before one already listed is still found."
        ),
    )
    s3_full_list_every_s: Annotated[int, Field(ge=60, le=604_800)] = Field(
        3_600,
        description=(
            "How often an S3 source is listed from its start rather than from its marker"
            " (catches keys written out of order by anything but Lambda)."
        ),
    )

    @model_validator(mode="after")
    def _something_to_find(self) -> DiscoverySettings:
        if not self.queue_prefixes and not self.queues and not self.s3_sources:
            raise ValueError(
                "set queue_prefixes, queues or s3_sources: otherwise no DLQ is ever found"
            )
        return self

    @field_validator("s3_sources")
    @classmethod
    def _bucket_and_prefix(cls, sources: list[str]) -> list[str]:
        for source in sources:
            bucket = source.removeprefix("s3://").partition("/")[0]
            if not BUCKET_NAME_MIN <= len(bucket) <= BUCKET_NAME_MAX:
                raise ValueError(f"{source!r} is not bucket/prefix (a bucket name has 3-63 chars)")
        return [source.removeprefix("s3://") for source in sources]

    @field_validator("queue_prefixes")
    @classmethod
    def _no_empty_prefix(cls, prefixes: list[str]) -> list[str]:
        if any(not prefix for prefix in prefixes):
            raise ValueError("an empty prefix would match every queue in the account")
        return prefixes


class ScheduleSettings(_Group):
    """When cycles run."""

    interval_s: PositiveSeconds = Field(
        60,
        description=(
            "Seconds from the end of one cycle to the start of the next (`retryd run`), "
            "after a cycle that resubmitted and parked nothing."
        ),
    )
    # A DLQ fed steadily refills while retryd rests: after a full interval's wait its
    # messages had waited a minute each (p99 75 s at 1,000 msg/s in bench's steady world).
    busy_interval_s: Annotated[float, Field(ge=0)] = Field(
        0,
        description=(
            "Seconds before the next cycle after one that resubmitted or parked messages: a "
            "DLQ that is still filling is drained as it fills. Deferred messages are hidden "
            "until they are due, so they do not count. Set it to `interval_s` to rest a full "
            "interval after every cycle."
        ),
    )


class DrainSettings(_Group):
    """How each DLQ is read within one cycle."""

    # 16 DLQs x 2 receivers keep 32 batches in flight, under aws.max_pool_connections (50).
    queue_concurrency: Annotated[int, Field(ge=1, le=256)] = Field(
        16,
        description="DLQs drained at the same time within one cycle.",
    )
    workers_per_queue: Annotated[int, Field(ge=1, le=32)] = Field(
        2,
        description="Receivers per DLQ, each taking batches of up to 10 messages.",
    )
    visibility_timeout_s: Annotated[int, Field(ge=5, le=MAX_VISIBILITY_TIMEOUT_S)] = Field(
        120,
        description=(
            "The lease on a received batch (SQS VisibilityTimeout): a batch is settled within"
            " it, or its messages reappear and are handled again."
        ),
    )
    receive_wait_s: Annotated[int, Field(ge=0, le=20)] = Field(
        1,
        description="Long-poll seconds of each ReceiveMessage (0 to 20).",
    )
    max_messages_per_queue: Annotated[int, Field(ge=1)] = Field(
        10_000,
        description=(
            "Most messages taken from one DLQ in a cycle (a deferred message received again"
            " when due counts again); the rest wait for the next one."
        ),
    )
    cycle_budget_s: PositiveSeconds = Field(
        300,
        description="Seconds after which a cycle takes no new batches (those in flight settle).",
    )
    # Calls in flight to targets that have no batch API (Lambda, Step Functions).
    target_concurrency: Annotated[int, Field(ge=1, le=512)] = 16
    max_lease_s: Annotated[int, Field(ge=5, le=MAX_VISIBILITY_TIMEOUT_S)] = Field(
        900,
        description=(
            "The longest retryd keeps a received batch leased while work on it is in flight"
            " (a target call, a rate-limit wait, a ledger write, a parking write, a delete):"
            " a heartbeat extends the lease of the messages not yet decided before it runs"
            " out, up to this many seconds after they were received. Only then is the work"
            " cut off and its messages left in their DLQ, to be retried under the same key"
            " and attempt. Never less than visibility_timeout_s; at most 43,200 (SQS's 12"
            " hours)."
        ),
    )
    processes: Annotated[int, Field(ge=1, le=64)] = Field(
        1,
        description=(
            "Worker processes that share the DLQs (each drains those whose ARN hashes to it,"
            " so no two drain the same DLQ), to use more than one core. The parent serves"
            " /metrics for all of them and passes signals on; a worker that dies stops the"
            " others and retryd exits 1. Each takes an equal part of every target's rate"
            " limit (on the DynamoDB ledger each counts as a replica), whether or not its"
            " DLQs feed the target, so a target fed from one worker's DLQs gets only that"
            " part (`retryd config check` shows it). Needs the sqlite or dynamodb ledger."
        ),
    )

    @model_validator(mode="after")
    def _cap_holds_a_lease(self) -> DrainSettings:
        # Only a cap set on purpose can be wrong; the default gives way to a longer lease.
        if "max_lease_s" in self.model_fields_set and self.max_lease_s < self.visibility_timeout_s:
            raise ValueError(
                f"max_lease_s ({self.max_lease_s}) is below visibility_timeout_s "
                f"({self.visibility_timeout_s}): a batch always keeps its first lease"
            )
        return self

    @property
    def lease_cap_s(self) -> int:
        """Seconds after a batch's receipt past which its lease is not extended again."""
        return max(self.max_lease_s, self.visibility_timeout_s)


def _check_arn_glob(glob: str) -> str:
    if not glob.startswith("arn:") or glob.count(":") < 5:  # noqa: PLR2004 - six ARN fields
        raise ValueError(f"{glob!r} is not an ARN glob (arn:partition:service:region:...)")
    return glob


ArnGlob = Annotated[str, AfterValidator(_check_arn_glob)]


class GuardSettings(_Group):
    """What may be resubmitted, where to, and how often."""

    max_attempts: Annotated[
        int,
        Field(
            ge=1,
            le=1000,
            description=(
                "How many times retryd itself resubmits one message before parking it "
                "`attempts-exhausted`. What the source tried before the message reached its "
                "DLQ (EventBridge's RETRY_ATTEMPTS, 185 under its default policy; a Lambda "
                "destination record's approximateInvokeCount) is shown but never counted."
            ),
        ),
    ] = 5
    # A message whose first failure is older than this is parked `too-old`.
    # Default: 14 days, SQS's longest retention.
    max_age_s: PositiveSeconds = 1_209_600
    allow_targets: list[ArnGlob] = Field(
        [],
        description=(
            "ARN globs (partition, service, region, account, resource) of the targets retryd "
            "may call; any other target is parked `target-not-allowed`. Required unless "
            "allow_any_target."
        ),
    )
    allow_any_target: bool = Field(
        False,
        description=(
            "Accept any target a message names. Anyone who can write to a DLQ could then make"
            " retryd call any resource: prefer allow_targets."
        ),
    )

    @model_validator(mode="after")
    def _allowlist_is_explicit(self) -> GuardSettings:
        if not self.allow_targets and not self.allow_any_target:
            raise ValueError(
                "allow_targets is empty: list the target ARN globs retryd may call, or set "
                "allow_any_target = true to accept that anyone who can write to a DLQ can "
                "make retryd invoke any resource"
            )
        return self


class StepFunctionsSettings(_Group):
    """How a failed Step Functions execution named by a message is brought back."""

    not_redrivable: Literal["park", "start-execution"] = Field(
        "park",
        description=(
            "What to do with a failed execution Step Functions will not redrive (an Express "
            "workflow, stopped more than 14 days ago, or gone): `park` it `not-redrivable` "
            "with the reason, or `start-execution`: start a new execution with its original "
            "input, which runs every step again. Redrivable executions are always redriven."
        ),
    )


class BackoffRule(_Group):
    """Backoff for targets matching one ARN glob (first matching rule wins)."""

    pattern: ArnGlob = Field(
        description="Target ARN glob this rule applies to.",
    )
    base_s: PositiveSeconds = Field(
        description=(
            "Seconds before the first resubmission to a matching target; the ceiling doubles "
            "per attempt."
        ),
    )
    max_s: Annotated[float, Field(gt=0, le=MAX_VISIBILITY_TIMEOUT_S)] = Field(
        description="Longest wait between attempts (at most 12 h, SQS's cap on hiding a message).",
    )


class BackoffSettings(_Group):
    """How long a message waits before its next attempt: exponential with full jitter."""

    base_s: PositiveSeconds = Field(
        30,
        description=(
            "Seconds before a message's first resubmission; the ceiling doubles with each "
            "attempt, and the wait is drawn below it (full jitter)."
        ),
    )
    # SQS hides a message for at most 12 h, so a longer wait could not be honoured in one step.
    max_s: Annotated[float, Field(gt=0, le=MAX_VISIBILITY_TIMEOUT_S)] = 3_600
    targets: list[BackoffRule] = Field(
        [],
        description=(
            "Per-target rules `{ pattern, base_s, max_s }`; the first rule whose ARN glob "
            "matches wins."
        ),
    )


class BreakerSettings(_Group):
    """The circuit breaker kept per target: transient failures open it, canaries close it."""

    # Count-based sliding window of the last calls to one target.
    window_calls: Annotated[int, Field(ge=1, le=10_000)] = 20
    # No verdict on a target before this many calls are in the window.
    min_calls: Annotated[int, Field(ge=1, le=10_000)] = 5
    # Share of failed calls in the window that opens the breaker.
    failure_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    cooldown_s: PositiveSeconds = Field(
        60,
        description=(
            "Seconds an open breaker waits before it lets canary messages through (half-open)."
        ),
    )
    # Canary messages let through while half-open; all must succeed to close.
    half_open_calls: Annotated[int, Field(ge=1, le=1000)] = 3

    @model_validator(mode="after")
    def _window_holds_min_calls(self) -> BreakerSettings:
        if self.min_calls > self.window_calls:
            raise ValueError("min_calls cannot exceed window_calls")
        return self


class RateRule(_Group):
    """Rate limit for targets matching one ARN glob (first matching rule wins)."""

    pattern: ArnGlob = Field(
        description="Target ARN glob this rule applies to.",
    )
    per_s: PositiveSeconds = Field(
        description="Messages per second to each matching target.",
    )
    burst: Annotated[int, Field(ge=1, le=100_000)] = Field(
        description="Messages sent at once to a matching target after a quiet spell.",
    )


class RateLimitSettings(_Group):
    """Token bucket per target, so a recovered target is not flooded.

    Each target type has a default of its own (admission/ratelimit.py,
    TYPE_DEFAULTS: slow for Lambda and Step Functions, at the API's scale for SQS,
    SNS and EventBridge); `per_s` or `burst` set here replaces them with one rate
    for every type, as before; a `targets` rule beats both for the targets it matches.
    """

    per_s: Annotated[
        float | None,
        Field(
            gt=0,
            description=(
                "Messages per second per target, for every target type. Unset: each type "
                "has its own default (`retryd config check` shows them). Set with no `burst`, "
                "burst is 10."
            ),
        ),
    ] = None
    burst: Annotated[
        int | None,
        Field(
            ge=1,
            le=100_000,
            description=(
                "Messages sent at once to a target after a quiet spell, for every target "
                "type. Unset: each type has its own default. Set with no `per_s`, the rate "
                "is 5 per second."
            ),
        ),
    ] = None
    targets: list[RateRule] = Field(
        [],
        description=(
            "Per-target rules `{ pattern, per_s, burst }`; the first rule whose ARN glob "
            "matches wins over every default."
        ),
    )
    start_share: Annotated[float, Field(gt=0, le=1)] = Field(
        0.25,
        description=(
            "Replicas on the dynamodb ledger: the most of each rate a replica takes before "
            "it has agreed on the membership (its first seconds), or 1/N of the N replicas "
            "in the membership it last read when that is less. Replicas that start "
            "together keep to the rate while they are at most 1/start_share."
        ),
    )


class LedgerSettings(_Group):
    """Where attempts and in-flight resubmissions are recorded, per idempotency key."""

    backend: Literal["memory", "sqlite", "dynamodb"] = Field(
        "sqlite",
        description=(
            "Where the attempt ledger lives: memory (tests; forgotten on restart), sqlite "
            "(one replica), dynamodb (several replicas)."
        ),
    )
    # SQLite file (one replica). A relative path is taken from the settings file's
    # directory (the working directory when there is none), so that every command run
    # with the same file uses the same ledger wherever it is started from.
    path: Annotated[str, Field(min_length=1)] = "retryd.sqlite3"
    # DynamoDB table (several replicas).
    table: Annotated[str, Field(min_length=3, max_length=255)] = "retryd-ledger"
    # Records unused for this long expire (DynamoDB TTL; SQLite prunes them).
    # Default: 30 days, past SQS's longest retention of 14.
    ttl_s: Annotated[int, Field(ge=3_600)] = 2_592_000
    claim_renew_s: PositiveSeconds = Field(
        60,
        description=(
            "How long a claim on a key (a resubmission or a park on its way) holds the key"
            " against other replicas after it was taken or last renewed. Its holder renews"
            " it while it works on the message, so a live holder keeps it however slow the"
            " target; one that died is taken over once this lapses. Formerly `claim_s`,"
            " which is still read as this."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _claim_s_is_claim_renew_s(cls, data: Any) -> Any:
        # Files and environments written before claims were renewed say `claim_s`: the
        # same thing (how long a claim outlives its last word), so it is read as it.
        if not isinstance(data, Mapping) or "claim_s" not in data:
            return data
        fields = dict(data)
        claim_s = fields.pop("claim_s")
        if "claim_renew_s" in fields and fields["claim_renew_s"] != claim_s:
            raise ValueError("claim_s is the former name of claim_renew_s: set only claim_renew_s")
        fields["claim_renew_s"] = claim_s
        return fields


class ParkingSettings(_Group):
    """Where messages go that must not be retried, with the reason."""

    queue: Annotated[str, Field(min_length=1)] = Field(
        "retryd-parking",
        description=(
            "The SQS queue messages are parked in, with retryd.reason and retryd.detail; it "
            "must exist, and it is never drained."
        ),
    )
    # The longest `retryd.detail` kept on a parked message.
    detail_max_bytes: Annotated[int, Field(ge=64, le=4096)] = 1024


class Route(_Group):
    """A static route: DLQ name (or glob) -> the target its messages go back to."""

    queue: Annotated[str, Field(min_length=1)] = Field(
        description="DLQ name or glob (fnmatch) whose messages go back to `target`.",
    )
    target: str = Field(
        description=(
            "ARN the matching DLQs' messages are resubmitted to: a Lambda function, Step "
            "Functions state machine, SQS queue, SNS topic or EventBridge bus."
        ),
    )

    @field_validator("target")
    @classmethod
    def _target_is_supported(cls, arn: str) -> str:
        Target.from_arn(arn)
        return arn


class HookRule(_Group):
    """Hooks on the way back for one DLQ glob or one target glob: transform, then validate."""

    queue: Annotated[str, Field(min_length=1)] | None = Field(
        None,
        description="DLQ name or glob (`fnmatch`, as in `[[routes]]`): the hooks run on every "
        "message resolved from a matching queue. Set this or `target`, not both.",
    )
    target: ArnGlob | None = Field(
        None,
        description="Target ARN glob (matched field by field, as in `guards.allow_targets`): the "
        "hooks run on every message resolved to a matching target. Set this or `queue`.",
    )
    transform: Annotated[str, Field(min_length=1)] | None = Field(
        None,
        description="A callable that rewrites the payload (or asks to park it): a name from the "
        "`retryd.transforms` entry-point group, or a dotted path `package.module:function`. "
        "Raising or overrunning `transform_timeout_s` parks the message `transform-failed`.",
    )
    transform_timeout_s: PositiveSeconds = Field(
        5,
        description="Longest a transform may run on one message (in a worker thread); past it the "
        "message is parked `transform-failed` and the cycle goes on.",
    )
    schema_path: Annotated[str, Field(min_length=1)] | None = Field(
        None,
        description="JSON Schema file (JSON) the payload must satisfy, after any transform, "
        "before it is resubmitted; a payload that fails it is parked `invalid-payload` with the "
        "schema error. Relative paths are taken from the working directory.",
    )

    @model_validator(mode="after")
    def _one_scope_and_a_hook(self) -> HookRule:
        if (self.queue is None) == (self.target is None):
            raise ValueError("set exactly one of queue (a DLQ glob) or target (an ARN glob)")
        if self.transform is None and self.schema_path is None:
            raise ValueError(
                "set transform, schema_path or both: a rule without hooks does nothing"
            )
        return self


class HttpSettings(_Group):
    """The /metrics, /healthz and /readyz listener."""

    host: str = Field(
        "0.0.0.0",  # noqa: S104 - a container's metrics port must be reachable by Prometheus
        description="Address the /metrics, /healthz and /readyz listener binds to.",
    )
    port: Annotated[int, Field(ge=0, le=65535)] = Field(
        9464,
        description="Port of the /metrics, /healthz and /readyz listener (0: any free port).",
    )
    enabled: bool = Field(
        True,
        description="Serve /metrics, /healthz and /readyz while `retryd run` runs.",
    )


class ShutdownSettings(_Group):
    """How SIGTERM is honoured: stop receiving, let in-flight work settle, then cancel."""

    # Well under ECS's default 30 s stopTimeout, so settling ends before SIGKILL.
    drain_timeout_s: PositiveSeconds = 20


class LogSettings(_Group):
    """Structured logging."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        "info",
        description="Lowest level of log line written.",
    )
    format: Literal["auto", "json", "console"] = Field(
        "auto",
        description=(
            "json lines, a readable console, or auto: the console on an interactive terminal,"
            " json otherwise."
        ),
    )
    # Payloads can hold personal data; they are logged only when asked for.
    include_payloads: bool = False


class ConsoleSettings(_Group):
    """`retryd console`: the team's web console, and who may use it (see docs/console.md)."""

    listen: Annotated[str, Field(pattern=r"^\[?[^\s\]]*\]?:\d{1,5}$")] = Field(
        "127.0.0.1:8088",
        description="HOST:PORT the console listens on (`--listen` overrides it).",
    )
    auth: Literal["alb-oidc", "token", "none"] = Field(
        "alb-oidc",
        description="Who may use the console. alb-oidc: the person the ALB signed in "
        "(`x-amzn-oidc-data`, verified; identity from identity_claim, role from roles_claim). "
        "token: a bearer token (viewer or operator). none: only on a loopback address, as "
        "the operator `local`; elsewhere the console refuses to start.",
    )
    alb_arn: str | None = Field(
        None,
        description="alb-oidc: the ARN of the load balancer that signs the tokens; a token "
        "whose `signer` differs is refused. Its region picks the key endpoint.",
    )
    alb_key_url: str = Field(
        "https://public-keys.auth.elb.{region}.amazonaws.com/{kid}",
        description="alb-oidc: where the ALB's public key for a `kid` is fetched (and "
        "cached), a template with {region} and {kid}.",
    )
    identity_claim: str = Field(
        "email", description="alb-oidc: the claim that names the person (shown and audited)."
    )
    roles_claim: str = Field(
        "groups",
        description="alb-oidc: the claim listing the person's groups (a list, or a "
        "comma-separated string).",
    )
    viewer_groups: list[str] = Field(
        [],
        description="alb-oidc: groups that may read; empty: everyone the ALB signed in.",
    )
    operator_groups: list[str] = Field(
        [],
        description="alb-oidc: groups that may act (pause, resume, cancel); empty: nobody.",
    )
    viewer_token: SecretStr | None = Field(
        None,
        description="token: the viewers' bearer token (RETRYD_CONSOLE__VIEWER_TOKEN).",
    )
    operator_token: SecretStr | None = Field(
        None,
        description="token: the operators' bearer token (RETRYD_CONSOLE__OPERATOR_TOKEN).",
    )
    viewer_token_file: str | None = Field(
        None, description="token: a file holding the viewers' token (instead of viewer_token)."
    )
    operator_token_file: str | None = Field(
        None,
        description="token: a file holding the operators' token (instead of operator_token).",
    )
    page_size: Annotated[int, Field(ge=1, le=500)] = Field(
        50, description="Rows per page of the parking search, the audit and the jobs."
    )
    parked_index_ttl_s: Annotated[int, Field(ge=3_600, le=1_209_600)] = Field(
        1_209_600,
        description="How long the index of parked copies keeps an entry (the parking "
        "queue's retention; SQS keeps a message 14 days at most).",
    )


class Settings(BaseSettings):
    """Everything retryd is told, validated once at start-up and passed in."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    aws: AwsSettings = AwsSettings()
    discovery: DiscoverySettings
    schedule: ScheduleSettings = ScheduleSettings()
    drain: DrainSettings = DrainSettings()
    guards: GuardSettings
    backoff: BackoffSettings = BackoffSettings()
    breaker: BreakerSettings = BreakerSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    ledger: LedgerSettings = LedgerSettings()
    parking: ParkingSettings = ParkingSettings()
    stepfunctions: StepFunctionsSettings = StepFunctionsSettings()
    routes: list[Route] = []
    hooks: list[HookRule] = Field(
        [],
        description="Hooks on the way back (off unless listed): the first rule whose queue or "
        "target glob matches a resolved message decides which hooks run on it.",
    )
    accounts: list[AccountSettings] = Field(
        [],
        description="Accounts and regions retryd works in (the organisation set-up); empty "
        "means the home account, in the region of the AWS chain. List the home account "
        "without a role_arn to drain it too.",
    )
    http: HttpSettings = HttpSettings()
    shutdown: ShutdownSettings = ShutdownSettings()
    log: LogSettings = LogSettings()
    console: ConsoleSettings = ConsoleSettings()

    @model_validator(mode="after")
    def _processes_share_a_ledger(self) -> Settings:
        if self.drain.processes > 1 and self.ledger.backend == "memory":
            raise ValueError(
                f"drain.processes = {self.drain.processes} needs a ledger the processes can "
                'share: set ledger.backend = "sqlite" or "dynamodb" (the memory ledger is one '
                "process's own)"
            )
        return self

    @field_validator("accounts")
    @classmethod
    def _one_entry_per_account(cls, accounts: list[AccountSettings]) -> list[AccountSettings]:
        ids = [account.account_id for account in accounts]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"account listed twice: {', '.join(repeated)}")
        homes = [a.account_id for a in accounts if a.role_arn is None]
        if len(homes) > 1:
            raise ValueError(
                f"accounts {', '.join(homes)} have no role_arn; only the home account "
                "(whose credentials retryd runs with) may leave it out"
            )
        return accounts

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first so that RETRYD_GROUP__FIELD overrides the file (passed as init).
        return (env_settings, init_settings)


_GROUPS = frozenset(name.upper() for name in Settings.model_fields)


def _check_env_names(environ: Mapping[str, str]) -> list[str]:
    """pydantic-settings ignores RETRYD_* names that match no group; a typo there must not."""
    problems = []
    for name in environ:
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        group = name.removeprefix(ENV_PREFIX).split("__", 1)[0]
        if group.upper() not in _GROUPS:
            problems.append(f"{name}: no settings group {group.lower()!r}")
    return problems


def _is_structured(annotation: Any) -> bool:
    """Whether pydantic-settings reads this field's env value as JSON (lists, dicts, groups)."""
    origin = typing.get_origin(annotation) or annotation
    if origin is Annotated:
        return _is_structured(typing.get_args(annotation)[0])
    return origin in (list, dict, set, tuple) or (
        isinstance(origin, type) and issubclass(origin, BaseModel)
    )


def _env_field(name: str) -> Any:
    """The annotation RETRYD_<GROUP>[__<FIELD>] sets, or None when it names no field."""
    parts = name.removeprefix(ENV_PREFIX).lower().split("__")
    fields: Mapping[str, Any] = Settings.model_fields
    annotation: Any = None
    for part in parts:
        field = fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        is_group = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        fields = annotation.model_fields if is_group else {}
    return annotation


def _unparsable_env(environ: Mapping[str, str]) -> list[str]:
    """RETRYD_* values that must be JSON (lists, tables) and are not, each named."""
    problems = []
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        annotation = _env_field(name)
        if annotation is None or not _is_structured(annotation):
            continue
        try:
            json.loads(value)
        except ValueError:
            problems.append(
                f"{name}: not valid JSON (lists and tables are given as JSON, "
                """e.g. '["arn:aws:lambda:*"]')"""
            )
    return problems


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory, not a TOML file"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: permission denied"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None


MISSING = "required setting is missing"
# Said when a required setting is missing and no file was read: the usual cause.
NO_FILE_HINT = (
    f"no settings file was read: give one with --config PATH or ${CONFIG_ENV} "
    "(or set the missing fields as RETRYD_<GROUP>__<FIELD>)"
)


def format_validation_error(exc: ValidationError) -> list[str]:
    """One line per problem, each naming the field as a dotted path."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting"
        elif error["type"] == "missing":
            message = MISSING
        lines.append(f"{where}: {message}")
    return lines


def load_settings(path: Path | None = None) -> Settings:
    """Load and validate settings; ConfigError (exit 2) lists every problem at once."""
    env = os.environ
    if path is None and env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
    data = _read_toml(path) if path is not None else {}
    problems = _check_env_names(env)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        problems.extend(format_validation_error(exc))
        if path is None and any(p.endswith(MISSING) for p in problems):
            problems.append(NO_FILE_HINT)
        raise ConfigError(problems) from None
    except SettingsError as exc:
        # pydantic-settings names the group, not the variable, and only the first one.
        problems.extend(_unparsable_env(env) or [str(exc)])
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return _ledger_path_anchored(settings, path)


def _ledger_path_anchored(settings: Settings, path: Path | None) -> Settings:
    """The settings with a relative SQLite path made absolute against the settings file.

    Taken from the working directory, `retryd pause` run from another directory
    wrote another file, and the daemon never saw the pause.
    """
    ledger_path = Path(settings.ledger.path)
    if ledger_path.is_absolute():
        return settings
    base = path.parent if path is not None else Path.cwd()
    anchored = os.path.abspath(base / ledger_path)
    ledger = settings.ledger.model_copy(update={"path": anchored})
    return settings.model_copy(update={"ledger": ledger})
