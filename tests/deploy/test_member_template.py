"""The organisation templates: retryd-member.yaml (a StackSet) and retryd.yaml's member roles.

Each is rendered for given parameters, in every region of the stack set, and compared
with what `retryd iam-policy` prints for the same [[accounts]] configuration, so the
templates and the generated policy cannot drift apart.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode_str  # type: ignore[import-untyped]  # cfn-lint ships no types

from retryd.iam.kms_keys import KeyFindings
from retryd.iam.policy import organisation_policies
from retryd.settings import Settings, load_settings
from tests.deploy.test_deploy import TEMPLATE, Renderer, tool

ROOT = Path(__file__).resolve().parents[2]
MEMBER_TEMPLATE = ROOT / "deploy" / "cloudformation" / "retryd-member.yaml"
HOME = "123456789012"
HOME_REGION = "eu-west-1"
MEMBER = "222222222222"
REGIONS = ["eu-west-1", "us-east-1"]
ROLE_NAME = "retryd-member"
MEMBER_ROLE = f"arn:aws:iam::{MEMBER}:role/{ROLE_NAME}"
HOME_ROLE = f"arn:aws:iam::{HOME}:role/retryd-task"

# The member's own targets, each named in its account (and region) as iam-policy narrows them.
FUNCTIONS = [f"arn:aws:lambda:eu-west-1:{MEMBER}:function:orders-*"]
STATE_MACHINES = [f"arn:aws:states:us-east-1:{MEMBER}:stateMachine:fulfil"]
QUEUES = [f"arn:aws:sqs:us-east-1:{MEMBER}:work-*", f"arn:aws:sqs:eu-west-1:{MEMBER}:work-*"]
TOPICS = [f"arn:aws:sns:eu-west-1:{MEMBER}:alerts"]
BUSES = [f"arn:aws:events:eu-west-1:{MEMBER}:event-bus/default"]
HOME_TOPIC = f"arn:aws:sns:{HOME_REGION}:{HOME}:home-alerts"


def load(path: Path) -> dict[str, Any]:
    """A template as CloudFormation reads it (!Sub becomes Fn::Sub and so on)."""
    decoded, problems = decode_str(path.read_text())
    assert not problems, problems
    loaded: dict[str, Any] = json.loads(json.dumps(decoded))
    return loaded


def renderer(doc: dict[str, Any], parameters: dict[str, Any], account: str, region: str) -> Any:
    """The test_deploy renderer, for one stack instance (account, region)."""
    rendered = Renderer(doc, parameters)
    rendered.refs["AWS::AccountId"] = account
    rendered.refs["AWS::Region"] = region
    rendered.conditions = {}
    for name, body in doc.get("Conditions", {}).items():
        rendered.conditions[name] = rendered.condition(body)
    return rendered


def org_settings(allow_targets: list[str], external_id: str | None) -> Settings:
    member: dict[str, Any] = {"account_id": MEMBER, "regions": REGIONS, "role_arn": MEMBER_ROLE}
    if external_id:
        member["external_id"] = external_id
    return Settings(
        discovery={"queue_prefixes": ["dlq-"]},
        parking={"queue": "parked"},
        guards={"allow_targets": allow_targets},
        ledger={"backend": "dynamodb", "table": "retryd-ledger"},
        accounts=[{"account_id": HOME, "regions": [HOME_REGION]}, member],
    )


def grants(statements: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(Sid, action, resource) of every grant: what a role may do, whichever policy says it."""
    found = set()
    for statement in statements:
        assert statement["Effect"] == "Allow"
        for action in statement["Action"]:
            for resource in statement["Resource"]:
                found.add((statement["Sid"], action, resource))
    return found


def member_stacks(parameters: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The member role (from RoleRegion's stack) and every region's inline policy."""
    doc = load(MEMBER_TEMPLATE)
    role: dict[str, Any] | None = None
    statements: list[dict[str, Any]] = []
    for region in REGIONS:
        rendered = renderer(doc, parameters, MEMBER, region)
        resources = doc["Resources"]
        if rendered.conditions[resources["MemberRole"]["Condition"]]:
            assert role is None, "the role is created in one region only"
            role = rendered.render(resources["MemberRole"]["Properties"])
            assert role is not None
            for policy in role["Policies"]:
                statements += policy["PolicyDocument"]["Statement"]
        policy = rendered.render(resources["RegionPolicy"]["Properties"])
        assert policy["PolicyName"] == f"retryd-{region}"
        statements += policy["PolicyDocument"]["Statement"]
    assert role is not None, "RoleRegion is one of the stack set's regions"
    return role, statements


BASE_PARAMETERS: dict[str, Any] = {
    "HomeAccountId": HOME,
    "RoleName": ROLE_NAME,
    "RoleRegion": REGIONS[0],
    "QueuePrefix": "dlq-",
    "ParkingQueueName": "parked",
}
PARAMETER_SETS: dict[str, tuple[dict[str, Any], list[str], str | None]] = {
    # name: (template parameters, allow_targets, external id)
    "every-target-type": (
        {
            "AllowedFunctionArns": ",".join(FUNCTIONS),
            "AllowedStateMachineArns": ",".join(STATE_MACHINES),
            "AllowedQueueArns": ",".join(QUEUES),
            "AllowedTopicArns": ",".join(TOPICS),
            "AllowedEventBusArns": ",".join(BUSES),
            "ExternalId": "org-retryd",
        },
        [*FUNCTIONS, *STATE_MACHINES, *QUEUES, *TOPICS, *BUSES],
        "org-retryd",
    ),
    # The member has only a topic target; a Lambda in the home account still makes retryd
    # map Lambda DLQs and SNS subscriptions in every place.
    "topic-here-lambda-at-home": (
        {
            "AllowedTopicArns": ",".join(TOPICS),
            "ReadLambdaFeeds": "true",
            "ReadSnsSubscriptions": "true",
        },
        [*TOPICS, f"arn:aws:lambda:{HOME_REGION}:{HOME}:function:charge"],
        None,
    ),
    "nothing-but-a-topic": ({"AllowedTopicArns": ",".join(TOPICS)}, [*TOPICS, HOME_TOPIC], None),
}


@pytest.mark.parametrize("name", sorted(PARAMETER_SETS))
def test_member_template_grants_what_iam_policy_prints_for_the_member(name: str) -> None:
    """Role policy plus every region's inline policy = iam-policy's member document, grant
    for grant (Sid, action, resource); the trust policy is the printed one."""
    parameters, allow_targets, external_id = PARAMETER_SETS[name]
    role, statements = member_stacks({**BASE_PARAMETERS, **parameters})
    policies = organisation_policies(
        org_settings(allow_targets, external_id), account=None, region=None
    )
    [member] = [policy for policy in policies if policy.account_id == MEMBER]
    assert grants(statements) == grants(member.policy["Statement"])
    assert role["AssumeRolePolicyDocument"] == member.trust_policy
    assert f"arn:aws:iam::{MEMBER}:role/{role['RoleName']}" == MEMBER_ROLE


def test_member_trust_policy_admits_exactly_the_home_role_when_given() -> None:
    """HomeRoleArn: that role is the principal, as `iam-policy --home-role` prints it."""
    role, _ = member_stacks({**BASE_PARAMETERS, "HomeRoleArn": HOME_ROLE})
    policies = organisation_policies(
        org_settings(TOPICS, None), account=None, region=None, home_role=HOME_ROLE
    )
    assert role["AssumeRolePolicyDocument"] == policies[1].trust_policy
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"AWS": HOME_ROLE}


def test_member_template_creates_the_parking_queue_in_every_region_and_the_role_once() -> None:
    """The parking queue has no condition; the role (global) only in RoleRegion."""
    doc = load(MEMBER_TEMPLATE)
    assert "Condition" not in doc["Resources"]["ParkingQueue"]
    assert doc["Resources"]["MemberRole"]["Condition"] == "IsRoleRegion"
    created = [
        region
        for region in REGIONS
        if renderer(doc, BASE_PARAMETERS, MEMBER, region).conditions["IsRoleRegion"]
    ]
    assert created == [REGIONS[0]]


def test_member_template_passes_cfn_lint() -> None:
    """cfn-lint reports nothing on the member template."""
    result = subprocess.run(
        [tool("cfn-lint"), str(MEMBER_TEMPLATE)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_home_template_assumes_the_member_roles_and_passes_the_accounts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """retryd.yaml with Accounts and MemberRoleArns: the container gets the [[accounts]]
    table, and the task role's policy is iam-policy's home document for it."""
    accounts = [
        {"account_id": HOME, "regions": [HOME_REGION]},
        {"account_id": MEMBER, "regions": REGIONS, "role_arn": MEMBER_ROLE},
    ]
    doc = load(TEMPLATE)
    rendered = renderer(
        doc,
        {
            "QueuePrefix": "dlq-",
            "ParkingQueueName": "parked",
            "AllowedTopicArns": HOME_TOPIC,
            "Accounts": json.dumps(accounts),
            "MemberRoleArns": MEMBER_ROLE,
        },
        HOME,
        HOME_REGION,
    )
    resources = doc["Resources"]
    (policy,) = rendered.render(resources["TaskRole"]["Properties"]["Policies"])
    (container,) = rendered.render(
        resources["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    )
    for variable in [n for n in os.environ if n.startswith("RETRYD_")]:
        monkeypatch.delenv(variable)
    for variable in container["Environment"]:
        monkeypatch.setenv(variable["Name"], variable["Value"])
    settings = load_settings(None)
    assert [entry.account_id for entry in settings.accounts] == [HOME, MEMBER]
    home = organisation_policies(settings, account=None, region=None)[0]
    assert policy["PolicyDocument"] == home.policy
    assert home.policy["Statement"][-1] == {
        "Sid": "AssumeMemberRoles",
        "Effect": "Allow",
        "Action": ["sts:AssumeRole"],
        "Resource": [MEMBER_ROLE],
    }


def test_member_template_kms_keys_are_the_ones_iam_policy_kms_grants() -> None:
    """DecryptKeyArns / EncryptKeyArns become the member's DecryptDeadLetters and
    EncryptResubmissions, as `iam-policy --kms` prints them for keys found there."""
    decrypt = [f"arn:aws:kms:{region}:{MEMBER}:key/dlq-{region}" for region in REGIONS]
    encrypt = [f"arn:aws:kms:us-east-1:{MEMBER}:key/parking"]
    _, statements = member_stacks(
        {
            **BASE_PARAMETERS,
            "AllowedTopicArns": ",".join(TOPICS),
            "DecryptKeyArns": ",".join(decrypt),
            "EncryptKeyArns": ",".join(encrypt),
        }
    )
    policies = organisation_policies(
        org_settings(TOPICS, None),
        account=None,
        region=None,
        keys={MEMBER: KeyFindings(decrypt=decrypt, encrypt=encrypt)},
    )
    assert grants(statements) == grants(policies[1].policy["Statement"])
    assert {sid for sid, _, _ in grants(statements)} >= {
        "DecryptDeadLetters",
        "EncryptResubmissions",
    }
