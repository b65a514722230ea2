"""The console's sign-in by token and none, same-origin for every change, headers, and errors."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retryd.console.auth import NoAuth, TokenAuth
from retryd.console.server import authenticator
from retryd.control.readmodel import DocReadModel, ReadModel
from retryd.control.sqlite import SqliteControlStore
from retryd.control.store import Body, Doc
from retryd.errors import ConfigError
from retryd.settings import ConsoleSettings, Settings
from tests.conftest import SettingsFactory
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

GET_ROUTES = [
    "/",
    "/parking",
    "/pauses",
    "/jobs",
    "/audit",
    "/api/overview",
    "/api/groups",
    "/api/parking",
    "/api/jobs",
    "/api/pauses",
    "/api/audit",
    "/healthz",
    "/readyz",
    "/metrics",
    "/static/console.css",
]


def _settings(make_settings: SettingsFactory, **console: Any) -> Settings:
    base = {"auth": "token", "operator_token": OPERATOR_TOKEN, "viewer_token": VIEWER_TOKEN}
    return make_settings(console={**base, **console})


@pytest.fixture
def token_console(make_settings: SettingsFactory) -> Iterator[str]:
    settings = _settings(make_settings)
    with serving(console_for(settings), TokenAuth(settings.console)) as base:
        yield base


def test_no_token_and_a_wrong_token_are_refused(token_console: str) -> None:
    """Without a token, or with one that is neither the viewer's nor the operator's: 401."""
    call = Caller(token_console)
    assert call("/api/overview").status == 401
    assert call("/api/overview", headers=bearer("x" * 40)).status == 401
    assert call("/", headers={"Authorization": f"Basic {OPERATOR_TOKEN}"}).status == 401
    assert call("/api/overview", headers=bearer(VIEWER_TOKEN)).status == 200


def test_viewer_reads_but_a_forged_post_is_refused(token_console: str) -> None:
    """A viewer's POST, even same-origin, is 403 and changes nothing."""
    viewer = Caller(token_console, bearer(VIEWER_TOKEN))
    forged = viewer(
        "/api/pauses", "POST", {"pattern": "*", "reason": "forged"}, headers=SAME_ORIGIN
    )
    assert forged.status == 403
    assert (
        viewer("/pauses", "POST", form={"pattern": "*", "reason": "x"}, headers=SAME_ORIGIN).status
        == 403
    )
    assert viewer("/api/pauses").json() == {"pauses": []}
    assert "Resume" not in viewer("/pauses").text
    assert 'id="pause-form"' not in viewer("/pauses").text


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "none"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        # Sec-Fetch-Site wins over a matching-looking Origin.
        {"Sec-Fetch-Site": "cross-site", "Origin": "http://127.0.0.1"},
    ],
)
def test_an_operator_change_from_another_origin_is_refused(
    token_console: str, headers: dict[str, str]
) -> None:
    """CSRF: an operator's POST without same-origin proof is 403; nothing is paused."""
    operator = Caller(token_console, bearer(OPERATOR_TOKEN))
    reply = operator("/api/pauses", "POST", {"pattern": "*", "reason": "r"}, headers=headers)
    assert reply.status == 403
    assert "cross-origin" in reply.text
    assert operator("/api/pauses").json() == {"pauses": []}


def test_same_origin_operator_pauses_and_resumes_audited_with_the_person(
    token_console: str,
) -> None:
    """Sec-Fetch-Site same-origin, or an Origin naming this host: the pause is made and audited."""
    operator = Caller(token_console, bearer(OPERATOR_TOKEN))
    made = operator(
        "/api/pauses",
        "POST",
        {"pattern": "arn:aws:lambda:*:*:function:charge", "reason": "<b>deploy</b>", "for": "1h"},
        headers=SAME_ORIGIN,
    )
    assert made.status == 200, made.text
    pause = made.json()["pause"]
    assert pause["pattern"] == "arn:aws:lambda:*:*:function:charge"
    assert pause["until_s"] is not None
    host = token_console.removeprefix("http://")
    resumed = operator(f"/api/pauses/{pause['id']}", "DELETE", headers={"Origin": f"http://{host}"})
    assert resumed.status == 200, resumed.text
    assert [p["id"] for p in resumed.json()["resumed"]] == [pause["id"]]
    records = operator("/api/audit").json()["records"]
    assert [(r["action"], r["person"], r["who"]) for r in records] == [
        ("resume", "operator-token", CALLER),
        ("pause", "operator-token", CALLER),
    ]


def test_bad_input_is_a_400_naming_the_field(token_console: str) -> None:
    """A pause without a reason, or with a bad glob, is answered 400 with one line."""
    operator = Caller(token_console, bearer(OPERATOR_TOKEN))
    no_reason = operator("/api/pauses", "POST", {"pattern": "*"}, headers=SAME_ORIGIN)
    assert no_reason.status == 400
    assert "reason" in no_reason.json()["error"]
    assert operator("/api/pauses", "POST", [1], headers=SAME_ORIGIN).status == 400
    assert operator("/api/jobs/rd-nope", headers=SAME_ORIGIN).status == 404
    assert operator("/api/jobs/rd-nope/cancel", "POST", headers=SAME_ORIGIN).status == 400


@pytest.mark.parametrize("path", GET_ROUTES)
def test_every_route_sends_the_security_headers(token_console: str, path: str) -> None:
    """CSP without unsafe-inline, nosniff, no referrer, no framing: on every answer."""
    for headers in (bearer(VIEWER_TOKEN), {}):
        reply = Caller(token_console, headers)(path)
        csp = reply.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert "script-src" not in csp
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        assert reply.headers["Referrer-Policy"] == "no-referrer"


def test_headers_on_not_found_and_refusals_too(token_console: str) -> None:
    """A 404 and a 403 carry the same headers."""
    operator = Caller(token_console, bearer(OPERATOR_TOKEN))
    for reply in (operator("/nope"), operator("/api/pauses", "POST", {})):
        assert reply.status in (403, 404)
        assert "default-src 'none'" in reply.headers["Content-Security-Policy"]


class _BrokenStore:
    backend = "memory"

    async def get(self, names: Any) -> dict[str, Doc]:
        raise RuntimeError("secret internals /srv/app.py line 12")

    async def put(self, name: str, body: Body, *, version: int, ttl_s: float | None) -> bool:
        raise RuntimeError("secret internals")

    def read_model(self) -> ReadModel:
        return DocReadModel(self)


def test_a_handler_error_is_a_plain_500_without_a_traceback(
    make_settings: SettingsFactory,
) -> None:
    """A bug in a handler: 500, a request id, and nothing of the exception in the answer."""
    settings = _settings(make_settings)
    with serving(console_for(settings, _BrokenStore()), TokenAuth(settings.console)) as base:
        call = Caller(base, bearer(VIEWER_TOKEN))
        for path in ("/", "/api/overview", "/pauses"):
            reply = call(path)
            assert reply.status == 500
            assert "Traceback" not in reply.text
            assert "secret internals" not in reply.text
            assert "RuntimeError" not in reply.text
            assert reply.headers["X-Request-Id"] in reply.text
            assert "default-src 'none'" in reply.headers["Content-Security-Policy"]


def test_metrics_count_requests_by_route_and_status(token_console: str) -> None:
    """/metrics has the console's own counters, labelled by route template and status."""
    call = Caller(token_console, bearer(VIEWER_TOKEN))
    call("/api/jobs/rd-x")
    text = call("/metrics").text
    assert 'retryd_console_requests_total{route="/api/jobs/{id}",status="404"} 1.0' in text


def test_none_serves_the_local_operator_on_loopback(make_settings: SettingsFactory) -> None:
    """auth = "none" on 127.0.0.1: the user is `local`, an operator."""
    settings = make_settings(console={"auth": "none"})
    assert isinstance(authenticator(settings, "127.0.0.1"), NoAuth)
    assert isinstance(authenticator(settings, "::1"), NoAuth)
    with serving(console_for(settings), NoAuth()) as base:
        page = Caller(base)("/pauses")
        assert '<span id="me">local</span> (operator)' in page.text


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "::", "example.com"])  # noqa: S104 - the point
def test_none_off_loopback_refuses_to_start(make_settings: SettingsFactory, host: str) -> None:
    """auth = "none" anywhere but loopback is a configuration error (exit 2)."""
    settings = make_settings(console={"auth": "none"})
    with pytest.raises(ConfigError, match="only listens on loopback"):
        authenticator(settings, host)


def test_console_command_refuses_none_on_all_interfaces_with_one_line(tmp_path: Path) -> None:
    """`retryd console --listen 0.0.0.0:0` with auth none: exit 2, one line, no traceback."""
    config = tmp_path / "retryd.toml"
    config.write_text(
        '[discovery]\nqueue_prefixes = ["retry-"]\n'
        '[guards]\nallow_targets = ["arn:aws:lambda:*:*:*"]\n'
        '[console]\nauth = "none"\n'
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "retryd",
            "console",
            "--config",
            str(config),
            "--listen",
            "0.0.0.0:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "only listens on loopback" in done.stderr
    assert "Traceback" not in done.stderr


def test_tokens_must_be_set_long_and_from_one_place(tmp_path: Path) -> None:
    """Token mode: no token, a short token, or a token and its file at once are refused."""
    with pytest.raises(ConfigError, match=r"needs console\.viewer_token"):
        TokenAuth(ConsoleSettings(auth="token"))
    with pytest.raises(ConfigError, match="at least 32"):
        TokenAuth(ConsoleSettings(auth="token", operator_token="short"))
    token_file = tmp_path / "viewer"
    token_file.write_text(VIEWER_TOKEN + "\n")
    with pytest.raises(ConfigError, match="not both"):
        TokenAuth(
            ConsoleSettings(
                auth="token", viewer_token=VIEWER_TOKEN, viewer_token_file=str(token_file)
            )
        )
    assert TokenAuth(ConsoleSettings(auth="token", viewer_token_file=str(token_file)))


def test_a_token_file_signs_in_a_viewer(make_settings: SettingsFactory, tmp_path: Path) -> None:
    """The viewer's token read from a file (newline trimmed) signs in; it cannot act."""
    token_file = tmp_path / "viewer"
    token_file.write_text(VIEWER_TOKEN + "\n")
    settings = make_settings(console={"auth": "token", "viewer_token_file": str(token_file)})
    with serving(console_for(settings), TokenAuth(settings.console)) as base:
        call = Caller(base, bearer(VIEWER_TOKEN))
        assert call("/api/pauses").status == 200
        assert (
            call("/api/pauses", "POST", {"pattern": "*", "reason": "r"}, headers=SAME_ORIGIN).status
            == 403
        )


def test_a_viewers_forged_redrive_or_note_is_refused(token_console: str) -> None:
    """A viewer's redrive, resume or note, even same-origin, is 403 and starts nothing."""
    viewer = Caller(token_console, bearer(VIEWER_TOKEN))
    asks = [
        ("/api/redrives", {"sources": ["retry-orders"], "execute": True}),
        ("/api/jobs/rd-1/resume", None),
        ("/api/groups/abc/note", {"text": "forged"}),
    ]
    for path, body in asks:
        assert viewer(path, "POST", body, headers=SAME_ORIGIN).status == 403, path
    assert viewer("/redrive", "POST", form={"sources": "x"}, headers=SAME_ORIGIN).status == 403
    assert viewer("/api/jobs").json() == {"jobs": []}
    assert viewer("/api/audit").json()["records"] == []
    assert 'id="redrive-form"' not in viewer("/redrive").text


def test_a_cross_origin_redrive_is_refused(token_console: str) -> None:
    """CSRF: an operator's redrive from another origin is 403 before anything is read."""
    operator = Caller(token_console, bearer(OPERATOR_TOKEN))
    reply = operator(
        "/api/redrives",
        "POST",
        {"sources": ["retry-orders"], "execute": True},
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    assert reply.status == 403
    assert operator("/api/jobs").json() == {"jobs": []}


def test_a_note_on_a_group_is_set_shown_and_cleared_audited(token_console: str) -> None:
    """An operator's note is on the group for everyone, named; empty text clears it."""
    operator = Caller(token_console, bearer(OPERATOR_TOKEN))
    viewer = Caller(token_console, bearer(VIEWER_TOKEN))
    made = operator(
        "/api/groups/0123456789/note",
        "POST",
        {"text": "under investigation by <b>ana</b>, ticket OPS-1"},
        headers=SAME_ORIGIN,
    )
    assert made.status == 200, made.text
    shown = viewer("/api/groups/0123456789").json()
    assert shown["note"]["text"] == "under investigation by <b>ana</b>, ticket OPS-1"
    assert shown["note"]["by"] == "operator-token"
    page = viewer("/groups/0123456789").text
    assert "under investigation by &lt;b&gt;ana&lt;/b&gt;, ticket OPS-1" in page
    assert 'id="note-form"' not in page
    assert (
        operator("/api/groups/0123456789/note", "POST", {"text": 5}, headers=SAME_ORIGIN).status
        == 400
    )
    cleared = operator("/api/groups/0123456789/note", "POST", {"text": ""}, headers=SAME_ORIGIN)
    assert cleared.json()["note"] is None
    assert viewer("/api/groups/0123456789").status == 404
    records = operator("/api/audit").json()["records"]
    assert [(r["action"], r["outcome"], r["person"]) for r in records] == [
        ("group-note", "cleared", "operator-token"),
        ("group-note", "set", "operator-token"),
    ]


def test_bad_redrive_input_is_a_400_naming_the_field(token_console: str) -> None:
    """A redrive with no source, a bad ramp or a transform is 400 with one line, nothing read."""
    operator = Caller(token_console, bearer(OPERATOR_TOKEN))
    for body, field in (
        ({"selector": {}}, "--from"),
        ({"sources": ["q"], "ramp": "0,x"}, "--ramp"),
        ({"sources": ["q"], "transform": "t"}, "transform"),
        ({"sources": ["q"], "selector": {"groups": 7}}, "selector.groups"),
        ({"sources": ["q"], "max_refail": "lots"}, "max_refail"),
    ):
        reply = operator("/api/redrives", "POST", body, headers=SAME_ORIGIN)
        assert reply.status == 400, (body, reply.text)
        assert field in reply.json()["error"], (body, reply.text)


def test_readyz_names_the_check_that_failed_and_nothing_else(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """/readyz: 200 while the store answers; 503 naming "store" (no path, no trace) when not."""
    settings = _settings(make_settings)
    healthy = SqliteControlStore(tmp_path / "ledger.sqlite3")
    # A directory where the ledger's file should be: SQLite cannot open it.
    (tmp_path / "gone").mkdir()
    broken = SqliteControlStore(tmp_path / "gone")
    with serving(console_for(settings, healthy), TokenAuth(settings.console)) as base:
        assert Caller(base)("/readyz").status == 200
    with serving(console_for(settings, broken), TokenAuth(settings.console)) as base:
        reply = Caller(base)("/readyz")
        assert (reply.status, reply.text) == (503, "not ready: store failed\n")
        assert Caller(base)("/healthz").status == 200
