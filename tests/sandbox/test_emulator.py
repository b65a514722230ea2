"""The test harness itself: moto on a free port, and faults in each protocol's wire format."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from tests.faults import Fault
from tests.world import World


def test_fault_is_answered_in_json_protocol_and_then_lifts(world: World) -> None:
    """An injected SQS fault reaches boto3 as that error code, only for its count."""
    world.create_queue("retry-a")
    world.faults.add(Fault("sqs", "SendMessage", code="AWS.SimpleQueueService.Throttled", times=1))
    with pytest.raises(ClientError) as raised:
        world.send("retry-a", "x")
    assert raised.value.response["Error"]["Code"] == "AWS.SimpleQueueService.Throttled"
    world.send("retry-a", "y")
    assert [m["Body"] for m in world.drain("retry-a")] == ["y"]


def test_fault_in_query_and_rest_protocols(world: World) -> None:
    """SNS (query) and Lambda (REST-JSON) faults parse as the injected codes."""
    topic, _ = world.create_topic_with_spy("t")
    world.create_function("fn")
    world.faults.add(Fault("sns", "Publish", code="InternalError", status=500))
    world.faults.add(Fault("lambda", "Invoke", code="TooManyRequestsException", status=429))
    with pytest.raises(ClientError) as sns_error:
        world.client("sns").publish(TopicArn=topic, Message="m")
    assert sns_error.value.response["Error"]["Code"] == "InternalError"
    with pytest.raises(ClientError) as lambda_error:
        world.client("lambda").invoke(FunctionName="fn", InvocationType="Event", Payload=b"{}")
    assert lambda_error.value.response["Error"]["Code"] == "TooManyRequestsException"
