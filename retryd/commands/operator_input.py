"""The one error the operator commands raise for bad input, and the checks that raise it."""

from __future__ import annotations

import re

from retryd.errors import ExitCode, RetrydError

# The fields of an ARN glob an operator types: arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE.
_ARN_FIELDS = 6
_WILDCARD = re.compile(r"[*?\[]")
# Each field's characters; a wildcard may stand for part of any field.
_PARTITION = re.compile(r"[a-z][a-z0-9-]*|[a-z0-9*?\[\]-]+")
_SERVICE = re.compile(r"[a-z0-9*?\[\]-]+")
_REGION = re.compile(r"[a-z0-9*?\[\]-]*")
_ACCOUNT_DIGITS = 12


class OperatorInputError(RetrydError):
    """A command line that cannot be acted on (a bad selector, glob, time or job id)."""

    # The exit code of every input error (as for an invalid configuration).
    exit_code = ExitCode.CONFIG


def check_arn_glob(text: str, option: str, *, wildcards: bool = True) -> str:
    """`text` when it is an ARN (glob) an operator could mean; OperatorInputError saying why not.

    A glob that cannot match any real ARN (a short account, a space) would be stored
    and then hold nothing, silently: so its shape is checked field by field here.
    `*` alone (every target) is accepted where wildcards are.
    """
    if wildcards and text == "*":
        return text
    why = _arn_problem(text, wildcards=wildcards)
    if why is not None:
        what = "an ARN glob" if wildcards else "an ARN"
        raise OperatorInputError(f"{option} {text!r} is not {what}: {why}")
    return text


def _arn_problem(text: str, *, wildcards: bool) -> str | None:
    if any(char.isspace() for char in text):
        return "it contains a space"
    if not wildcards and _WILDCARD.search(text):
        return "wildcards are not allowed here"
    parts = text.split(":", _ARN_FIELDS - 1)
    if len(parts) != _ARN_FIELDS or parts[0] != "arn":
        return "give arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE"
    _, partition, service, region, account, resource = parts
    checks = (
        (_PARTITION.fullmatch(partition), f"partition {partition!r}"),
        (_SERVICE.fullmatch(service), f"service {service!r}"),
        (_REGION.fullmatch(region), f"region {region!r}"),
        (_account_ok(account), f"account {account!r} (an account id has 12 digits)"),
        (resource, "the resource is empty"),
    )
    for ok, problem in checks:
        if not ok:
            return problem if problem.startswith("the ") else f"bad {problem}"
    return None


def _account_ok(account: str) -> bool:
    if _WILDCARD.search(account):
        return re.fullmatch(r"[0-9*?\[\]-]+", account) is not None
    return len(account) == _ACCOUNT_DIGITS and account.isdigit()
