"""The [[accounts]] table: what a valid organisation set-up is, and one line per mistake."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from retryd.settings import Settings, format_validation_error

BASE: dict[str, Any] = {
    "discovery": {"queue_prefixes": ["retry-"]},
    "guards": {"allow_any_target": True},
}
MEMBER = {
    "account_id": "222222222222",
    "regions": ["eu-west-1", "us-east-1"],
    "role_arn": "arn:aws:iam::222222222222:role/retryd-member",
    "external_id": "org-retryd",
}


def problems(accounts: list[dict[str, Any]]) -> list[str]:
    try:
        Settings(**BASE, accounts=accounts)
    except ValidationError as exc:
        return format_validation_error(exc)
    return []


def test_no_accounts_means_the_home_account_only() -> None:
    """Left out, the list is empty: today's one-account deployment."""
    assert Settings(**BASE).accounts == []


def test_home_and_member_accounts_are_accepted() -> None:
    """A home entry without a role and a member entry with one validate as given."""
    settings = Settings(
        **BASE, accounts=[{"account_id": "111111111111", "regions": ["eu-west-1"]}, MEMBER]
    )
    member = settings.accounts[1]
    assert member.role_arn == MEMBER["role_arn"]
    assert member.regions == ["eu-west-1", "us-east-1"]
    assert settings.accounts[0].role_arn is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"account_id": "2222"}, "accounts.0.account_id: '2222' is not an AWS account id"),
        ({"regions": ["europe"]}, "accounts.0.regions.0: 'europe' is not an AWS region name"),
        ({"regions": []}, "accounts.0.regions: List should have at least 1 item"),
        ({"regions": ["eu-west-1", "eu-west-1"]}, "region listed twice: eu-west-1"),
        ({"role_arn": "arn:aws:iam::333333333333:role/r"}, "not in 222222222222"),
        ({"role_arn": "arn:aws:sqs:eu-west-1:222222222222:q"}, "is not an IAM role ARN"),
        ({"role_arn": None}, "external_id needs a role_arn"),
    ],
)
def test_a_bad_account_entry_is_one_line_naming_it(change: dict[str, Any], expected: str) -> None:
    """Each mistake is reported on its own line, under the entry's dotted path."""
    lines = problems([{**MEMBER, **change}])
    assert len(lines) == 1
    assert expected in lines[0]


def test_an_account_listed_twice_is_refused() -> None:
    """Two entries for one account would drain its queues twice over."""
    assert problems([MEMBER, MEMBER]) == ["accounts: account listed twice: 222222222222"]


def test_only_one_account_may_go_without_a_role() -> None:
    """retryd has credentials for its home account only; every other needs a role to assume."""
    lines = problems(
        [
            {"account_id": "111111111111", "regions": ["eu-west-1"]},
            {"account_id": "222222222222", "regions": ["eu-west-1"]},
        ]
    )
    assert len(lines) == 1
    assert "only the home account" in lines[0]


def test_a_european_sovereign_cloud_account_is_accepted() -> None:
    """eusc-de-east-1 (partition aws-eusc) is a region an [[accounts]] entry may list."""
    member = {
        "account_id": "222222222222",
        "regions": ["eusc-de-east-1"],
        "role_arn": "arn:aws-eusc:iam::222222222222:role/retryd-member",
    }

    assert Settings(**BASE, accounts=[member]).accounts[0].regions == ["eusc-de-east-1"]
