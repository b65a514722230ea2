"""ARNs, ARN globs and queue URLs: the vocabulary every layer names AWS resources in.

This module sits at the bottom of the package and imports nothing from retryd, so
places, admission, resolution and discovery can all share one definition without
reaching into each other.

ARN globs match field by field: a `*` stays inside its field, so
`arn:aws:lambda:*:123456789012:function:*` matches any region of that account,
never another account that a whole-string glob would let `*` swallow. The resource
field keeps its colons, so `function:*` also covers a qualified function
(`function:charge:prod`). Matching is case-sensitive, with fnmatch's `*`, `?` and
`[...]` in each field.

Queue URLs are read without a call to AWS: the account and name come from the
path, the region from the host when it is one of AWS's own endpoints.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

_ARN_FIELDS = 6
_WILDCARDS = frozenset("*?")
# ASCII digits only: `\d` would also take other scripts' digits, which no account id has.
_ACCOUNT_ID = re.compile(r"[0-9]{12}")
# Two letters (us, eu, cn) or, for the European Sovereign Cloud, four (eusc-de-east-1).
_REGION_NAME = re.compile(r"[a-z]{2,4}(?:-[a-z]+)+-[0-9]+")
# The legacy global endpoint, which always meant us-east-1.
_LEGACY_US_EAST_1_HOST = "queue.amazonaws.com"

ArnFields = tuple[str, str, str, str, str]

R = TypeVar("R")


def is_account_id(text: str) -> bool:
    """Whether `text` has an AWS account id's shape: twelve digits."""
    return _ACCOUNT_ID.fullmatch(text) is not None


def is_region_name(text: str) -> bool:
    """Whether `text` has an AWS region name's shape (`eu-west-1`, `us-gov-east-1`,
    `eusc-de-east-1`)."""
    return _REGION_NAME.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class Arn:
    """The six colon-separated fields of an ARN; `resource` keeps any further colons."""

    partition: str
    service: str
    region: str
    account: str
    resource: str

    @classmethod
    def parse(cls, text: str) -> Arn:
        """Split an ARN, raising ValueError when it is not one."""
        parts = text.split(":", _ARN_FIELDS - 1)
        if len(parts) != _ARN_FIELDS or parts[0] != "arn" or not parts[2] or not parts[5]:
            raise ValueError(f"not an ARN: {text!r}")
        return cls(parts[1], parts[2], parts[3], parts[4], parts[5])

    def __str__(self) -> str:
        return f"arn:{self.partition}:{self.service}:{self.region}:{self.account}:{self.resource}"


# --- ARN globs ---------------------------------------------------------------------------


def arn_fields(arn: Arn) -> ArnFields:
    """The five matchable fields of a parsed ARN (the leading `arn` is implied)."""
    return (arn.partition, arn.service, arn.region, arn.account, arn.resource)


def parse_glob(glob: str) -> ArnFields:
    """A glob's five matchable fields; ValueError when it does not have an ARN's shape."""
    parts = glob.split(":", _ARN_FIELDS - 1)
    if len(parts) != _ARN_FIELDS or parts[0] != "arn":
        raise ValueError(f"{glob!r} is not an ARN glob (arn:partition:service:region:...)")
    return (parts[1], parts[2], parts[3], parts[4], parts[5])


def literal_head(glob: str) -> str:
    """The part of a glob before its first wildcard."""
    for index, char in enumerate(glob):
        if char in _WILDCARDS:
            return glob[:index]
    return glob


def could_match_prefix(resource_glob: str, prefix: str) -> bool:
    """Whether some resource starting with `prefix` can match the glob (a cheap, safe test)."""
    head = literal_head(resource_glob)
    if head == resource_glob:
        return resource_glob.startswith(prefix)
    return prefix.startswith(head) or head.startswith(prefix)


def fields_match(fields: ArnFields, pattern: ArnFields) -> bool:
    """True when every field matches the glob in the same position."""
    return all(
        fnmatch.fnmatchcase(value, part) for value, part in zip(fields, pattern, strict=True)
    )


def glob_matches(arn: str, glob: str) -> bool:
    """Whether `arn` matches `glob` field by field; an unparsable ARN matches nothing.

    A glob without an ARN's shape is a configuration error, not a non-match: ValueError.
    """
    pattern = parse_glob(glob)
    try:
        fields = arn_fields(Arn.parse(arn))
    except ValueError:
        return False
    return fields_match(fields, pattern)


def first_matching(arn: str, rules: Sequence[R], pattern: Callable[[R], str]) -> R | None:
    """The first rule whose glob (`pattern(rule)`) matches `arn`, or None."""
    for rule in rules:
        if glob_matches(arn, pattern(rule)):
            return rule
    return None


# --- Partitions and queue URLs -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Partition:
    """One AWS partition as botocore's endpoint data describes it."""

    name: str
    regions: frozenset[str]
    region_pattern: re.Pattern[str]
    # Hosts of its own endpoints (plain and dual-stack): only these carry the region in
    # the host name; any other endpoint (moto, LocalStack, ElasticMQ) is read with the
    # client's region.
    host_suffixes: tuple[str, ...]


@functools.cache
def _partitions() -> tuple[_Partition, ...]:
    # botocore's data, not a hand-kept list: a partition AWS adds (aws-eusc, aws-iso-f)
    # arrives with botocore instead of being taken for `aws`.
    found = []
    # botocore's loader is imported here, at the first lookup: importing it costs tens of
    # milliseconds that every command paid, `retryd --version` included.
    from botocore.loaders import create_loader  # noqa: PLC0415

    for data in create_loader().load_data("partitions")["partitions"]:
        outputs = data["outputs"]
        suffixes = (outputs["dnsSuffix"], outputs.get("dualStackDnsSuffix"))
        found.append(
            _Partition(
                name=data["id"],
                regions=frozenset(data["regions"]),
                region_pattern=re.compile(data["regionRegex"]),
                host_suffixes=tuple(f".{suffix}" for suffix in suffixes if suffix),
            )
        )
    return tuple(found)


def partition_for_region(region: str) -> str:
    """The ARN partition a region belongs to."""
    # A listed region first, then a partition's pattern (as botocore resolves them).
    partitions = _partitions()
    for partition in partitions:
        if region in partition.regions:
            return partition.name
    for partition in partitions:
        if partition.region_pattern.fullmatch(region):
            return partition.name
    return "aws"


@dataclass(frozen=True, slots=True)
class QueueLocation:
    """What a queue URL says about its queue; `region` is None when the host does not name one."""

    account: str
    name: str
    region: str | None


def is_queue_url(text: str) -> bool:
    """Whether `text` is written as a URL (and so names a queue by URL, not by name)."""
    return text.startswith(("https://", "http://"))


def _region_from_host(host: str) -> str | None:
    if host == _LEGACY_US_EAST_1_HOST:
        return "us-east-1"
    if not any(host.endswith(p.host_suffixes) for p in _partitions()):
        return None
    for label in host.split("."):
        if is_region_name(label):
            return label
    return None


def parse_queue_url(url: str) -> QueueLocation:
    """Split a queue URL (`<scheme>://<host>/<account>/<name>`); ValueError if it is not one."""
    parts = urlsplit(url)
    segments = [segment for segment in parts.path.split("/") if segment]
    if parts.scheme not in ("http", "https") or not parts.hostname or len(segments) < 2:  # noqa: PLR2004 - account and name
        raise ValueError(f"not an SQS queue URL: {url!r}")
    return QueueLocation(
        account=segments[-2], name=segments[-1], region=_region_from_host(parts.hostname)
    )


def queue_name(name_or_url: str) -> str:
    """A queue's name, whether given as a name or as a URL."""
    return parse_queue_url(name_or_url).name if is_queue_url(name_or_url) else name_or_url


def queue_arn_from_url(url: str, default_region: str | None) -> str:
    """The ARN of the queue a URL names; `default_region` covers non-AWS hosts.

    ValueError when `url` is no queue URL, or names no region and none is given.
    """
    location = parse_queue_url(url)
    region = location.region or default_region
    if not region:
        raise ValueError(f"no region in {url!r} and none configured for the client")
    return f"arn:{partition_for_region(region)}:sqs:{region}:{location.account}:{location.name}"
