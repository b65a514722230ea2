"""'Show messages' on the moto server: operator only, peeked and handed back, audited, by group."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio

from retryd.aws import open_clients
from retryd.console.auth import TokenAuth
from retryd.console.context import templates
from retryd.control.audit import latest
from retryd.control.memory import MemoryControlStore, MemoryDocs
from retryd.control.readmodel import DlqView, record_dlq
from retryd.ledger import open_ledger
from retryd.ledger.base import Claim
from retryd.settings import Settings
from tests.conftest import SettingsFactory
from tests.console.harness import (
    OPERATOR_TOKEN,
    SAME_ORIGIN,
    VIEWER_TOKEN,
    Caller,
    bearer,
    console_for,
    serving,
)
from tests.world import World

DLQ = "retry-orders"
LAMBDA_ERROR = {
    "ErrorCode": {"DataType": "String", "StringValue": "500"},
    "ErrorMessage": {"DataType": "String", "StringValue": "Timeout after 3000 ms"},
}


def _settings(make_settings: SettingsFactory, tmp_path: Path) -> Settings:
    return make_settings(
        console={"auth": "token", "viewer_token": VIEWER_TOKEN, "operator_token": OPERATOR_TOKEN},
        ledger={"backend": "sqlite", "path": str(tmp_path / "ledger.sqlite3")},
    )


def _world(world: World) -> dict[str, str]:
    """retry-orders with two failures of one kind and one of another; their ids by body."""
    world.create_queue(DLQ)
    world.create_queue("retryd-parking")
    return {
        "order-1": world.send(DLQ, {"order": 1, "note": "<script>x</script>"}, LAMBDA_ERROR),
        "order-2": world.send(DLQ, {"order": 2}, LAMBDA_ERROR),
        "plain": world.send(
            DLQ,
            "not json at all",
            {"retryd.attempt": {"DataType": "Number", "StringValue": "2"}},
        ),
    }


def _recorded(world: World) -> MemoryControlStore:
    """A store where the daemon has recorded retry-orders (the console shows only those)."""
    store = MemoryControlStore(MemoryDocs())
    view = DlqView(DLQ, world.queue_url(DLQ), world.queue_arn(DLQ), time.time(), [], [], None, 3)
    anyio.run(record_dlq, store, view)
    return store


def _with_console(
    settings: Settings,
    store: MemoryControlStore,
    calls: list[tuple[str, str, dict[str, str]]],
    site: str = "same-origin",
) -> list[Any]:
    """Each (token, path, form) call's reply (sent with `Sec-Fetch-Site: site`), made against
    a console with AWS."""
    replies = []
    with anyio.from_thread.start_blocking_portal() as portal:
        clients = portal.wrap_async_context_manager(open_clients(settings.aws))
        with (
            clients as opened,
            serving(
                console_for(settings, store, opened), TokenAuth(settings.console), portal
            ) as base,
        ):
            for token, path, form in calls:
                call = Caller(base, {**SAME_ORIGIN, "Sec-Fetch-Site": site, **bearer(token)})
                replies.append(call(path, "POST", form=form) if form else call(path, "POST"))
    return replies


def test_an_operator_sees_every_message_handed_back_and_the_read_is_audited(
    world: World, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Bodies, attributes, error and stamps come back; messages stay visible; audit names who."""
    settings = _settings(make_settings, tmp_path)
    sent = _world(world)
    store = _recorded(world)
    (reply,) = _with_console(settings, store, [(OPERATOR_TOKEN, f"/api/queues/{DLQ}/messages", {})])
    assert reply.status == 200, reply.text
    doc = reply.json()
    by_id = {m["message_id"]: m for m in doc["messages"]}
    assert set(by_id) == set(sent.values())
    first = by_id[sent["order-1"]]
    assert json.loads(first["body"]) == {"order": 1, "note": "<script>x</script>"}
    assert first["body_json"] is not None
    assert "\n" in first["body_json"]
    assert first["attributes"]["ErrorMessage"] == "Timeout after 3000 ms"
    assert first["error"] == "500: Timeout after <n> ms"
    assert first["receive_count"] == 1
    plain = by_id[sent["plain"]]
    assert plain["body_json"] is None
    assert plain["stamps"] == {"retryd.attempt": "2"}
    assert "retryd.attempt" not in plain["attributes"]
    # Handed back at once: every message is visible again, and still there.
    world.wait_visible([DLQ], timeout_s=5)
    assert world.depth(DLQ) == 3
    records = anyio.run(latest, store, 100)
    shown = [r for r in records if r.action == "show-messages"]
    assert len(shown) == 1
    assert shown[0].person == "operator-token"
    assert shown[0].count == 3
    assert shown[0].what == {"queue": DLQ, "group": None}


def test_a_group_shows_only_its_messages_with_the_ledgers_attempts(
    world: World, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """`group=` keeps that group's messages; a key the ledger knows shows its attempts."""
    settings = _settings(make_settings, tmp_path)
    sent = _world(world)
    store = _recorded(world)
    (everything,) = _with_console(
        settings, store, [(OPERATOR_TOKEN, f"/api/queues/{DLQ}/messages", {})]
    )
    by_id = {m["message_id"]: m for m in everything.json()["messages"]}
    group = by_id[sent["order-1"]]["group"]
    assert by_id[sent["order-2"]]["group"] == group
    assert by_id[sent["plain"]]["group"] != group
    assert by_id[sent["order-1"]]["ledger"] is None
    key = by_id[sent["order-1"]]["key"]

    async def tried_once() -> None:
        async with open_ledger(settings.ledger, None) as ledger:
            claim = Claim(key, sent["order-1"], 1, None)
            await ledger.begin([claim])
            assert await ledger.commit([claim], time.time()) == [True]

    anyio.run(tried_once)
    world.wait_visible([DLQ], timeout_s=5)
    (grouped,) = _with_console(
        settings, store, [(OPERATOR_TOKEN, f"/api/queues/{DLQ}/messages?group={group}", {})]
    )
    messages = grouped.json()["messages"]
    assert sorted(m["message_id"] for m in messages) == sorted([sent["order-1"], sent["order-2"]])
    first = next(m for m in messages if m["message_id"] == sent["order-1"])
    assert first["ledger"]["attempts"] == 1
    assert first["receive_count"] == 2


def test_a_viewer_is_refused_and_receives_nothing(
    world: World, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """403 for a viewer, on the API and the page; no message was received (counts stay at 0)."""
    settings = _settings(make_settings, tmp_path)
    _world(world)
    store = _recorded(world)
    replies = _with_console(
        settings,
        store,
        [
            (VIEWER_TOKEN, f"/api/queues/{DLQ}/messages", {}),
            (VIEWER_TOKEN, f"/queues/{DLQ}/messages", {"group": "x"}),
        ],
    )
    assert [r.status for r in replies] == [403, 403]
    drained = world.drain(DLQ)
    assert [m["Attributes"]["ApproximateReceiveCount"] for m in drained] == ["1", "1", "1"]
    assert anyio.run(latest, store, 100) == []


def test_only_a_dlq_the_daemon_records_can_be_read(
    world: World, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """The parking queue, or any queue the read model does not hold, answers 404 unread."""
    settings = _settings(make_settings, tmp_path)
    _world(world)
    world.send("retryd-parking", "parked body")
    store = _recorded(world)
    (reply,) = _with_console(
        settings, store, [(OPERATOR_TOKEN, "/api/queues/retryd-parking/messages", {})]
    )
    assert reply.status == 404, reply.text
    assert "parked body" not in reply.text
    (parked,) = world.drain("retryd-parking")
    assert parked["Attributes"]["ApproximateReceiveCount"] == "1"


def test_only_an_operator_sees_the_button_and_the_page_says_it_receives(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A group's page: the 'Show messages' form for an operator, none for a viewer; both warned."""
    settings = _settings(make_settings, tmp_path)
    store = MemoryControlStore(MemoryDocs())
    group = {
        "id": "g1",
        "target": "arn:aws:sqs:us-east-1:123456789012:orders",
        "signature": "500: Timeout",
        "count": 2,
        "oldest": None,
        "newest": None,
        "example_message_id": "m",
        "source_attempts_max": None,
    }
    view = DlqView(DLQ, "https://sqs/q", "arn:q", time.time(), [group])
    anyio.run(record_dlq, store, view)
    with serving(console_for(settings, store), TokenAuth(settings.console)) as base:
        pages = {
            token: Caller(base, bearer(token))("/groups/g1")
            for token in (VIEWER_TOKEN, OPERATOR_TOKEN)
        }
    assert pages[OPERATOR_TOKEN].text.count('class="show-messages"') == 1
    assert f'action="/queues/{DLQ}/messages"' in pages[OPERATOR_TOKEN].text
    assert "show-messages" not in pages[VIEWER_TOKEN].text
    for page in pages.values():
        assert page.status == 200
        assert "receive count goes up by one" in page.text


def test_an_unreadable_ledger_still_shows_the_messages_and_audits_the_read(
    world: World, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """The bodies were received: shown without history, the ledger's failure said, and audited."""
    settings = make_settings(
        console={"auth": "token", "viewer_token": VIEWER_TOKEN, "operator_token": OPERATOR_TOKEN},
        # A directory is no database: every open of this ledger fails.
        ledger={"backend": "sqlite", "path": str(tmp_path)},
    )
    _world(world)
    store = _recorded(world)
    (reply,) = _with_console(settings, store, [(OPERATOR_TOKEN, f"/api/queues/{DLQ}/messages", {})])
    assert reply.status == 200, reply.text
    doc = reply.json()
    assert len(doc["messages"]) == 3
    assert all(m["ledger"] is None for m in doc["messages"])
    assert any("attempt history unavailable" in e for e in doc["errors"])
    (audited,) = anyio.run(latest, store, 100)
    assert (audited.action, audited.person, audited.count) == ("show-messages", "operator-token", 3)


def test_a_cross_site_request_from_an_operator_is_refused_and_receives_nothing(
    world: World, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """An operator's token on a cross-site POST: 403, as every action; no message received."""
    settings = _settings(make_settings, tmp_path)
    _world(world)
    store = _recorded(world)
    path = f"/api/queues/{DLQ}/messages"
    (reply,) = _with_console(settings, store, [(OPERATOR_TOKEN, path, {})], site="cross-site")
    assert reply.status == 403
    drained = world.drain(DLQ)
    assert [m["Attributes"]["ApproximateReceiveCount"] for m in drained] == ["1", "1", "1"]


def test_an_s3_sources_objects_are_shown_by_key_and_left_in_the_bucket(
    world: World, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Show messages of an S3 source (its bucket/prefix one path segment, slashes encoded as
    the group page's button encodes them): each object by its key, with its error, on the
    API and the page; nothing moved."""
    settings = _settings(make_settings, tmp_path)
    world.create_queue("retryd-parking")
    charge = world.create_function("charge")
    world.client("s3").create_bucket(Bucket="failures")
    prefix = "aws/lambda/async/charge/"
    record = {
        "requestContext": {"functionArn": charge, "condition": "RetriesExhausted"},
        "requestPayload": {"order": 1},
        "responsePayload": {"errorType": "Timeout", "errorMessage": "timed out"},
    }
    world.client("s3").put_object(
        Bucket="failures", Key=f"{prefix}a", Body=json.dumps(record).encode()
    )
    store = MemoryControlStore(MemoryDocs())
    source = f"failures/{prefix}"
    view = DlqView(source, f"s3://{source}", f"arn:aws:s3:::{source}", time.time(), [], [], None, 1)
    anyio.run(record_dlq, store, view)
    one_segment = templates().from_string("{{ q | path_part }}").render(q=source)
    assert one_segment == quote(source, safe="")
    path = f"/api/queues/{one_segment}/messages"

    page_path = f"/queues/{one_segment}/messages"
    calls = [(OPERATOR_TOKEN, path, {}), (OPERATOR_TOKEN, page_path, {"group": ""})]

    reply, page = _with_console(settings, store, calls)

    assert reply.status == 200, reply.text
    doc = reply.json()
    assert doc["queue"] == source
    (shown,) = doc["messages"]
    assert shown["message_id"] == f"{prefix}a"
    assert shown["target"] == charge
    assert shown["error"] == "Timeout: timed out"
    # The page the group's button posts to shows the same object.
    assert page.status == 200, page.text
    assert f"{prefix}a" in page.text
    listed = world.client("s3").list_objects_v2(Bucket="failures")["Contents"]
    assert [item["Key"] for item in listed] == [f"{prefix}a"]
