"""Target services' ARN shapes, and an allowlist glob as the ARN patterns it can match.

Shared by the policy and the KMS key look-up.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from retryd.admission.allowlist import LAMBDA_RESOURCE_PREFIX, LAMBDA_SERVICE
from retryd.arns import could_match_prefix, parse_glob
from retryd.errors import ConfigError


def unique(items: Iterable[str]) -> list[str]:
    """The items in their first order, each once."""
    return list(dict.fromkeys(items))


@dataclass(frozen=True, slots=True)
class _TargetService:
    """How one target service's ARNs look: the resource part always starts with `prefix`."""

    service: str
    prefix: str
    # What a bare `*` resource narrows to; `prefix*` when empty.
    every: str = ""


# The services retryd resubmits to (models.Target), in the order statements are written.
_LAMBDA = _TargetService(LAMBDA_SERVICE, LAMBDA_RESOURCE_PREFIX)
_STATES = _TargetService("states", "stateMachine:")
_SQS = _TargetService("sqs", "")
_SNS = _TargetService("sns", "")
_EVENTS = _TargetService("events", "event-bus/")
TARGET_SERVICES = (_LAMBDA, _STATES, _SQS, _SNS, _EVENTS)
# The streams a failed batch is read back from (retryd.targets.stream_replay): the allowlist
# must admit the stream as it admits a target.
_KINESIS = _TargetService("kinesis", "stream/")
_DYNAMODB_STREAMS = _TargetService("dynamodb", "table/", every="table/*/stream/*")
STREAM_SERVICES = (_KINESIS, _DYNAMODB_STREAMS)


def target_arns(allow_targets: Iterable[str]) -> dict[str, list[str]]:
    """Each allowlist glob as the ARN patterns of the target services, and of the streams
    (`kinesis`, `dynamodb`), it can match."""
    return _arns(allow_targets, (*TARGET_SERVICES, *STREAM_SERVICES))


def _arns(allow_targets: Iterable[str], specs: Iterable[_TargetService]) -> dict[str, list[str]]:
    by_service: dict[str, list[str]] = {spec.service: [] for spec in specs}
    for glob in allow_targets:
        if "[" in glob:
            raise ConfigError(
                [f"guards.allow_targets: {glob!r} uses a [...] class, which IAM cannot express"]
            )
        partition, service_glob, region, account, resource = parse_glob(glob)
        for spec in specs:
            if not fnmatch.fnmatchcase(spec.service, service_glob):
                continue
            if not could_match_prefix(resource, spec.prefix):
                continue
            # "*" alone would also cover layers, aliases' policies and so on: narrow it to the
            # one resource type the target can be.
            narrowed = (spec.every or f"{spec.prefix}*") if set(resource) == {"*"} else resource
            by_service[spec.service].append(
                f"arn:{partition}:{spec.service}:{region}:{account}:{narrowed}"
            )
    return {service: unique(arns) for service, arns in by_service.items()}
