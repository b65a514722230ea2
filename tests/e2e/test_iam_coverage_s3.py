"""The policy `retryd iam-policy` prints for S3 sources allows what draining them calls, no more.

A bucket with Lambda failure records beside an SQS DLQ, on the moto server; `inspect`,
`plan` and `once` (and, for the operator's policy, `redrive`) run with their clients
observed (tests/iam_helpers.py), and each call is judged against `policy_document` for
the same settings, conditions included.
"""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import pytest

import retryd.commands.redrive
import retryd.places
from retryd.aws import AwsClients
from retryd.commands.redrive import RedriveRequest, run_redrive
from retryd.iam.policy import policy_document
from retryd.settings import AwsSettings, Settings
from tests.conftest import SettingsFactory
from tests.iam_helpers import (
    CallLog,
    IamRequest,
    allowing,
    iam_requests,
    inspect_plan_once,
    recording_clients,
    statements,
)
from tests.world import ACCOUNT, REGION, World, envelope

BUCKET = "lambda-failures"
PREFIX = "aws/lambda/async/charge/"


def _world(world: World) -> None:
    world.create_queue("retryd-parking")
    world.create_queue("retry-work")
    function_arn = world.create_function("charge")
    world.send("retry-work", envelope("lambda", function_arn, {"order": "sqs"}))
    s3 = world.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    record = {
        "requestContext": {"functionArn": function_arn, "condition": "RetriesExhausted"},
        "requestPayload": {"order": 1},
    }
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}2026/12/07/a", Body=json.dumps(record).encode())
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}2026/12/07/b", Body=b"not a record")


def _record(
    world: World, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> list[tuple[Any, IamRequest]]:
    _world(world)
    log = CallLog()

    def observed(aws: AwsSettings) -> AbstractAsyncContextManager[AwsClients]:
        return recording_clients(aws, log)

    monkeypatch.setattr(retryd.places, "open_clients", observed)
    report = anyio.run(lambda: inspect_plan_once(settings, log, max_messages=10))
    assert report.outcomes == {"resubmitted": 2, "parked": 1}
    return [(call, request) for call in log.calls for request in iam_requests(call, ACCOUNT)]


@pytest.mark.parametrize("settle", ["delete", "tag"])
def test_the_s3_policy_allows_every_call_and_each_s3_statement_is_needed(
    world: World, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch, settle: str
) -> None:
    """Every call is allowed; without either S3 statement an S3 call is denied."""
    settings = make_settings(
        discovery={"s3_sources": [f"{BUCKET}/{PREFIX}"], "s3_settle": settle},
        guards={"allow_targets": [f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:charge"]},
    )
    requests = _record(world, monkeypatch, settings)
    document = policy_document(settings, account=ACCOUNT, region=REGION)

    denied = [f"{c.operation}: {r}" for c, r in requests if not allowing(document, r)]
    assert not denied
    s3_actions = sorted({r.action for _, r in requests if r.action.startswith("s3:")})
    settles = {"delete": "s3:DeleteObject", "tag": "s3:PutObjectTagging"}[settle]
    assert s3_actions == sorted(["s3:ListBucket", "s3:GetObject", settles])
    for sid in ("ListS3FailureRecords1", "SettleS3FailureRecords"):
        others = [s for s in statements(document) if s["Sid"] != sid]
        without = {**document, "Statement": others}
        assert any(not allowing(without, r) for _, r in requests), sid


def test_listing_outside_the_prefix_or_reading_another_bucket_is_denied(
    make_settings: SettingsFactory,
) -> None:
    """The prefix condition and the object ARNs confine retryd to the named prefix."""
    settings = make_settings(discovery={"s3_sources": [f"{BUCKET}/{PREFIX}"]})
    document = policy_document(settings, account=ACCOUNT, region=REGION)
    bucket = f"arn:aws:s3:::{BUCKET}"
    assert allowing(document, IamRequest("s3:ListBucket", bucket, (("s3:prefix", PREFIX),)))
    assert not allowing(document, IamRequest("s3:ListBucket", bucket, (("s3:prefix", "apps/"),)))
    assert not allowing(document, IamRequest("s3:ListBucket", bucket))
    assert not allowing(document, IamRequest("s3:GetObject", f"{bucket}/apps/secret"))
    assert not allowing(document, IamRequest("s3:GetObject", f"arn:aws:s3:::other/{PREFIX}x"))
    assert not allowing(document, IamRequest("s3:PutObject", f"{bucket}/{PREFIX}x"))


def test_a_redrive_from_an_s3_source_is_allowed_by_the_operators_policy(
    world: World, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`retryd redrive --from bucket/prefix`, planned and executed, makes only calls the
    operator's policy allows: the same three S3 actions as the daemon's, on the prefix."""
    _world(world)
    log = CallLog()

    def observed(aws: AwsSettings) -> AbstractAsyncContextManager[AwsClients]:
        return recording_clients(aws, log)

    for module in (retryd.places, retryd.commands.redrive):
        monkeypatch.setattr(module, "open_clients", observed)
    settings = make_settings(
        discovery={"s3_sources": [f"{BUCKET}/{PREFIX}"]},
        guards={"allow_targets": [f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:charge"]},
    )
    source = [f"{BUCKET}/{PREFIX}"]

    async def plan_then_execute() -> int:
        assert await run_redrive(settings, RedriveRequest(sources=source, output="json")) == 0
        request = RedriveRequest(
            sources=source, targets=["*"], execute=True, ramp="none", output="json"
        )
        return await run_redrive(settings, request)

    assert anyio.run(plan_then_execute) == 0
    listed = world.client("s3").list_objects_v2(Bucket=BUCKET).get("Contents", [])
    # The record went back to its function and was deleted; the malformed object is not
    # selected by --target (it resolves to none) and stays.
    assert [item["Key"] for item in listed] == [f"{PREFIX}2026/12/07/b"]
    requests = [r for call in log.calls for r in iam_requests(call, ACCOUNT)]
    document = policy_document(settings, account=ACCOUNT, region=REGION, role="operator")
    denied = [str(r) for r in requests if not allowing(document, r)]
    assert not denied
    s3_actions = sorted({r.action for r in requests if r.action.startswith("s3:")})
    assert s3_actions == ["s3:DeleteObject", "s3:GetObject", "s3:ListBucket"]
