"""`retryd iam-policy`: the least-privilege policy for a config, and the docs' copy of it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import botocore.session
import pytest

from retryd.commands.cli import main
from retryd.errors import ConfigError
from retryd.iam.policy import policy_document
from retryd.settings import Settings, load_settings
from tests.conftest import SettingsFactory

ROOT = Path(__file__).resolve().parents[2]
# The CLI configures logging (iam-policy --kms calls AWS); later tests keep their own.
pytestmark = pytest.mark.usefixtures("keep_logging_config")

EXAMPLE_CONFIG = ROOT / "config" / "retryd.example.toml"
ACCOUNT = "123456789012"
REGION = "eu-west-1"

# Actions that only read or list; everything else is a write and must never be granted on "*".
READ_ACTIONS = frozenset(
    {
        "sqs:ListQueues",
        "sqs:ListQueueTags",
        "sqs:ListDeadLetterSourceQueues",
        "sqs:GetQueueAttributes",
        "sqs:GetQueueUrl",
        "lambda:ListFunctions",
        "lambda:ListFunctionEventInvokeConfigs",
        "lambda:GetFunctionConfiguration",
        "sns:ListSubscriptions",
        "sns:GetSubscriptionAttributes",
        "states:DescribeExecution",
        "dynamodb:DescribeTable",
        "dynamodb:GetItem",
        "dynamodb:BatchGetItem",
    }
)
# IAM action -> the API operation it authorises, where the two names differ.
PERMISSION_NAMES = {"lambda:InvokeFunction": "Invoke"}
BOTOCORE_SERVICE = {"states": "stepfunctions"}


def statements(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {statement["Sid"]: statement for statement in document["Statement"]}


def granted(document: dict[str, Any], action: str) -> list[str]:
    """Every resource pattern on which `action` is allowed."""
    return [
        resource
        for statement in document["Statement"]
        if action in statement["Action"]
        for resource in statement["Resource"]
    ]


def example_policy() -> dict[str, Any]:
    return policy_document(load_settings(EXAMPLE_CONFIG), account=ACCOUNT, region=REGION)


def test_example_config_policy_has_the_expected_statements() -> None:
    """The example config: DLQs by prefix, the parking queue, Lambda, Step Functions and SQS."""
    document = example_policy()
    assert document["Version"] == "2012-10-17"
    by_sid = statements(document)
    assert by_sid["DrainDeadLetterQueues"]["Resource"] == [
        f"arn:aws:sqs:{REGION}:{ACCOUNT}:retry-*"
    ]
    assert "sqs:ReceiveMessage" in by_sid["DrainDeadLetterQueues"]["Action"]
    assert by_sid["ParkMessages"]["Resource"] == [f"arn:aws:sqs:{REGION}:{ACCOUNT}:retryd-parking"]
    assert granted(document, "sqs:SendMessage") == [
        f"arn:aws:sqs:{REGION}:{ACCOUNT}:retryd-parking",
        f"arn:aws:sqs:*:{ACCOUNT}:*",
    ]
    assert granted(document, "lambda:InvokeFunction") == [
        f"arn:aws:lambda:*:{ACCOUNT}:function:*",
        f"arn:aws:lambda:*:{ACCOUNT}:function:*:*",
    ]
    assert granted(document, "states:StartExecution") == [
        f"arn:aws:states:*:{ACCOUNT}:stateMachine:*"
    ]
    assert granted(document, "states:DescribeExecution") == [
        f"arn:aws:states:*:{ACCOUNT}:execution:*:*"
    ]
    # Nothing the example does not allow: no SNS, no EventBridge, no DynamoDB (SQLite ledger).
    assert not granted(document, "sns:Publish")
    assert not granted(document, "events:PutEvents")
    assert not any(a.startswith("dynamodb:") for s in document["Statement"] for a in s["Action"])


def test_no_write_action_is_granted_on_every_resource() -> None:
    """Only list/read calls that AWS cannot scope get "*"; every other action is scoped."""
    for document in (example_policy(), policy_document(all_services(), account=None, region=None)):
        for statement in document["Statement"]:
            if "*" in statement["Resource"]:
                assert set(statement["Action"]) <= READ_ACTIONS, statement
                assert set(statement["Action"]) <= {
                    "sqs:ListQueues",
                    "lambda:ListFunctions",
                    "sns:ListSubscriptions",
                    "sns:GetSubscriptionAttributes",
                }


def all_services() -> Settings:
    return Settings(
        discovery={"queue_prefixes": ["retry-"], "queues": ["orders-dlq"]},
        guards={
            "allow_targets": [
                "arn:aws:lambda:eu-west-1:123456789012:function:charge",
                "arn:aws:states:eu-west-1:123456789012:stateMachine:orders-*",
                "arn:aws:sqs:eu-west-1:123456789012:work",
                "arn:aws:sns:eu-west-1:123456789012:alerts",
                "arn:aws:events:eu-west-1:123456789012:event-bus/default",
            ]
        },
        ledger={"backend": "dynamodb", "table": "retryd-ledger"},
    )


def test_every_action_is_a_real_iam_action() -> None:
    """Each action is `service:Name` and names an operation of that service's API model."""
    session = botocore.session.get_session()
    document = policy_document(all_services(), account=ACCOUNT, region=REGION)
    actions = {action for statement in document["Statement"] for action in statement["Action"]}
    assert len(actions) > 15
    for action in actions:
        assert re.fullmatch(r"[a-z0-9-]+:[A-Z][A-Za-z]+", action), action
        service, name = action.split(":")
        model = session.get_service_model(BOTOCORE_SERVICE.get(service, service))
        assert PERMISSION_NAMES.get(action, name) in model.operation_names, action


def test_every_statement_is_well_formed() -> None:
    """Unique alphanumeric Sids, Effect Allow, non-empty action and resource lists."""
    document = policy_document(all_services(), account=ACCOUNT, region=REGION)
    sids = [statement["Sid"] for statement in document["Statement"]]
    assert len(sids) == len(set(sids))
    for statement in document["Statement"]:
        assert re.fullmatch(r"[A-Za-z0-9]+", statement["Sid"])
        assert statement["Effect"] == "Allow"
        assert statement["Action"]
        assert statement["Resource"]
        assert len(statement["Resource"]) == len(set(statement["Resource"]))


def test_targets_are_split_by_service() -> None:
    """Each target service's action is granted on that service's globs only."""
    document = policy_document(all_services(), account=ACCOUNT, region=REGION)
    prefix = f"arn:aws:{{}}:{REGION}:{ACCOUNT}:"
    assert granted(document, "lambda:InvokeFunction") == [
        prefix.format("lambda") + "function:charge",
        prefix.format("lambda") + "function:charge:*",
    ]
    assert granted(document, "states:StartExecution") == [
        prefix.format("states") + "stateMachine:orders-*"
    ]
    assert granted(document, "states:DescribeExecution") == [
        prefix.format("states") + "execution:orders-*:*"
    ]
    assert granted(document, "sns:Publish") == [prefix.format("sns") + "alerts"]
    assert granted(document, "events:PutEvents") == [prefix.format("events") + "event-bus/default"]
    assert statements(document)["ResubmitToSqs"]["Resource"] == [prefix.format("sqs") + "work"]


def test_lambda_reads_are_scoped_and_never_the_environment() -> None:
    """Failure destinations are read in this account and region; no GetFunctionConfiguration."""
    document = policy_document(all_services(), account=ACCOUNT, region=REGION)
    assert granted(document, "lambda:ListFunctionEventInvokeConfigs") == [
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:*"
    ]
    assert not granted(document, "lambda:GetFunctionConfiguration")


def test_no_lambda_reads_without_a_lambda_target(make_settings: SettingsFactory) -> None:
    """With no Lambda in allow_targets, ListFunctions (which shows env vars) is not granted."""
    settings = make_settings(guards={"allow_targets": ["arn:aws:sqs:eu-west-1:123456789012:*"]})
    document = policy_document(settings, account=ACCOUNT, region=REGION)
    actions = {action for statement in document["Statement"] for action in statement["Action"]}
    assert not {a for a in actions if a.startswith("lambda:")}


def test_sns_subscription_reads_only_when_a_subscriber_may_be_a_target(
    make_settings: SettingsFactory,
) -> None:
    """Subscriptions are read (and granted) when a queue or a function can be a target, only."""

    def sns_reads(*allow: str) -> set[str]:
        settings = make_settings(guards={"allow_targets": list(allow)})
        document = policy_document(settings, account=ACCOUNT, region=REGION)
        actions = {action for statement in document["Statement"] for action in statement["Action"]}
        return {action for action in actions if action.startswith("sns:") and "Subscri" in action}

    both = {"sns:ListSubscriptions", "sns:GetSubscriptionAttributes"}
    assert sns_reads(f"arn:aws:sqs:{REGION}:{ACCOUNT}:orders") == both
    assert sns_reads(f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:orders") == both
    assert sns_reads(f"arn:aws:*:{REGION}:{ACCOUNT}:*") == both
    assert sns_reads(f"arn:aws:sns:{REGION}:{ACCOUNT}:topic") == set()
    assert sns_reads(f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:flow") == set()


def test_wildcard_service_glob_becomes_one_arn_per_target_service(
    make_settings: SettingsFactory,
) -> None:
    """`arn:aws:*:R:A:*` (IAM takes no wildcard service) is expanded per service, narrowed."""
    settings = make_settings(guards={"allow_targets": [f"arn:aws:*:{REGION}:{ACCOUNT}:*"]})
    document = policy_document(settings, account=ACCOUNT, region=REGION)
    base = f":{REGION}:{ACCOUNT}:"
    assert granted(document, "lambda:InvokeFunction")[0] == f"arn:aws:lambda{base}function:*"
    assert granted(document, "states:StartExecution") == [f"arn:aws:states{base}stateMachine:*"]
    assert granted(document, "sns:Publish") == [f"arn:aws:sns{base}*"]
    assert granted(document, "events:PutEvents") == [f"arn:aws:events{base}event-bus/*"]
    for statement in document["Statement"]:
        for resource in statement["Resource"]:
            assert resource == "*" or resource.split(":")[2] != "*"


def test_glob_that_can_match_no_target_grants_nothing(make_settings: SettingsFactory) -> None:
    """An allowlist entry for a Lambda layer or an S3 bucket can never be a target."""
    settings = make_settings(
        guards={
            "allow_targets": [
                f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:x",
                "arn:aws:s3:::bucket",
                f"arn:aws:sns:{REGION}:{ACCOUNT}:t",
            ]
        }
    )
    document = policy_document(settings, account=ACCOUNT, region=REGION)
    sids = set(statements(document))
    assert "ResubmitToLambda" not in sids
    assert granted(document, "sns:Publish") == [f"arn:aws:sns:{REGION}:{ACCOUNT}:t"]


def test_prefixes_explicit_names_and_urls(make_settings: SettingsFactory) -> None:
    """Prefixes become `PREFIX*`, names are scoped by the flags, URLs keep their own owner."""
    settings = make_settings(
        discovery={
            "queue_prefixes": ["retry-", "dlq-"],
            "queues": [
                "orders-dlq",
                "https://sqs.us-east-2.amazonaws.com/210987654321/partner-dlq",
                "http://localhost:4566/000000000000/local-dlq",
            ],
        }
    )
    document = policy_document(settings, account=ACCOUNT, region=REGION)
    assert statements(document)["DrainDeadLetterQueues"]["Resource"] == [
        f"arn:aws:sqs:{REGION}:{ACCOUNT}:retry-*",
        f"arn:aws:sqs:{REGION}:{ACCOUNT}:dlq-*",
        f"arn:aws:sqs:{REGION}:{ACCOUNT}:orders-dlq",
        "arn:aws:sqs:us-east-2:210987654321:partner-dlq",
        f"arn:aws:sqs:{REGION}:000000000000:local-dlq",
    ]


def test_parking_queue_by_url(make_settings: SettingsFactory) -> None:
    """A parking queue given as a URL is granted by the ARN the URL names."""
    settings = make_settings(
        parking={"queue": "https://sqs.eu-central-1.amazonaws.com/123456789012/park"}
    )
    document = policy_document(settings, account=None, region=None)
    assert statements(document)["ParkMessages"]["Resource"] == [
        "arn:aws:sqs:eu-central-1:123456789012:park"
    ]


def test_without_account_and_region_names_are_any(make_settings: SettingsFactory) -> None:
    """No --account/--region: queues given by name match in any account and region."""
    document = policy_document(make_settings(), account=None, region=None)
    assert statements(document)["DrainDeadLetterQueues"]["Resource"] == ["arn:aws:sqs:*:*:retry-*"]


def test_partition_is_used_for_named_queues(make_settings: SettingsFactory) -> None:
    """China regions: ARNs in the aws-cn partition."""
    document = policy_document(
        make_settings(), account=ACCOUNT, region="cn-north-1", partition="aws-cn"
    )
    assert statements(document)["ParkMessages"]["Resource"] == [
        f"arn:aws-cn:sqs:cn-north-1:{ACCOUNT}:retryd-parking"
    ]


def test_dynamodb_ledger_only_when_configured(make_settings: SettingsFactory) -> None:
    """DynamoDB item actions on the ledger table for that backend, and nothing for the others."""
    for backend in ("memory", "sqlite"):
        document = policy_document(
            make_settings(ledger={"backend": backend}), account=ACCOUNT, region=REGION
        )
        assert "AttemptLedger" not in statements(document)
    document = policy_document(
        make_settings(ledger={"backend": "dynamodb", "table": "ledger-prod"}),
        account=ACCOUNT,
        region=REGION,
    )
    ledger = statements(document)["AttemptLedger"]
    assert ledger["Resource"] == [f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/ledger-prod"]
    assert set(ledger["Action"]) == {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:BatchGetItem",
        "dynamodb:UpdateItem",
    }


def test_allow_any_target_is_refused(make_settings: SettingsFactory) -> None:
    """allow_any_target = true has no least-privilege policy: a clear ConfigError."""
    settings = make_settings(guards={"allow_targets": [], "allow_any_target": True})
    with pytest.raises(ConfigError, match="least-privilege policy cannot be derived"):
        policy_document(settings, account=ACCOUNT, region=REGION)


def test_character_class_globs_are_refused(make_settings: SettingsFactory) -> None:
    """`[...]` has no IAM spelling: refused, never widened to `*`."""
    settings = make_settings(guards={"allow_targets": [f"arn:aws:sns:{REGION}:{ACCOUNT}:t[12]"]})
    with pytest.raises(ConfigError, match="cannot express"):
        policy_document(settings, account=ACCOUNT, region=REGION)


def test_bad_account_and_region_are_refused(make_settings: SettingsFactory) -> None:
    """A mistyped --account or --region is an error, not a policy for a nonexistent scope."""
    with pytest.raises(ConfigError, match="--account") as raised:
        policy_document(make_settings(), account="12345", region="eu_west_1")
    assert any("--region" in problem for problem in raised.value.problems)


def iam_policy_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str, str]:
    for name in ("RETRYD_CONFIG", "RETRYD_LEDGER__BACKEND", "RETRYD_GUARDS__ALLOW_ANY_TARGET"):
        monkeypatch.delenv(name, raising=False)
    code = main(["iam-policy", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_prints_the_document(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`retryd iam-policy` prints the same document as policy_document, as JSON, exit 0."""
    code, out, _ = iam_policy_cli(
        capsys,
        monkeypatch,
        "--config",
        str(EXAMPLE_CONFIG),
        "--account",
        ACCOUNT,
        "--region",
        REGION,
    )
    assert code == 0
    assert json.loads(out) == example_policy()


def test_cli_takes_the_partition_from_the_region(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--region cn-north-1 without --partition gives aws-cn ARNs."""
    code, out, _ = iam_policy_cli(
        capsys, monkeypatch, "--config", str(EXAMPLE_CONFIG), "--region", "cn-north-1"
    )
    assert code == 0
    assert "arn:aws-cn:sqs:cn-north-1:*:retry-*" in out


def test_cli_refuses_allow_any_target(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """allow_any_target: exit 2, nothing on stdout, the reason on stderr."""
    config = tmp_path / "retryd.toml"
    config.write_text('[discovery]\nqueues = ["dlq"]\n\n[guards]\nallow_any_target = true\n')
    code, out, err = iam_policy_cli(capsys, monkeypatch, "--config", str(config))
    assert code == 2
    assert out == ""
    assert "least-privilege policy cannot be derived" in err


IAM_PAGE = ROOT / "docs" / "operations" / "iam-policy.md"
IAM_SECTION = "\n## The policy for the example configuration\n"


def docs_iam_json() -> dict[str, Any]:
    """The JSON block of the IAM page's section on the example configuration."""
    text = IAM_PAGE.read_text()
    assert IAM_SECTION in text, "the IAM page has no section on the example configuration"
    section = re.split(r"\n##+ ", text.split(IAM_SECTION, 1)[1], maxsplit=1)[0]
    match = re.search(r"```json\n(.*?)```", section, re.DOTALL)
    assert match, "the IAM page's example section has no ```json block"
    loaded: dict[str, Any] = json.loads(match.group(1))
    return loaded


def test_docs_iam_section_is_the_generated_policy(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The IAM page's policy is exactly `retryd iam-policy` for the example config."""
    _, out, _ = iam_policy_cli(
        capsys,
        monkeypatch,
        "--config",
        str(EXAMPLE_CONFIG),
        "--account",
        ACCOUNT,
        "--region",
        REGION,
    )
    assert docs_iam_json() == json.loads(out)


def test_the_operator_role_adds_taking_parked_copies_back_and_nothing_else(
    make_settings: SettingsFactory,
) -> None:
    """--role operator: the daemon's statements, plus receive/hide/delete on parking only."""
    settings = make_settings()
    daemon = policy_document(settings, account=ACCOUNT, region=REGION)
    operator = policy_document(settings, account=ACCOUNT, region=REGION, role="operator")
    assert operator["Statement"][: len(daemon["Statement"])] == daemon["Statement"]
    [extra] = operator["Statement"][len(daemon["Statement"]) :]
    assert extra["Sid"] == "RedriveParkedMessages"
    assert extra["Resource"] == [f"arn:aws:sqs:{REGION}:{ACCOUNT}:retryd-parking"]
    assert sorted(extra["Action"]) == [
        "sqs:ChangeMessageVisibility",
        "sqs:DeleteMessage",
        "sqs:ReceiveMessage",
    ]
    assert all("retryd-parking" not in arn for arn in granted(daemon, "sqs:ReceiveMessage"))


def test_an_unknown_role_is_refused(make_settings: SettingsFactory) -> None:
    """A role that is neither daemon nor operator is a configuration error naming it."""
    with pytest.raises(ConfigError, match="--role"):
        policy_document(make_settings(), account=None, region=None, role="admin")


def test_the_iam_policy_page_shows_every_ledger_action_the_command_grants(
    make_settings: SettingsFactory,
) -> None:
    """docs/operations/iam-policy.md's AttemptLedger statement lists exactly the actions the
    command grants on the ledger table (it once left out dynamodb:UpdateItem)."""
    document = policy_document(
        make_settings(ledger={"backend": "dynamodb"}), account=ACCOUNT, region=REGION
    )
    page = (Path(__file__).resolve().parents[2] / "docs/operations/iam-policy.md").read_text()
    statement = page[page.index('"Sid": "AttemptLedger"') :]
    shown = re.findall(r'"(dynamodb:\w+)"', statement[: statement.index("]")])
    assert shown == statements(document)["AttemptLedger"]["Action"]


def test_the_console_role_is_the_operators_as_it_runs_redrive_jobs(
    make_settings: SettingsFactory,
) -> None:
    """--role console: exactly the operator's statements (its redrive jobs need all of them)."""
    settings = make_settings(ledger={"backend": "dynamodb", "table": "retryd-ledger"})
    operator = policy_document(settings, account=ACCOUNT, region=REGION, role="operator")
    console = policy_document(settings, account=ACCOUNT, region=REGION, role="console")
    assert console == operator
    assert granted(console, "sqs:GetQueueAttributes")
    assert granted(console, "dynamodb:PutItem")
