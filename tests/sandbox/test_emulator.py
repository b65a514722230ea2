"""The test harness itself: moto on a free port, and faults in each protocol's wire format."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError

from retryd.sandbox.emulator import MotoServer
from tests.faults import Fault
from tests.world import World, emulator_client


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


def test_each_server_records_only_its_own_requests_and_every_one_whole() -> None:
    """Two emulators in one process, one started recording after the other: neither loses or
    borrows an entry, and twenty concurrent 200 KB sends are twenty whole entries.

    moto's own recorder is one file per process: the second start emptied the first's
    recording, and concurrent entries could share a line."""

    with MotoServer() as first, MotoServer() as second:
        one, two = emulator_client(first.url, "sqs"), emulator_client(second.url, "sqs")
        url_one = one.create_queue(QueueName="first")["QueueUrl"]
        url_two = two.create_queue(QueueName="second")["QueueUrl"]
        first.start_recording()
        big = "x" * 200_000
        with ThreadPoolExecutor(max_workers=10) as pool:
            list(
                pool.map(
                    lambda n: one.send_message(QueueUrl=url_one, MessageBody=f"{n}{big}"), range(20)
                )
            )
        second.start_recording()
        two.send_message(QueueUrl=url_two, MessageBody="only-on-second")

        def bodies(server: MotoServer) -> list[str]:
            return [
                json.loads(base64.b64decode(entry["body"]))["MessageBody"]
                for entry in server.recording()
                if entry["headers"].get("X-Amz-Target") == "AmazonSQS.SendMessage"
            ]

        assert sorted(bodies(first)) == sorted(f"{n}{big}" for n in range(20))
        assert bodies(second) == ["only-on-second"]
        second.stop_recording()
        two.send_message(QueueUrl=url_two, MessageBody="after-stop")
        assert bodies(second) == ["only-on-second"]
