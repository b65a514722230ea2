"""The console in a real browser (Debian's chromium): counts, actions, roles, hostile input."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from retryd.aws import open_clients
from retryd.commands.cli import main
from retryd.console.auth import NoAuth, TokenAuth
from retryd.control.audit import record
from retryd.control.jobs import JobState, JobStore, RedriveJob
from retryd.control.memory import MemoryControlStore, MemoryDocs
from retryd.control.pauses import add_pause
from retryd.control.readmodel import (
    DlqView,
    ParkedCopy,
    parked_bucket,
    record_dlq,
    record_parked,
)
from retryd.control.store import ControlStore
from retryd.sandbox.world import SANDBOX_CONFIG_TOML, build_world, sandbox_settings
from retryd.settings import Settings
from tests.conftest import SettingsFactory
from tests.console.browser import chromium, screenshot, watched
from tests.console.harness import (
    CALLER,
    OPERATOR_TOKEN,
    SAME_ORIGIN,
    VIEWER_TOKEN,
    Caller,
    bearer,
    console_for,
    serving,
)
from tests.world import World

pytestmark = pytest.mark.slow

HOSTILE = [
    "<script>window.__pwned=1;alert(1)</script>",
    '<img src=x onerror="window.__pwned=2;alert(2)">',
    "javascript:window.__pwned=3",
    "</textarea><script>window.__pwned=4</script>",
    '"}\'><svg onload="window.__pwned=5">{"a":"',
    "bad bytes \udcff\udcfe end",
]
BIG = "A" * 1_048_576 + "<script>window.__pwned=6</script>"
EVIL = " ".join(HOSTILE)


async def _hostile_world(store: ControlStore) -> str:
    """Every field the console renders carries hostile text; the job's id to visit."""
    now_s = time.time()
    group = {
        "id": HOSTILE[2],
        "target": EVIL,
        "signature": EVIL,
        "count": 3,
        "oldest": HOSTILE[0],
        "newest": HOSTILE[1],
        "example_message_id": EVIL,
        "source_attempts_max": None,
    }
    await record_dlq(
        store,
        DlqView(EVIL, "https://sqs/" + HOSTILE[3], EVIL, now_s, [group], [{"type": EVIL}], EVIL, 3),
    )
    copy = ParkedCopy(EVIL, EVIL, EVIL, HOSTILE[2], EVIL, EVIL, EVIL, now_s, 5)
    await record_parked(store, [copy], ttl_s=86_400)
    # A 1 MiB error as an older writer might have stored it, past the recorder's clipping.
    big = {**copy.to_json(), "message_id": "big", "error": BIG}
    await store.put(parked_bucket(now_s - 3600), {"copies": [big]}, version=0, ttl_s=86_400)
    await add_pause(store, "*", reason=EVIL, by=EVIL, until_s=None)
    await record(store, who=EVIL, person=EVIL, action=EVIL, what={EVIL: BIG}, outcome=EVIL)
    job = RedriveJob("rd-evil", EVIL, {"sources": [EVIL], "selector": {"where": EVIL}}, EVIL)
    job.failures = [{"m": EVIL, "o": EVIL, "r": EVIL, "d": BIG}]
    job.stop_reason = EVIL
    job.state = JobState.STOPPED
    await JobStore(store, 86_400).save(job)
    return job.id


@pytest.fixture
def hostile_console(make_settings: SettingsFactory) -> Iterator[str]:
    store = MemoryControlStore(MemoryDocs())
    job_id = anyio.run(_hostile_world, store)
    assert job_id == "rd-evil"
    with serving(console_for(make_settings(), store), NoAuth()) as base:
        yield base


def test_hostile_input_is_shown_as_text_and_never_runs(
    hostile_console: str, tmp_path: Path
) -> None:
    """Scripts, handlers, javascript: links, breakouts, 1 MiB, bad bytes: inert text everywhere."""
    pages = [
        "/",
        "/groups/" + urllib.parse.quote(HOSTILE[2], safe=""),
        "/parking",
        "/parking?q=" + urllib.parse.quote("<script>"),
        "/pauses",
        "/jobs",
        "/jobs/rd-evil",
        "/audit",
    ]
    with chromium(tmp_path / "profile") as context:
        seen = watched(context)
        for path in pages:
            assert seen.goto(hostile_console + path) == 200, path
            seen.assert_nothing_ran()
            assert "<script>window.__pwned=1" in seen.page.inner_text("main"), path
            live: int = seen.page.evaluate(
                "document.querySelectorAll('main script, main img, main svg, main iframe').length"
            )
            assert live == 0, path
            hrefs: list[str] = seen.page.evaluate(
                "[...document.querySelectorAll('a')].map((a) => a.getAttribute('href'))"
            )
            assert all(href.startswith(("/", "?")) for href in hrefs), (path, hrefs)
        # The 1 MiB error arrived whole, as text; bad bytes were replaced, not dropped.
        seen.goto(hostile_console + "/parking")
        assert "A" * 10_000 in seen.page.inner_text("main")
        assert "bad bytes" in seen.page.inner_text("main")


def _record_inspection(store: ControlStore, document: dict[str, Any]) -> None:
    """What the daemon records after a cycle: each DLQ's failure groups, as inspect shows them."""

    async def body() -> None:
        for queue in document["queues"]:
            await record_dlq(store, DlqView.from_json({**queue, "at_s": time.time()}))

    anyio.run(body)


def test_overview_shows_the_sandbox_world_with_inspects_counts(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every group `inspect` finds in the sandbox world is on the overview, same count and depth."""
    config = tmp_path / "sandbox.toml"
    config.write_text(SANDBOX_CONFIG_TOML)
    settings: Settings = sandbox_settings()

    async def build() -> None:
        async with open_clients(settings.aws) as clients:
            await build_world(clients, 1)

    anyio.run(build)
    capsys.readouterr()
    assert main(["inspect", "--output", "json", "--config", str(config)]) in (0, 1)
    document = json.loads(capsys.readouterr().out)
    store = MemoryControlStore(MemoryDocs())
    _record_inspection(store, document)
    expected = sorted(
        (group["id"], queue["name"], str(group["count"]))
        for queue in document["queues"]
        for group in queue["groups"]
    )
    assert expected, "the sandbox world must have failure groups"

    with anyio.from_thread.start_blocking_portal() as portal:
        clients = portal.wrap_async_context_manager(open_clients(settings.aws))
        with (
            clients as opened,
            serving(console_for(settings, store, opened), NoAuth(), portal) as base,
            chromium(tmp_path / "profile") as context,
        ):
            seen = watched(context)
            assert seen.goto(base + "/") == 200
            rows: list[list[str]] = seen.page.evaluate(
                "[...document.querySelectorAll('#groups tr')].slice(1)"
                ".map((tr) => [...tr.cells].map((td) => td.innerText))"
            )
            assert sorted((r[0], r[1], r[2]) for r in rows) == expected
            depths: list[list[str]] = seen.page.evaluate(
                "[...document.querySelectorAll('#dlqs tr')].slice(1)"
                ".map((tr) => [tr.cells[0].innerText, tr.cells[1].innerText])"
            )
            assert sorted(depths) == sorted(
                [q["name"], str(q["depth"]["visible"])] for q in document["queues"]
            )
            seen.assert_nothing_ran()
            assert screenshot(seen.page, "overview").stat().st_size > 0


def test_operator_pauses_and_resumes_from_the_page_and_it_is_audited(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """The local operator pauses with the form, resumes with the button; both audited."""
    settings = make_settings()
    store = MemoryControlStore(MemoryDocs())
    target = "arn:aws:lambda:us-east-1:123456789012:function:charge"
    with (
        serving(console_for(settings, store), NoAuth()) as base,
        chromium(tmp_path / "p") as context,
    ):
        seen = watched(context)
        seen.goto(base + "/pauses")
        seen.page.fill("input[name=pattern]", target)
        seen.page.fill("input[name=reason]", "deploy in progress")
        seen.page.fill("input[name=for]", "2h")
        with seen.page.expect_navigation():
            seen.page.click("#pause-form button")
        assert seen.page.url == base + "/pauses", seen.page.content()
        assert target in seen.page.inner_text("#pauses")
        with seen.page.expect_navigation():
            seen.page.click("#pauses button")
        assert target not in seen.page.inner_text("#pauses")
        seen.goto(base + "/audit")
        rows: list[list[str]] = seen.page.evaluate(
            "[...document.querySelectorAll('#audit tr')].slice(1)"
            ".map((tr) => [...tr.cells].slice(1, 6).map((td) => td.innerText))"
        )
        assert rows == [
            ["resume", "ok", "1", "local", CALLER],
            ["pause", "ok", "1", "local", CALLER],
        ]
        seen.assert_nothing_ran()


def test_a_viewer_sees_no_action_buttons(make_settings: SettingsFactory, tmp_path: Path) -> None:
    """A viewer's token shows no form or button on pauses, a running job and the redrive page."""
    settings = make_settings(
        console={"auth": "token", "viewer_token": VIEWER_TOKEN, "operator_token": OPERATOR_TOKEN}
    )
    store = MemoryControlStore(MemoryDocs())

    async def fill() -> None:
        await add_pause(store, "*", reason="incident", by="ana", until_s=None)
        await JobStore(store, 86_400).save(
            RedriveJob("rd-1", "dlq", {"sources": ["retry-a"]}, "ana")
        )

    anyio.run(fill)
    with serving(console_for(settings, store), TokenAuth(settings.console)) as base:
        for token, buttons in ((VIEWER_TOKEN, 0), (OPERATOR_TOKEN, 1)):
            with chromium(tmp_path / token[:1], bearer(token)) as context:
                seen = watched(context)
                for path in ("/pauses", "/jobs/rd-1", "/redrive"):
                    seen.goto(base + path)
                    found: int = seen.page.evaluate(
                        "document.querySelectorAll('main button').length"
                    )
                    forms: int = seen.page.evaluate(
                        "document.querySelectorAll('main form[method=post]').length"
                    )
                    assert (found > 0, forms > 0) == (bool(buttons), bool(buttons)), (
                        token[:1],
                        path,
                    )


def _orders_group(document: dict[str, Any]) -> tuple[str, int]:
    """The failure group of retry-orders whose messages go back to the `orders` queue."""
    for queue in document["queues"]:
        if queue["name"] != "retry-orders":
            continue
        for group in queue["groups"]:
            if str(group["target"]).endswith(":orders"):
                return str(group["id"]), int(group["count"])
    raise AssertionError("the sandbox world has an orders group in retry-orders")


async def _received(settings: Settings, queue: str) -> int:
    """How many distinct messages `queue` holds (each hidden while counted)."""
    seen: set[str] = set()
    async with open_clients(settings.aws) as clients:
        url = (await clients.sqs.get_queue_url(QueueName=queue))["QueueUrl"]
        while True:
            answer = await clients.sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60
            )
            messages = answer.get("Messages", [])
            if not messages:
                return len(seen)
            seen.update(message["MessageId"] for message in messages)


def test_an_operator_redrives_a_group_and_the_target_gets_what_the_plan_said(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Plan a group redrive on the page, execute it, watch it finish: the plan's count arrives."""
    config = tmp_path / "sandbox.toml"
    config.write_text(SANDBOX_CONFIG_TOML)
    settings: Settings = sandbox_settings()

    async def build() -> None:
        async with open_clients(settings.aws) as clients:
            await build_world(clients, 3)

    anyio.run(build)
    capsys.readouterr()
    assert main(["inspect", "--output", "json", "--config", str(config)]) in (0, 1)
    group_id, count = _orders_group(json.loads(capsys.readouterr().out))
    assert count == 3
    store = MemoryControlStore()
    with anyio.from_thread.start_blocking_portal() as portal:
        clients = portal.wrap_async_context_manager(open_clients(settings.aws))
        with (
            clients as opened,
            serving(console_for(settings, store, opened), NoAuth(), portal) as base,
            chromium(tmp_path / "profile") as context,
        ):
            seen = watched(context)
            query = urllib.parse.urlencode({"sources": "retry-orders", "groups": group_id})
            assert seen.goto(f"{base}/redrive?{query}") == 200
            seen.page.fill("input[name=canary_wait_s]", "0")
            with seen.page.expect_navigation():
                seen.page.click("#plan-button")
            assert seen.page.inner_text("#plan-selected") == str(count), seen.page.content()
            screenshot(seen.page, "redrive-plan", "#execute-button")
            with seen.page.expect_navigation():
                seen.page.click("#execute-button")
            assert "/jobs/rd-" in seen.page.url
            for _ in range(600):
                if seen.page.inner_text("#job-state") != "running":
                    break
                seen.page.wait_for_timeout(100)
                seen.page.reload()
            assert seen.page.inner_text("#job-state") == "done", seen.page.content()
            screenshot(seen.page, "job")
            seen.assert_nothing_ran()
            job_id = seen.page.url.rsplit("/", 1)[1]
            seen.goto(base + "/audit")
            audit_text = seen.page.inner_text("#audit")
    assert anyio.run(_received, settings, "orders") == count
    assert "redrive-plan" in audit_text
    assert "redrive-execute" in audit_text
    job = anyio.run(JobStore(store, 86_400).load, job_id)
    assert job.spec["selector"]["groups"] == [group_id]
    # The cutoff: nothing that failed after the plan could be swept in.
    assert job.spec["selector"]["until_s"] is not None


def _hostile_dlq(world: World) -> None:
    """retry-hostile: hostile bodies (JSON and not), attributes, error text, and a 1 MiB body."""
    world.create_queue("retry-hostile")
    error = {
        "ErrorCode": {"DataType": "String", "StringValue": "Boom"},
        # Without the bad bytes: SQS carries only valid text (they come as a JSON escape below).
        "ErrorMessage": {"DataType": "String", "StringValue": " ".join(HOSTILE[:5])},
    }
    for text in HOSTILE[:5]:
        attributes = {**error, "origin": {"DataType": "String", "StringValue": text}}
        world.send("retry-hostile", text, attributes)
        world.send("retry-hostile", {"field": text, text: [text]}, error)
    # Invalid UTF-8 as a JSON escape (SQS carries only valid text): a lone surrogate.
    world.send("retry-hostile", '{"bad": "bad bytes \\udcff end"}', error)
    world.send("retry-hostile", "A" * 1_048_576, error)


def test_shown_messages_are_text_and_never_run(
    world: World, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """'Show messages' from a group's page: hostile bodies, attributes, errors, 1 MiB: inert."""
    settings = make_settings()
    _hostile_dlq(world)
    store = MemoryControlStore(MemoryDocs())
    arn = world.queue_arn("retry-hostile")
    view = DlqView("retry-hostile", world.queue_url("retry-hostile"), arn, time.time())
    anyio.run(record_dlq, store, view)
    with anyio.from_thread.start_blocking_portal() as portal:
        clients = portal.wrap_async_context_manager(open_clients(settings.aws))
        with (
            clients as opened,
            serving(console_for(settings, store, opened), NoAuth(), portal) as base,
        ):
            shown = Caller(base, dict(SAME_ORIGIN))("/api/queues/retry-hostile/messages", "POST")
            assert shown.status == 200, shown.text
            groups = {m["group"] for m in shown.json()["messages"]}
            assert len(groups) == 1
            (group_id,) = groups
            group = {
                "id": group_id,
                "target": "t",
                "signature": EVIL,
                "count": 12,
                "oldest": None,
                "newest": None,
                "example_message_id": "m",
                "source_attempts_max": None,
            }
            anyio.run(record_dlq, store, DlqView(view.name, view.url, arn, time.time(), [group]))
            world.wait_visible(["retry-hostile"], timeout_s=5)
            with chromium(tmp_path / "profile") as context:
                seen = watched(context)
                assert seen.goto(f"{base}/groups/{group_id}") == 200
                with seen.page.expect_navigation():
                    seen.page.click("form.show-messages button")
                seen.assert_nothing_ran()
                main_text = seen.page.inner_text("main")
                assert "received" in seen.page.inner_text("#messages-received")
                assert seen.page.inner_text("#messages-count") == "12 shown"
                assert "<script>window.__pwned=1" in main_text
                assert "</textarea><script>window.__pwned=4" in main_text
                assert "bad bytes ? end" in main_text
                assert "A" * 10_000 in main_text
                live: int = seen.page.evaluate(
                    "document.querySelectorAll('main script, main img, main svg, "
                    "main iframe, main textarea').length"
                )
                assert live == 0
