"""`retryd iam-policy` with [[accounts]]: the home role, and each member's role and trust."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from hypothesis import given
from hypothesis import strategies as st

from retryd.commands.cli import main
from retryd.errors import ConfigError
from retryd.iam.policy import (
    AccountPolicy,
    organisation_policies,
    place_target_globs,
    policy_document,
)
from retryd.settings import Settings

pytestmark = pytest.mark.usefixtures("keep_logging_config")

HOME = "111111111111"
MEMBER = "222222222222"
OTHER = "333333333333"
HOME_REGIONS = ["eu-west-1"]
MEMBER_REGIONS = ["eu-west-1", "us-east-1"]
MEMBER_ROLE = f"arn:aws:iam::{MEMBER}:role/retryd-member"
THIRD = "444444444444"
THIRD_ROLE = f"arn:aws:iam::{THIRD}:role/retryd-member"
HOME_ROLE = f"arn:aws:iam::{HOME}:role/retryd"
# Targets: every SQS queue named orders-* in a configured place, one function at home,
# and a topic in an account retryd does not work in (its resource policy admits retryd).
OUTSIDE_TOPIC = f"arn:aws:sns:us-east-1:{OTHER}:partner"
TARGETS = [
    "arn:aws:sqs:*:*:orders-*",
    f"arn:aws:lambda:eu-west-1:{HOME}:function:charge",
    OUTSIDE_TOPIC,
]
# The only actions a policy may grant on "*" (no resource type exists for them).
UNSCOPABLE = {
    "sqs:ListQueues",
    "lambda:ListFunctions",
    "sns:ListSubscriptions",
    "sns:GetSubscriptionAttributes",
}


def org_settings(
    *, home: bool = True, external_id: str | None = "org-retryd", **overrides: Any
) -> Settings:
    """Home (one region) and a member (two regions, external id), DynamoDB ledger."""
    member: dict[str, Any] = {
        "account_id": MEMBER,
        "regions": MEMBER_REGIONS,
        "role_arn": MEMBER_ROLE,
    }
    if external_id is not None:
        member["external_id"] = external_id
    accounts = [{"account_id": HOME, "regions": HOME_REGIONS}] if home else []
    fields: dict[str, Any] = {
        "discovery": {"queue_prefixes": ["retry-"]},
        "guards": {"allow_targets": TARGETS},
        "ledger": {"backend": "dynamodb", "table": "retryd-ledger"},
        "accounts": [*accounts, member],
    }
    fields.update(overrides)
    return Settings(**fields)


def by_account(policies: list[AccountPolicy]) -> dict[str, AccountPolicy]:
    return {policy.account_id: policy for policy in policies}


def granted(document: dict[str, Any], action: str) -> list[str]:
    return [
        resource
        for statement in document["Statement"]
        if action in statement["Action"]
        for resource in statement["Resource"]
    ]


def resources(document: dict[str, Any]) -> list[tuple[str, str]]:
    """(action, resource) for every grant of the document."""
    return [
        (action, resource)
        for statement in document["Statement"]
        for action in statement["Action"]
        for resource in statement["Resource"]
    ]


def test_the_home_role_may_assume_exactly_the_listed_member_roles() -> None:
    """sts:AssumeRole on the member role ARNs as listed: no wildcard, nothing else."""
    settings = org_settings(
        accounts=[
            {"account_id": HOME, "regions": HOME_REGIONS},
            {"account_id": MEMBER, "regions": MEMBER_REGIONS, "role_arn": MEMBER_ROLE},
            {"account_id": THIRD, "regions": ["eu-central-1"], "role_arn": THIRD_ROLE},
        ]
    )
    policies = by_account(organisation_policies(settings, account=None, region=None))
    home = policies[HOME].policy
    assert granted(home, "sts:AssumeRole") == [MEMBER_ROLE, THIRD_ROLE]
    assert [s["Sid"] for s in home["Statement"] if "sts:AssumeRole" in s["Action"]] == [
        "AssumeMemberRoles"
    ]
    for account in (MEMBER, THIRD):
        assert not granted(policies[account].policy, "sts:AssumeRole")


def test_the_home_role_keeps_its_own_work_scoped_to_the_home_regions() -> None:
    """The home role drains and parks in the home entry's regions and account; it resubmits
    to its account's targets in whichever region the allowlist names (here any)."""
    home = by_account(organisation_policies(org_settings(), account=None, region=None))[HOME]
    assert home.role_arn is None
    assert home.trust_policy is None
    assert granted(home.policy, "sqs:ReceiveMessage") == [f"arn:aws:sqs:eu-west-1:{HOME}:retry-*"]
    assert granted(home.policy, "sqs:SendMessage") == [
        f"arn:aws:sqs:eu-west-1:{HOME}:retryd-parking",
        f"arn:aws:sqs:*:{HOME}:orders-*",
    ]
    assert granted(home.policy, "lambda:InvokeFunction") == [
        f"arn:aws:lambda:eu-west-1:{HOME}:function:charge",
        f"arn:aws:lambda:eu-west-1:{HOME}:function:charge:*",
    ]
    # The ledger, control store and cluster item: one table in the home entry's first region.
    assert granted(home.policy, "dynamodb:PutItem") == [
        f"arn:aws:dynamodb:eu-west-1:{HOME}:table/retryd-ledger"
    ]


def test_each_member_policy_is_scoped_to_its_account_and_regions() -> None:
    """Every scoped grant of the member role names the member account and one of its regions,
    except a target: the member's own in the allowlist's region (any, here), or one outside
    every listed account (granted to every role that may send)."""
    member = by_account(organisation_policies(org_settings(), account=None, region=None))[MEMBER]
    grants = resources(member.policy)
    assert grants
    for action, resource in grants:
        if resource == "*":
            assert action in UNSCOPABLE
            continue
        if resource in (OUTSIDE_TOPIC, f"arn:aws:sqs:*:{MEMBER}:orders-*"):
            continue
        _, _, _, region, account, _ = resource.split(":", 5)
        assert (account, region) in {(MEMBER, r) for r in MEMBER_REGIONS}, (action, resource)
    assert granted(member.policy, "sqs:ReceiveMessage") == [
        f"arn:aws:sqs:{region}:{MEMBER}:retry-*" for region in MEMBER_REGIONS
    ]
    assert granted(member.policy, "sqs:SendMessage") == [
        *(f"arn:aws:sqs:{region}:{MEMBER}:retryd-parking" for region in MEMBER_REGIONS),
        f"arn:aws:sqs:*:{MEMBER}:orders-*",
    ]
    # The function is the home account's: the member role never invokes it ...
    assert not granted(member.policy, "lambda:InvokeFunction")
    # ... but the member's own Lambda feeds are read there, since a Lambda may be a target.
    assert granted(member.policy, "lambda:ListFunctionEventInvokeConfigs") == [
        f"arn:aws:lambda:{region}:{MEMBER}:function:*" for region in MEMBER_REGIONS
    ]
    assert granted(member.policy, "sns:Publish") == [OUTSIDE_TOPIC]
    # The table lives at home only.
    assert not [a for a, _ in grants if a.startswith("dynamodb:")]


def test_trust_policy_admits_the_home_account_with_the_external_id() -> None:
    """Principal: the home account's root; the external id as an sts:ExternalId condition."""
    member = by_account(organisation_policies(org_settings(), account=None, region=None))[MEMBER]
    assert member.trust_policy == {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "RetrydHomeAccount",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{HOME}:root"},
                "Action": ["sts:AssumeRole"],
                "Condition": {"StringEquals": {"sts:ExternalId": "org-retryd"}},
            }
        ],
    }


def test_trust_policy_without_external_id_and_for_exactly_the_home_role() -> None:
    """No external id: no condition; --home-role: that role is the only principal."""
    settings = org_settings(external_id=None)
    member = by_account(
        organisation_policies(settings, account=None, region=None, home_role=HOME_ROLE)
    )[MEMBER]
    assert member.trust_policy is not None
    [statement] = member.trust_policy["Statement"]
    assert statement["Principal"] == {"AWS": HOME_ROLE}
    assert "Condition" not in statement


def test_without_a_home_entry_the_home_role_only_keeps_the_table_and_assumes() -> None:
    """Home not drained: the ledger table (in --region) and sts:AssumeRole, nothing else."""
    settings = org_settings(home=False)
    policies = organisation_policies(settings, account=HOME, region="eu-central-1")
    home = by_account(policies)[HOME].policy
    assert [s["Sid"] for s in home["Statement"]] == ["AttemptLedger", "AssumeMemberRoles"]
    assert granted(home, "dynamodb:GetItem") == [
        f"arn:aws:dynamodb:eu-central-1:{HOME}:table/retryd-ledger"
    ]


def test_the_trust_policy_needs_to_know_the_home_account() -> None:
    """No home entry, no --account, no --home-role: a ConfigError saying what to give."""
    with pytest.raises(ConfigError, match="need the home account"):
        organisation_policies(org_settings(home=False), account=None, region=None)
    # --home-role names its account.
    policies = organisation_policies(
        org_settings(home=False), account=None, region=None, home_role=HOME_ROLE
    )
    assert policies[0].account_id == HOME


def test_a_home_account_given_two_ways_must_agree() -> None:
    """--account or --home-role naming another account than the home entry is refused."""
    with pytest.raises(ConfigError, match="given twice, differently"):
        organisation_policies(org_settings(), account=OTHER, region=None)
    with pytest.raises(ConfigError, match="--home-role"):
        organisation_policies(org_settings(), account=None, region=None, home_role="retryd")


def test_operator_role_adds_parking_redrive_in_every_place() -> None:
    """--role operator: each account's parking queues, in its regions, may be taken back."""
    policies = by_account(
        organisation_policies(org_settings(), account=None, region=None, role="operator")
    )
    assert granted(policies[MEMBER].policy, "sqs:DeleteMessage")[-2:] == [
        f"arn:aws:sqs:{region}:{MEMBER}:retryd-parking" for region in MEMBER_REGIONS
    ]


def test_every_document_is_well_formed_and_every_action_real() -> None:
    """Unique Sids, Allow, non-empty lists, actions of real APIs (sts:AssumeRole included)."""
    session = botocore.session.get_session()
    names = {"lambda:InvokeFunction": "Invoke"}
    services = {"states": "stepfunctions"}
    for policy in organisation_policies(org_settings(), account=None, region=None):
        documents = [policy.policy] + ([policy.trust_policy] if policy.trust_policy else [])
        for document in documents:
            sids = [s["Sid"] for s in document["Statement"]]
            assert len(sids) == len(set(sids))
            for statement in document["Statement"]:
                assert statement["Effect"] == "Allow"
                assert statement["Action"]
                for action in statement["Action"]:
                    service, name = action.split(":")
                    model = session.get_service_model(services.get(service, service))
                    assert names.get(action, name) in model.operation_names, action


def test_one_account_documents_are_unchanged_by_the_refactor() -> None:
    """Without [[accounts]], policy_document still grants Lambda reads for a Lambda target."""
    settings = org_settings(accounts=[])
    document = policy_document(settings, account=HOME, region="eu-west-1")
    assert granted(document, "lambda:ListFunctionEventInvokeConfigs") == [
        f"arn:aws:lambda:eu-west-1:{HOME}:function:*"
    ]
    assert not granted(document, "sts:AssumeRole")


def test_explicit_queue_urls_go_to_the_account_they_name() -> None:
    """A DLQ given by URL is granted to the role of the account in its URL only."""
    url = f"https://sqs.us-east-1.amazonaws.com/{MEMBER}/legacy-dlq"
    settings = org_settings(discovery={"queue_prefixes": [], "queues": ["named-dlq", url]})
    policies = by_account(organisation_policies(settings, account=None, region=None))
    assert granted(policies[HOME].policy, "sqs:ReceiveMessage") == [
        f"arn:aws:sqs:eu-west-1:{HOME}:named-dlq"
    ]
    assert granted(policies[MEMBER].policy, "sqs:ReceiveMessage") == [
        f"arn:aws:sqs:eu-west-1:{MEMBER}:named-dlq",
        f"arn:aws:sqs:us-east-1:{MEMBER}:named-dlq",
        f"arn:aws:sqs:us-east-1:{MEMBER}:legacy-dlq",
    ]


_ACCOUNTS = st.sampled_from([HOME, MEMBER, OTHER])
_REGIONS = st.sampled_from(["eu-west-1", "us-east-1", "ap-south-1"])


@given(
    places=st.lists(st.tuples(_ACCOUNTS, _REGIONS), min_size=1, max_size=6, unique=True),
    own_account=_ACCOUNTS,
    account=st.one_of(st.just("*"), _ACCOUNTS),
    region=st.one_of(st.just("*"), _REGIONS),
)
def test_narrowed_globs_stay_in_own_account_or_outside_every_listed_one(
    places: list[tuple[str, str]], own_account: str, account: str, region: str
) -> None:
    """A glob narrowed for a role names its own account in the glob's region, or is the glob
    itself and matches no listed account at all; the role's own account is never dropped."""
    own = [place for place in places if place[0] == own_account]
    glob = f"arn:aws:sqs:{region}:{account}:orders"
    narrowed = place_target_globs([glob], own, places)
    listed = {a for a, _ in places}
    matches_any = account == "*" or account in listed
    if not matches_any:
        assert narrowed == [glob]
        return
    expected = (
        []
        if not own or account not in ("*", own_account)
        else [f"arn:aws:sqs:{region}:{own_account}:orders"]
    )
    assert narrowed == expected


def iam_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str, str]:
    for name in ("RETRYD_CONFIG", "RETRYD_LEDGER__BACKEND", "RETRYD_GUARDS__ALLOW_ANY_TARGET"):
        monkeypatch.delenv(name, raising=False)
    code = main(["iam-policy", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


ORG_TOML = f"""
[discovery]
queue_prefixes = ["retry-"]
[guards]
allow_targets = {json.dumps(TARGETS)}
[ledger]
backend = "dynamodb"
table = "retryd-ledger"
[[accounts]]
account_id = "{HOME}"
regions = {json.dumps(HOME_REGIONS)}
[[accounts]]
account_id = "{MEMBER}"
regions = {json.dumps(MEMBER_REGIONS)}
role_arn = "{MEMBER_ROLE}"
external_id = "org-retryd"
"""


def test_cli_json_is_one_object_keyed_by_account(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--output json: {account: {policy[, trust_policy]}}, the documents organisation_policies
    gives."""
    config = tmp_path / "retryd.toml"
    config.write_text(ORG_TOML)
    code, out, _ = iam_cli(capsys, monkeypatch, "--config", str(config), "--output", "json")
    assert code == 0
    loaded = json.loads(out)
    assert list(loaded) == [HOME, MEMBER]
    assert set(loaded[HOME]) == {"policy"}
    assert set(loaded[MEMBER]) == {"policy", "trust_policy"}
    expected = organisation_policies(org_settings(), account=None, region=None)
    assert loaded == {policy.account_id: policy.to_json() for policy in expected}


def test_cli_text_has_one_labelled_section_per_document(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Text: a `# ...` label, then that document's JSON, for home, member policy, member trust."""
    config = tmp_path / "retryd.toml"
    config.write_text(ORG_TOML)
    code, out, _ = iam_cli(capsys, monkeypatch, "--config", str(config))
    assert code == 0
    sections = re.split(r"^# (.*)\n", out, flags=re.MULTILINE)[1:]
    labels, bodies = sections[0::2], sections[1::2]
    assert labels == [
        f"home account {HOME}: policy of retryd's own role",
        f"member account {MEMBER}: policy of {MEMBER_ROLE}",
        f"member account {MEMBER}: trust policy of {MEMBER_ROLE}",
    ]
    documents = [json.loads(body) for body in bodies]
    policies = organisation_policies(org_settings(), account=None, region=None)
    assert documents == [
        policies[0].policy,
        policies[1].policy,
        policies[1].trust_policy,
    ]


def test_cli_without_accounts_prints_todays_document_for_either_output(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No [[accounts]]: text and json are both the one document, as before; --home-role is
    refused with exit 2."""
    config = tmp_path / "retryd.toml"
    config.write_text(ORG_TOML.split("[[accounts]]", 1)[0])
    outputs = []
    for output in ("text", "json"):
        code, out, _ = iam_cli(
            capsys, monkeypatch, "--config", str(config), "--account", HOME, "--output", output
        )
        assert code == 0
        outputs.append(json.loads(out))
    expected = policy_document(org_settings(accounts=[]), account=HOME, region=None)
    assert outputs == [expected, expected]
    code, out, err = iam_cli(capsys, monkeypatch, "--config", str(config), "--home-role", HOME_ROLE)
    assert (code, out) == (2, "")
    assert "--home-role" in err


def test_a_target_in_a_listed_account_but_an_unlisted_region_is_granted_to_that_account() -> None:
    """retryd sends to a listed account's target in any region with that account's role:
    the grant goes to that role only, in the glob's region; a wildcard region stays one."""
    elsewhere = f"arn:aws:sqs:ap-south-1:{MEMBER}:orders"
    settings = org_settings(guards={"allow_targets": [elsewhere, "arn:aws:sns:*:*:alerts"]})
    policies = by_account(organisation_policies(settings, account=None, region=None))
    assert granted(policies[MEMBER].policy, "sqs:SendMessage").count(elsewhere) == 1
    assert elsewhere not in granted(policies[HOME].policy, "sqs:SendMessage")
    assert granted(policies[MEMBER].policy, "sns:Publish") == [f"arn:aws:sns:*:{MEMBER}:alerts"]
    assert granted(policies[HOME].policy, "sns:Publish") == [f"arn:aws:sns:*:{HOME}:alerts"]


@pytest.mark.parametrize("host", ["https://sqs.amazonaws.com", "http://localhost:4566"])
def test_a_queue_url_naming_no_region_is_granted_in_its_accounts_first_region_only(
    host: str,
) -> None:
    """retryd reads such a URL in its account's first listed region (Places.entries_for): the
    policy grants that one region, for the home entry as for a member, and nothing elsewhere."""
    base = host.rstrip("/")
    home_url, member_url = f"{base}/{HOME}/home-dlq", f"{base}/{MEMBER}/member-dlq"
    settings = org_settings(
        discovery={"queue_prefixes": [], "queues": [home_url, member_url]},
        accounts=[
            {"account_id": HOME, "regions": ["us-west-2", "eu-west-1"]},
            {"account_id": MEMBER, "regions": MEMBER_REGIONS, "role_arn": MEMBER_ROLE},
        ],
    )
    policies = by_account(organisation_policies(settings, account=None, region=None))
    assert granted(policies[HOME].policy, "sqs:ReceiveMessage") == [
        f"arn:aws:sqs:us-west-2:{HOME}:home-dlq"
    ]
    assert granted(policies[MEMBER].policy, "sqs:ReceiveMessage") == [
        f"arn:aws:sqs:eu-west-1:{MEMBER}:member-dlq"
    ]


def test_queue_entries_are_granted_exactly_where_retryd_reads_them() -> None:
    """An ARN entry is granted as itself, in its place; a URL or ARN in no listed place
    (an unlisted region or account) is granted to no role, as no place reads it."""
    arn = f"arn:aws:sqs:us-east-1:{MEMBER}:by-arn"
    queues = [
        arn,
        f"arn:aws:sqs:ap-south-1:{MEMBER}:unlisted-region",
        f"https://sqs.ap-south-1.amazonaws.com/{MEMBER}/unlisted-region-url",
        f"https://sqs.eu-west-1.amazonaws.com/{OTHER}/unlisted-account",
    ]
    settings = org_settings(discovery={"queue_prefixes": [], "queues": queues})
    policies = by_account(organisation_policies(settings, account=None, region=None))
    assert granted(policies[MEMBER].policy, "sqs:ReceiveMessage") == [arn]
    assert granted(policies[HOME].policy, "sqs:ReceiveMessage") == []
