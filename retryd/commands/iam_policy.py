"""`retryd iam-policy`: print the least-privilege policy for this configuration (retryd.iam)."""

from __future__ import annotations

import sys

import anyio

from retryd.errors import ConfigError, ExitCode
from retryd.iam.kms_keys import look_up_keys, look_up_keys_by_account
from retryd.iam.policy import organisation_policies, policy_document, render, render_organisation
from retryd.settings import Settings


def run_iam_policy(
    settings: Settings,
    *,
    account: str | None,
    region: str | None,
    partition: str = "aws",
    role: str = "daemon",
    kms: bool = False,
    output: str = "text",
    home_role: str | None = None,
) -> int:
    """Print the policy document as JSON; exit status 0 (errors raise ConfigError: exit 2).

    With `kms`, the KMS keys of encrypted DLQs, parking queue and targets are looked up
    in AWS first; an alias that cannot be resolved is named on stderr. With [[accounts]],
    one document per account (and a trust policy per member), labelled or as one JSON object.
    """
    if not settings.accounts:
        if home_role is not None:
            raise ConfigError(
                ["--home-role: only used with [[accounts]] (the member roles' trust)"]
            )
        keys = anyio.run(look_up_keys, settings) if kms else None
        document = policy_document(
            settings, account=account, region=region, partition=partition, role=role, keys=keys
        )
        print(render(document))
        problems = keys.unresolved if keys is not None else []
    else:
        # Checked before any lookup, so that a mistake costs no AWS call.
        organisation_policies(
            settings, account=account, region=region, role=role, home_role=home_role
        )
        by_account = anyio.run(look_up_keys_by_account, settings) if kms else {}
        policies = organisation_policies(
            settings,
            account=account,
            region=region,
            role=role,
            home_role=home_role,
            keys=by_account,
        )
        print(render_organisation(policies, output))
        problems = [p for found in by_account.values() for p in found.unresolved]
    for problem in problems:
        print(f"retryd: warning: {problem}", file=sys.stderr)
    return ExitCode.OK
