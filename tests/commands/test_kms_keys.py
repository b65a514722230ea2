"""`retryd iam-policy --kms`: KMS actions on exactly the keys of encrypted queues and topics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retryd.commands.cli import main
from retryd.commands.kms_keys import is_alias, key_arn
from tests.operator_helpers import (
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
