"""`retryd iam-policy --kms`: KMS actions on exactly the keys of encrypted queues and topics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from retryd.commands.cli import main
from retryd.iam.kms_keys import is_alias, key_arn
from tests.faults import Fault
from tests.operator_helpers import (
    CONFIG,
    PARKING,
    config_file,
)
from tests.world import ACCOUNT, REGION, World

QUEUE_ARN = f"arn:aws:sqs:{REGION}:{ACCOUNT}:retry-orders"

pytestmark = pytest.mark.usefixtures("keep_logging_config")


def statements(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {statement["Sid"]: statement for statement in document["Statement"]}


def iam_policy(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, dict[str, Any], str]:
    for name in ("RETRYD_CONFIG", "RETRYD_LEDGER__BACKEND"):
        monkeypatch.delenv(name, raising=False)
    code = main(["iam-policy", *args])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def test_a_key_id_is_made_an_arn_in_the_resources_account_and_region() -> None:
    """A bare key id: its ARN in the queue's account and Region; a key ARN: as is."""
    assert key_arn("1234abcd", QUEUE_ARN) == f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd"
    arn = f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/1234abcd"
    assert key_arn(arn, QUEUE_ARN) == arn


@given(name=st.from_regex(r"[A-Za-z0-9/_-]{1,40}", fullmatch=True))
def test_an_alias_is_never_guessed(name: str) -> None:
    """Alias names and alias ARNs need a lookup: key_arn gives None for them."""
    for alias in (f"alias/{name}", f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/{name}"):
        assert is_alias(alias)
        assert key_arn(alias, QUEUE_ARN) is None


def test_kms_grants_decrypt_on_dlq_keys_and_encrypt_on_target_and_parking_keys(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DLQ key (by id) -> kms:Decrypt; parking key (by alias, resolved) and topic key ->
    GenerateDataKey + Decrypt; unencrypted queues add nothing; an unknown alias is named."""
    kms = world.client("kms")
    dlq_key = kms.create_key()["KeyMetadata"]
    parking_key = kms.create_key()["KeyMetadata"]
    topic_key = kms.create_key()["KeyMetadata"]
    kms.create_alias(AliasName="alias/parking", TargetKeyId=parking_key["KeyId"])
    world.create_queue("retry-orders", KmsMasterKeyId=dlq_key["KeyId"])
    world.create_queue("retry-plain")
    world.create_queue(PARKING, KmsMasterKeyId="alias/parking")
    world.create_queue("orders-target", KmsMasterKeyId="alias/gone")
    world.client("sns").create_topic(
        Name="receipts", Attributes={"KmsMasterKeyId": topic_key["Arn"]}
    )

    code, document, err = iam_policy(
        capsys, monkeypatch, "--config", config_file(tmp_path), "--kms"
    )

    assert code == 0
    found = statements(document)
    assert found["DecryptDeadLetters"]["Action"] == ["kms:Decrypt"]
    assert found["DecryptDeadLetters"]["Resource"] == [dlq_key["Arn"]]
    assert found["EncryptResubmissions"]["Action"] == ["kms:GenerateDataKey", "kms:Decrypt"]
    assert sorted(found["EncryptResubmissions"]["Resource"]) == sorted(
        [parking_key["Arn"], topic_key["Arn"]]
    )
    assert "alias/gone" in err
    assert world.queue_arn("orders-target") in err


def test_without_kms_no_aws_call_and_no_kms_statement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default stays offline: no KMS statement, whatever the queues are."""
    code, document, _ = iam_policy(capsys, monkeypatch, "--config", config_file(tmp_path))
    assert code == 0
    assert not {"DecryptDeadLetters", "EncryptResubmissions"} & set(statements(document))


MEMBER = "222222222222"
MEMBER_ROLE = f"arn:aws:iam::{MEMBER}:role/retryd-member"


def member_client(world: World, service: str, region: str = REGION) -> Any:
    """A client in the member account: moto gives assumed-role credentials the role's account."""
    credentials = world.client("sts").assume_role(RoleArn=MEMBER_ROLE, RoleSessionName="test")[
        "Credentials"
    ]
    return boto3.client(
        service,
        endpoint_url=world.url,
        region_name=region,
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
    )


def org_output(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    accounts: str,
) -> tuple[int, dict[str, Any], str]:
    for name in ("RETRYD_CONFIG", "RETRYD_LEDGER__BACKEND"):
        monkeypatch.delenv(name, raising=False)
    config = config_file(tmp_path, accounts)
    code = main(["iam-policy", "--config", config, "--kms", "--output", "json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out else {}, captured.err


HOME_ENTRY = f"""
[[accounts]]
account_id = "{ACCOUNT}"
regions = ["{REGION}"]
"""
MEMBER_ENTRY = f"""
[[accounts]]
account_id = "{MEMBER}"
regions = ["{REGION}"]
role_arn = "{MEMBER_ROLE}"
"""


def test_kms_with_accounts_looks_keys_up_in_the_home_place(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """[[accounts]] with the home account only: its DLQ's key lands in its policy."""
    key = world.client("kms").create_key()["KeyMetadata"]
    world.create_queue("retry-orders", KmsMasterKeyId=key["KeyId"])
    world.create_queue(PARKING)

    code, documents, _ = org_output(capsys, monkeypatch, tmp_path, HOME_ENTRY)

    assert code == 0
    assert list(documents) == [ACCOUNT]
    found = statements(documents[ACCOUNT]["policy"])
    assert found["DecryptDeadLetters"]["Resource"] == [key["Arn"]]


def test_kms_with_accounts_gives_each_account_the_keys_of_its_own_places(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The member's DLQ key (looked up through AssumeRole, in the member account) goes to the
    member role only; the home DLQ's key to the home role only."""
    home_key = world.client("kms").create_key()["KeyMetadata"]
    world.create_queue("retry-orders", KmsMasterKeyId=home_key["KeyId"])
    world.create_queue(PARKING)
    member_kms = member_client(world, "kms")
    member_key = member_kms.create_key()["KeyMetadata"]
    assert f":{MEMBER}:" in member_key["Arn"]
    member_sqs = member_client(world, "sqs")
    member_sqs.create_queue(
        QueueName="retry-billing", Attributes={"KmsMasterKeyId": member_key["KeyId"]}
    )
    member_sqs.create_queue(QueueName=PARKING)

    code, documents, err = org_output(capsys, monkeypatch, tmp_path, HOME_ENTRY + MEMBER_ENTRY)

    assert code == 0, err
    home = statements(documents[ACCOUNT]["policy"])
    member = statements(documents[MEMBER]["policy"])
    assert home["DecryptDeadLetters"]["Resource"] == [home_key["Arn"]]
    assert member["DecryptDeadLetters"]["Resource"] == [member_key["Arn"]]


def test_kms_with_a_place_it_cannot_reach_names_it_and_goes_on(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A member whose role cannot be assumed is a warning naming the account; home still done."""
    key = world.client("kms").create_key()["KeyMetadata"]
    world.create_queue("retry-orders", KmsMasterKeyId=key["KeyId"])
    world.create_queue(PARKING)
    world.faults.add(Fault("sts", "AssumeRole", code="AccessDenied"))

    code, documents, err = org_output(capsys, monkeypatch, tmp_path, HOME_ENTRY + MEMBER_ENTRY)

    assert code == 0
    assert statements(documents[ACCOUNT]["policy"])["DecryptDeadLetters"]["Resource"] == [
        key["Arn"]
    ]
    assert "DecryptDeadLetters" not in statements(documents[MEMBER]["policy"])
    assert f"account {MEMBER} in {REGION}: keys not looked up" in err
    assert "AccessDenied" in err


OTHER_REGION = "eu-west-1"


def config_with_targets(tmp_path: Path, allow: list[str], extra: str) -> str:
    """The operator config with `allow` as guards.allow_targets, plus `extra` TOML."""
    line = f'allow_targets = ["arn:aws:*:{REGION}:{ACCOUNT}:*"]'
    assert line in CONFIG
    path = tmp_path / "retryd.toml"
    path.write_text(CONFIG.replace(line, f"allow_targets = {json.dumps(allow)}") + extra)
    return str(path)


def test_kms_looks_a_targets_key_up_in_the_place_retryd_sends_to_it_from(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Targets in a region their account does not list are sent to with that account's role in
    their own region: each key is looked up there and granted to that role, and only to it."""
    world.create_queue("retry-orders")
    world.create_queue(PARKING)
    member_sqs = member_client(world, "sqs")
    member_sqs.create_queue(QueueName="retry-billing")
    member_sqs.create_queue(QueueName=PARKING)
    home_kms = boto3.client(
        "kms",
        endpoint_url=world.url,
        region_name=OTHER_REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    home_key = home_kms.create_key()["KeyMetadata"]
    boto3.client(
        "sqs",
        endpoint_url=world.url,
        region_name=OTHER_REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_queue(QueueName="orders-home", Attributes={"KmsMasterKeyId": home_key["KeyId"]})
    member_key = member_client(world, "kms", OTHER_REGION).create_key()["KeyMetadata"]
    topic = member_client(world, "sns", OTHER_REGION).create_topic(
        Name="receipts", Attributes={"KmsMasterKeyId": member_key["Arn"]}
    )["TopicArn"]
    assert f":{OTHER_REGION}:{MEMBER}:" in topic
    allow = [
        f"arn:aws:sqs:{OTHER_REGION}:{ACCOUNT}:orders-*",
        f"arn:aws:sns:{OTHER_REGION}:{MEMBER}:receipts",
    ]
    config = config_with_targets(tmp_path, allow, HOME_ENTRY + MEMBER_ENTRY)
    for name in ("RETRYD_CONFIG", "RETRYD_LEDGER__BACKEND"):
        monkeypatch.delenv(name, raising=False)

    code = main(["iam-policy", "--config", config, "--kms", "--output", "json"])
    captured = capsys.readouterr()

    assert code == 0, captured.err
    documents = json.loads(captured.out)
    home = statements(documents[ACCOUNT]["policy"])
    member = statements(documents[MEMBER]["policy"])
    assert home["EncryptResubmissions"]["Resource"] == [home_key["Arn"]]
    assert member["EncryptResubmissions"]["Resource"] == [member_key["Arn"]]


def test_kms_reads_a_dlq_url_naming_no_region_in_its_one_place_only(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A DLQ given by an emulator's URL is read in its account's first listed region only: a
    queue of the same name in the account's second region adds no key."""
    first_key = world.client("kms").create_key()["KeyMetadata"]
    url = world.create_queue("legacy-dlq", KmsMasterKeyId=first_key["KeyId"])
    world.create_queue(PARKING)
    keys = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    other = {"endpoint_url": world.url, "region_name": OTHER_REGION, **keys}
    second_key = boto3.client("kms", **other).create_key()["KeyMetadata"]
    other_sqs = boto3.client("sqs", **other)
    other_sqs.create_queue(
        QueueName="legacy-dlq", Attributes={"KmsMasterKeyId": second_key["KeyId"]}
    )
    other_sqs.create_queue(QueueName=PARKING)
    assert "amazonaws.com" not in url
    two_regions = f"""
[[accounts]]
account_id = "{ACCOUNT}"
regions = ["{REGION}", "{OTHER_REGION}"]
"""
    config = config_with_targets(
        tmp_path, [f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:*"], two_regions
    )
    path = Path(config)
    path.write_text(
        path.read_text().replace(
            'queue_prefixes = ["retry-"]', f'queue_prefixes = []\nqueues = ["{url}"]'
        )
    )
    for name in ("RETRYD_CONFIG", "RETRYD_LEDGER__BACKEND"):
        monkeypatch.delenv(name, raising=False)

    code = main(["iam-policy", "--config", config, "--kms", "--output", "json"])
    captured = capsys.readouterr()

    assert code == 0, captured.err
    home = statements(json.loads(captured.out)[ACCOUNT]["policy"])
    assert home["DecryptDeadLetters"]["Resource"] == [first_key["Arn"]]
