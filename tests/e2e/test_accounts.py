"""Many accounts and regions on the moto server: one retryd drains them all through AssumeRole.

moto derives the account of a call from its credentials: credentials from
sts:AssumeRole on a role in account 222222222222 see (and create) that account's
queues. So the member accounts here are real to retryd: it reaches them only
through the role it assumes.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import boto3
import pytest
import structlog
from aiobotocore.session import AioSession
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from retryd.aws import client_config
from retryd.commands.cli import main
from retryd.commands.inspect import inspect_everywhere
from retryd.commands.plan import Action, PlanReport, plan_everywhere
from retryd.commands.progress import QueueProgress
from retryd.control.deferrals import Hidden, HiddenBook, hidden_in
from retryd.control.memory import MemoryControlStore, MemoryDocs
from retryd.drain.cycle import Cycle, CycleReport
from retryd.errors import AwsSetupError
from retryd.ledger import open_ledger
from retryd.metrics import Metrics
from retryd.models import FailReason, Outcome, ParkReason, QueueRef
from retryd.places import Place, Places, assumed_credentials, open_places
from retryd.service.lifecycle import run_once
from retryd.settings import AccountSettings, AwsSettings, Settings
from tests.conftest import SettingsFactory
from tests.e2e.helpers import one_decision_each, org_settings
from tests.faults import Fault
from tests.world import ACCOUNT, QUIET_GUARDS_TOML, REGION, World, envelope

MEMBER = "222222222222"
BROKEN = "333333333333"
OTHER_REGION = "eu-west-1"
REGIONS = [REGION, OTHER_REGION]
PARKING = "retryd-parking"
DLQ = "retry-orders"


def role(account: str) -> str:
    return f"arn:aws:iam::{account}:role/retryd-member"


def sqs_in(world: World, account: str, region: str, service: str = "sqs") -> Any:
    """A plain SQS (or `service`) client working in `account` (through the member role, as
    retryd does)."""
    keys: dict[str, str] = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    if account != ACCOUNT:
        sts = boto3.client("sts", endpoint_url=world.url, region_name=REGION, **keys)
        assumed = sts.assume_role(RoleArn=role(account), RoleSessionName="test")["Credentials"]
        keys = {
            "aws_access_key_id": assumed["AccessKeyId"],
            "aws_secret_access_key": assumed["SecretAccessKey"],
            "aws_session_token": assumed["SessionToken"],
        }
    return boto3.client(service, endpoint_url=world.url, region_name=region, **keys)


def build_place(world: World, account: str, region: str, messages: int) -> Any:
    """A DLQ with `messages` envelopes for the place's own `dest`, a parking queue; the client."""
    sqs = sqs_in(world, account, region)
    sqs.create_queue(QueueName=PARKING)
    sqs.create_queue(QueueName="dest")
    url = sqs.create_queue(QueueName=DLQ)["QueueUrl"]
    target = f"arn:aws:sqs:{region}:{account}:dest"
    for index in range(messages):
        body = envelope("sqs", target, {"n": index, "place": f"{account}/{region}"})
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))
    return sqs


def depth(sqs: Any, name: str) -> int:
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    attributes = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def home_and_member(*extra: AccountSettings, **overrides: Any) -> Settings:
    """Home and MEMBER (through its role, with an external id) in both REGIONS, and `extra`."""
    return org_settings(
        regions=REGIONS,
        member=MEMBER,
        member_role=role(MEMBER),
        external_id="org",
        extra=[account.model_dump() for account in extra],
        **overrides,
    )


def resubmitted(registry: CollectorRegistry, account: str, region: str) -> float | None:
    labels = {
        "queue": DLQ,
        "account": account,
        "region": region,
        "outcome": "resubmitted",
        "reason": "none",
        "target_type": "sqs",
    }
    return registry.get_sample_value("retryd_messages_total", labels)


def cycles(
    settings: Settings, count: int, between: Any = None
) -> tuple[list[CycleReport], CollectorRegistry]:
    """`count` cycles of one Cycle over every configured place, as `retryd run` keeps one."""
    registry = CollectorRegistry()

    async def main() -> list[CycleReport]:
        metrics = Metrics(registry)
        async with open_places(settings) as places:
            clients = await places.home_clients()
            async with open_ledger(settings.ledger, clients, metrics) as ledger:
                cycle = Cycle(settings, clients, metrics, ledger=ledger, places=places)
                reports = []
                for index in range(count):
                    reports.append(one_decision_each(await cycle.run(anyio.Event(), collect=True)))
                    if between is not None:
                        between(index)
                return reports

    return anyio.run(main), registry


def test_one_once_drains_two_accounts_in_two_regions(world: World) -> None:
    """Every place's DLQ is drained into its own target, and the figures say where, per place."""
    sizes = {
        (ACCOUNT, REGION): 1,
        (ACCOUNT, OTHER_REGION): 2,
        (MEMBER, REGION): 3,
        (MEMBER, OTHER_REGION): 4,
    }
    clients = {place: build_place(world, *place, count) for place, count in sizes.items()}
    # Passed through to moto, counted: the member's AssumeRole carries its ExternalId.
    assume = world.faults.add(Fault("sts", "AssumeRole", code=None, contains="ExternalId=org"))
    registry = CollectorRegistry()
    report = anyio.run(lambda: run_once(home_and_member(), registry=registry))
    assert report.ok, report.errors
    assert report.queues == 4
    assert report.outcomes[Outcome.RESUBMITTED.value] == sum(sizes.values())
    for (account, region), count in sizes.items():
        assert depth(clients[(account, region)], "dest") == count
        assert depth(clients[(account, region)], DLQ) == 0
        assert resubmitted(registry, account, region) == count
        discovered = registry.get_sample_value(
            "retryd_queues_discovered", {"account": account, "region": region}
        )
        assert discovered == 1
    # One AssumeRole for the member account, shared by both of its regions (the tests'
    # own assume calls above came before the fault was added).
    assert assume.hits == 1


def test_a_member_whose_role_cannot_be_assumed_fails_alone_and_is_tried_again(world: World) -> None:
    """AssumeRole refused for one member: that place is an error (log, counter, report); the
    others drain; the next cycle assumes the role and drains it too."""
    build_place(world, ACCOUNT, REGION, 2)
    build_place(world, MEMBER, REGION, 2)
    broken = build_place(world, BROKEN, REGION, 3)
    world.faults.add(
        Fault("sts", "AssumeRole", code="AccessDenied", status=403, contains=BROKEN, times=1)
    )
    extra = AccountSettings(account_id=BROKEN, regions=[REGION], role_arn=role(BROKEN))
    settings = home_and_member(extra)
    settings = settings.model_copy(
        update={
            "accounts": [
                AccountSettings(account_id=a.account_id, regions=[REGION], role_arn=a.role_arn)
                for a in settings.accounts
            ]
        }
    )
    (first, second), registry = cycles(settings, 2)
    assert len(first.errors) == 1
    assert first.errors[0].startswith(f"{BROKEN}/{REGION}: cannot assume {role(BROKEN)}: ")
    assert "AccessDenied" in first.errors[0]
    assert first.outcomes[Outcome.RESUBMITTED.value] == 4
    errors = registry.get_sample_value(
        "retryd_account_errors_total",
        {"account": BROKEN, "region": REGION, "error_class": "permanent"},
    )
    assert errors == 1
    assert second.ok, second.errors
    assert second.outcomes[Outcome.RESUBMITTED.value] == 3
    assert depth(broken, "dest") == 3
    assert resubmitted(registry, BROKEN, REGION) == 3


def test_a_place_without_its_parking_queue_stays_put_and_the_others_drain(world: World) -> None:
    """No parking queue in one place: its messages stay in its DLQ, the other places drain."""
    build_place(world, ACCOUNT, REGION, 1)
    build_place(world, ACCOUNT, OTHER_REGION, 1)
    build_place(world, MEMBER, REGION, 1)
    lonely = build_place(world, MEMBER, OTHER_REGION, 2)
    lonely.delete_queue(QueueUrl=lonely.get_queue_url(QueueName=PARKING)["QueueUrl"])
    [report], _ = cycles(home_and_member(), 1)
    assert report.outcomes[Outcome.RESUBMITTED.value] == 3
    assert report.fatal is not None
    assert [error.split(":")[0] for error in report.errors] == [f"{MEMBER}/{OTHER_REGION}"]
    assert depth(lonely, DLQ) == 2


def test_assumed_credentials_are_refreshed_by_a_new_assume_role(world: World) -> None:
    """Credentials within botocore's refresh window are renewed with a new AssumeRole call
    (counted on the wire), not reused until they expire."""
    account = AccountSettings(account_id=MEMBER, regions=[REGION], role_arn=role(MEMBER))
    # Counted on the wire: AssumeRole on the member's role, in a session named "retryd".
    assume = world.faults.add(
        Fault("sts", "AssumeRole", code=None, contains="RoleSessionName=retryd")
    )

    async def fetch_twice(duration_s: int | None) -> list[str]:
        session = AioSession()
        source = await session.get_credentials()
        config = client_config(AwsSettings(max_attempts=1))
        credentials = assumed_credentials(
            session, source, account, config, REGION, duration_s=duration_s
        )
        keys: list[str] = []
        for _ in range(2):
            keys.append(str((await credentials.get_frozen_credentials()).access_key))
        return keys

    # STS's default hour: the second use finds them fresh, no second call.
    fresh = anyio.run(fetch_twice, None)
    assert assume.hits == 1
    assert fresh[0] == fresh[1]
    # 15 minutes is inside botocore's refresh window: every use renews them.
    renewed = anyio.run(fetch_twice, 900)
    assert assume.hits == 3
    assert renewed[0] != renewed[1]


@pytest.mark.parametrize("listed", [False, True])
def test_a_target_in_another_account_needs_the_allowlist(
    world: World, make_settings: SettingsFactory, listed: bool
) -> None:
    """A message in the home DLQ for a queue in the member account is parked as not allowed
    unless guards.allow_targets lists that account; listed, it is sent with the member's
    clients and arrives there."""
    home = build_place(world, ACCOUNT, REGION, 0)
    member = build_place(world, MEMBER, REGION, 0)
    target = f"arn:aws:sqs:{REGION}:{MEMBER}:dest"
    home.send_message(
        QueueUrl=home.get_queue_url(QueueName=DLQ)["QueueUrl"],
        MessageBody=json.dumps(envelope("sqs", target, {"to": "member"})),
    )
    allow = [f"arn:aws:sqs:*:{ACCOUNT}:*"] + ([target] if listed else [])
    settings = make_settings(
        accounts=[
            {"account_id": ACCOUNT, "regions": [REGION]},
            {"account_id": MEMBER, "regions": [REGION], "role_arn": role(MEMBER)},
        ],
        guards={"allow_targets": allow},
    )
    [report], _ = cycles(settings, 1)
    if listed:
        assert report.outcomes[Outcome.RESUBMITTED.value] == 1
        assert depth(member, "dest") == 1
    else:
        assert report.outcomes[Outcome.PARKED.value] == 1
        assert report.reasons[(Outcome.PARKED.value, ParkReason.TARGET_NOT_ALLOWED.value)] == 1
        assert depth(member, "dest") == 0
        assert depth(home, PARKING) == 1


def test_place_of_an_arn_is_only_a_configured_place() -> None:
    """place_of: the configured place an ARN names; None outside them; home with no accounts."""
    home = Place(ACCOUNT, REGION)
    places = Places(home, (home, Place(MEMBER, REGION)), True, None, {}, None, None)
    assert places.place_of(f"arn:aws:sqs:{REGION}:{MEMBER}:q") == Place(MEMBER, REGION)
    assert places.place_of(f"arn:aws:sqs:{OTHER_REGION}:{MEMBER}:q") is None
    assert places.place_of("not an arn") is None
    single = Places(home, (home,), False, None, {}, None, None)
    assert single.place_of(f"arn:aws:sqs:{OTHER_REGION}:{MEMBER}:q") == home


def org_config(tmp_path: Path) -> Path:
    """A retryd.toml for the two-account, two-region world (as `retryd` reads it)."""
    path = tmp_path / "retryd.toml"
    path.write_text(
        f"""
[discovery]
queue_prefixes = ["retry-"]

[drain]
receive_wait_s = 0

[parking]
queue = "{PARKING}"

[guards]
allow_targets = ["arn:aws:sqs:*:{ACCOUNT}:*", "arn:aws:sqs:*:{MEMBER}:*"]

[http]
enabled = false

[[accounts]]
account_id = "{ACCOUNT}"
regions = {json.dumps(REGIONS)}

[[accounts]]
account_id = "{MEMBER}"
regions = {json.dumps(REGIONS)}
role_arn = "{role(MEMBER)}"
"""
        + QUIET_GUARDS_TOML
    )
    return path


def test_plan_lists_every_places_dlqs(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`retryd plan` reads the DLQs of all four places and changes nothing."""
    sizes = {
        (ACCOUNT, REGION): 1,
        (ACCOUNT, OTHER_REGION): 1,
        (MEMBER, REGION): 2,
        (MEMBER, OTHER_REGION): 1,
    }
    clients = {place: build_place(world, *place, count) for place, count in sizes.items()}
    assert main(["plan", "--config", str(org_config(tmp_path)), "--output", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    examined = {queue["arn"]: queue["examined"] for queue in plan["queues"]}
    assert examined == {
        f"arn:aws:sqs:{region}:{account}:{DLQ}": count for (account, region), count in sizes.items()
    }
    for (account, region), count in sizes.items():
        assert depth(clients[(account, region)], DLQ) == count


def test_once_and_inspect_take_a_queue_arn_in_a_member_place(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A QUEUE given as an ARN in the member's second region selects that DLQ only, in
    `inspect` and in `once` (which drains it with the member's clients); an ARN in no
    configured place is reported missing."""
    home = build_place(world, ACCOUNT, REGION, 2)
    member = build_place(world, MEMBER, OTHER_REGION, 3)
    config = str(org_config(tmp_path))
    arn = f"arn:aws:sqs:{OTHER_REGION}:{MEMBER}:{DLQ}"
    assert main(["inspect", "--config", config, "--output", "json", arn]) == 0
    inspected = json.loads(capsys.readouterr().out)
    assert [queue["arn"] for queue in inspected["queues"]] == [arn]
    assert inspected["missing"] == []
    stranger = f"arn:aws:sqs:{REGION}:444444444444:{DLQ}"
    assert main(["inspect", "--config", config, "--output", "json", stranger]) == 1
    assert json.loads(capsys.readouterr().out)["missing"] == [stranger]
    assert main(["once", "--config", config, "--output", "json", arn]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["queues"] == 1
    assert report["outcomes"]["resubmitted"] == 3
    assert depth(member, "dest") == 3
    assert depth(home, DLQ) == 2


def test_redrive_of_a_member_dlq_given_by_arn_uses_the_members_clients(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`retryd redrive --from <ARN in the member account> --execute` reads that DLQ through
    the member role and resubmits into the member's target; the home DLQ is left alone."""
    # A job is operator state: it needs a durable ledger (the memory one is refused).
    monkeypatch.setenv("RETRYD_LEDGER__BACKEND", "sqlite")
    monkeypatch.setenv("RETRYD_LEDGER__PATH", str(tmp_path / "ledger.sqlite3"))
    home = build_place(world, ACCOUNT, REGION, 2)
    member = build_place(world, MEMBER, REGION, 3)
    arn = f"arn:aws:sqs:{REGION}:{MEMBER}:{DLQ}"
    command = ["redrive", "--config", str(org_config(tmp_path)), "--from", arn]
    code = main([*command, "--execute", "--canary-wait-s", "0", "--output", "json"])
    assert code == 0, capsys.readouterr()
    assert depth(member, "dest") == 3
    assert depth(member, DLQ) == 0
    assert depth(home, DLQ) == 2
    stranger = f"arn:aws:sqs:{REGION}:444444444444:{DLQ}"
    capsys.readouterr()
    assert main(["redrive", "--config", str(org_config(tmp_path)), "--from", stranger]) == 2
    assert "no account and region listed in [[accounts]]" in capsys.readouterr().err


@pytest.mark.parametrize("qualified", [False, True])
def test_deferrals_of_same_named_dlqs_in_two_places_are_kept_apart(qualified: bool) -> None:
    """With [[accounts]] a DLQ's hidden messages are kept under its ARN, so a same-named DLQ
    in another place never reads them; with none, under its name, as before."""
    here = QueueRef(DLQ, "", f"arn:aws:sqs:{REGION}:{ACCOUNT}:{DLQ}")
    there = QueueRef(DLQ, "", f"arn:aws:sqs:{REGION}:{MEMBER}:{DLQ}")
    store = MemoryControlStore(MemoryDocs())
    book = HiddenBook(store, qualified=qualified)

    async def main() -> tuple[list[str], list[str]]:
        book.note([Hidden(book.key(here), "m-1", "handle-1", time.time() + 600, "backoff")])
        await book.flush(book.key(here))
        return (
            [entry.message_id for entry in await hidden_in(store, book.key(here))],
            [entry.message_id for entry in await hidden_in(store, book.key(there))],
        )

    mine, theirs = anyio.run(main)
    assert mine == ["m-1"]
    assert theirs == ([] if qualified else ["m-1"])
    assert book.key(here) == (here.arn if qualified else DLQ)


def test_every_decision_line_names_the_account_and_region_of_its_queue(world: World) -> None:
    """Each message's log line carries `account` and `region`: those of the DLQ it came from."""
    build_place(world, ACCOUNT, OTHER_REGION, 1)
    build_place(world, MEMBER, REGION, 2)
    for place in [(ACCOUNT, REGION), (MEMBER, OTHER_REGION)]:
        build_place(world, *place, 0)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        cycles(home_and_member(), 1)
    lines = Counter(
        (line["queue"], line["account"], line["region"])
        for line in logs
        if line["event"] == Outcome.RESUBMITTED.value
    )
    assert lines == {(DLQ, ACCOUNT, OTHER_REGION): 1, (DLQ, MEMBER, REGION): 2}


def test_without_a_home_entry_the_home_account_is_asked_once(
    world: World, make_settings: SettingsFactory
) -> None:
    """Only member accounts listed: one GetCallerIdentity at start names the home place (the
    ledger's), the session's region; only the member's places are drained."""
    member = build_place(world, MEMBER, REGION, 2)
    who = world.faults.add(Fault("sts", "GetCallerIdentity", code=None))
    settings = make_settings(
        accounts=[{"account_id": MEMBER, "regions": [REGION], "role_arn": role(MEMBER)}],
        guards={"allow_targets": [f"arn:aws:sqs:*:{MEMBER}:*"]},
    )

    async def main() -> tuple[Place, tuple[Place, ...], CycleReport]:
        async with open_places(settings) as places:
            clients = await places.home_clients()
            cycle = Cycle(settings, clients, Metrics(CollectorRegistry()), places=places)
            return places.home, places.places, await cycle.run(anyio.Event())

    home, drained, report = anyio.run(main)
    assert home == Place(ACCOUNT, REGION)
    assert drained == (Place(MEMBER, REGION),)
    assert who.hits == 1
    assert report.ok, report.errors
    assert depth(member, "dest") == 2


def test_a_target_whose_places_role_cannot_be_assumed_is_not_parked(
    world: World, make_settings: SettingsFactory
) -> None:
    """A home message for a member's queue while that member's role is refused: retryd's own
    trouble, not the target's answer, so the message is not parked: it stays in its DLQ."""
    home = build_place(world, ACCOUNT, REGION, 0)
    member = build_place(world, MEMBER, REGION, 0)
    target = f"arn:aws:sqs:{REGION}:{MEMBER}:dest"
    home.send_message(
        QueueUrl=home.get_queue_url(QueueName=DLQ)["QueueUrl"],
        MessageBody=json.dumps(envelope("sqs", target, {"to": "member"})),
    )
    world.faults.add(Fault("sts", "AssumeRole", code="AccessDenied", status=403, contains=MEMBER))
    settings = make_settings(
        accounts=[
            {"account_id": ACCOUNT, "regions": [REGION]},
            {"account_id": MEMBER, "regions": [REGION], "role_arn": role(MEMBER)},
        ],
        guards={"allow_targets": [f"arn:aws:sqs:*:{ACCOUNT}:*", target]},
    )
    [report], _ = cycles(settings, 1)
    assert report.outcomes.get(Outcome.PARKED.value, 0) == 0, report.reasons
    assert report.outcomes[Outcome.FAILED.value] == 1
    assert depth(home, PARKING) == 0
    assert depth(home, DLQ) == 1
    assert depth(member, "dest") == 0


def test_a_home_entry_naming_another_account_than_the_credentials_is_refused(
    world: World, make_settings: SettingsFactory
) -> None:
    """The entry without role_arn says which account retryd's own credentials are in; when
    they are in another, retryd says so at start instead of working in that account's name
    with the wrong credentials."""
    settings = make_settings(
        accounts=[
            {"account_id": BROKEN, "regions": [REGION]},
            {"account_id": MEMBER, "regions": [REGION], "role_arn": role(MEMBER)},
        ],
        guards={"allow_targets": [f"arn:aws:sqs:*:{BROKEN}:*"]},
    )

    async def main() -> None:
        async with open_places(settings):
            pass

    with pytest.raises(AwsSetupError) as raised:
        anyio.run(main)
    assert BROKEN in str(raised.value)
    assert ACCOUNT in str(raised.value)


def test_the_loop_guard_tells_a_same_named_queue_in_another_region_from_the_dlq(
    world: World, make_settings: SettingsFactory
) -> None:
    """A message for the queue sharing its DLQ's name in another region is resubmitted there;
    one for the DLQ itself is parked as a loop (the guard compares region, account and name)."""
    here = build_place(world, ACCOUNT, REGION, 0)
    there = build_place(world, ACCOUNT, OTHER_REGION, 0)
    dlq_url = here.get_queue_url(QueueName=DLQ)["QueueUrl"]
    for region in (OTHER_REGION, REGION):
        target = f"arn:aws:sqs:{region}:{ACCOUNT}:{DLQ}"
        body = envelope("sqs", target, {"to": region})
        here.send_message(QueueUrl=dlq_url, MessageBody=json.dumps(body))
    settings = make_settings(
        accounts=[{"account_id": ACCOUNT, "regions": REGIONS}],
        # Only this region's DLQ is drained: the other region's same-named queue is a target.
        discovery={"queue_prefixes": [], "queues": [f"arn:aws:sqs:{REGION}:{ACCOUNT}:{DLQ}"]},
        guards={"allow_targets": [f"arn:aws:sqs:*:{ACCOUNT}:*"]},
    )
    [report], _ = cycles(settings, 1)
    assert report.outcomes == {Outcome.RESUBMITTED.value: 1, Outcome.PARKED.value: 1}
    assert report.reasons[(Outcome.PARKED.value, ParkReason.TARGET_NOT_ALLOWED.value)] == 1
    arrived = there.receive_message(QueueUrl=there.get_queue_url(QueueName=DLQ)["QueueUrl"])
    assert [json.loads(m["Body"]) for m in arrived["Messages"]] == [{"to": OTHER_REGION}]
    parking_url = here.get_queue_url(QueueName=PARKING)["QueueUrl"]
    parked = here.receive_message(QueueUrl=parking_url, MessageAttributeNames=["All"])["Messages"]
    assert len(parked) == 1
    assert "would loop" in parked[0]["MessageAttributes"]["retryd.detail"]["StringValue"]
    assert depth(here, DLQ) == 0


@pytest.mark.parametrize(
    "host", ["moto", "https://sqs.amazonaws.com", "https://queue.amazonaws.com"]
)
def test_a_queue_url_naming_no_region_is_one_dlq_in_one_place(
    world: World, make_settings: SettingsFactory, host: str
) -> None:
    """A listed queue URL whose host names no region (an emulator's, the global host) is
    drained in one place only: the account's first listed region (queue.amazonaws.com
    is us-east-1's own); the same-named DLQ in the account's other region is left alone."""
    first = build_place(world, ACCOUNT, REGION, 1)
    second = build_place(world, ACCOUNT, OTHER_REGION, 2)
    url = first.get_queue_url(QueueName=DLQ)["QueueUrl"]
    if host != "moto":
        url = f"{host}/{ACCOUNT}/{DLQ}"
    settings = make_settings(
        accounts=[{"account_id": ACCOUNT, "regions": REGIONS}],
        discovery={"queue_prefixes": [], "queues": [url]},
        guards={"allow_targets": [f"arn:aws:sqs:*:{ACCOUNT}:*"]},
    )
    [report], _ = cycles(settings, 1)
    assert report.ok, report.errors
    assert report.queues == 1
    assert report.outcomes == {Outcome.RESUBMITTED.value: 1}
    assert depth(first, DLQ) == 0
    assert depth(second, DLQ) == 2


def test_entries_for_keeps_a_url_in_the_one_place_it_belongs_to() -> None:
    """A URL naming its region is kept in that place; one naming none in its account's first
    listed region only; a redrive's sources given so are in that place."""
    places = Places(
        Place(ACCOUNT, REGION),
        tuple(Place(account, region) for account in (ACCOUNT, MEMBER) for region in REGIONS),
        True,
        None,
        {},
        None,
        None,
    )
    named = f"https://sqs.{OTHER_REGION}.amazonaws.com/{MEMBER}/{DLQ}"
    bare = f"http://localhost:4566/{MEMBER}/{DLQ}"
    keeping = {place: places.entries_for(place, [named, bare, DLQ]) for place in places.places}
    assert keeping == {
        Place(ACCOUNT, REGION): [DLQ],
        Place(ACCOUNT, OTHER_REGION): [DLQ],
        Place(MEMBER, REGION): [bare, DLQ],
        Place(MEMBER, OTHER_REGION): [named, DLQ],
    }
    assert places.place_for_sources([bare]) == Place(MEMBER, REGION)


@pytest.mark.parametrize("source", [ACCOUNT, MEMBER])
def test_a_target_in_a_region_retryd_does_not_drain_is_sent_there(
    world: World, make_settings: SettingsFactory, source: str
) -> None:
    """A target in a listed account but an unlisted region is sent with that account's
    credentials in the target's own region (not the DLQ's), and arrives there."""
    dlq = build_place(world, source, REGION, 0)
    build_place(world, MEMBER, REGION, 0)
    elsewhere = sqs_in(world, MEMBER, OTHER_REGION)
    elsewhere.create_queue(QueueName="dest")
    target = f"arn:aws:sqs:{OTHER_REGION}:{MEMBER}:dest"
    dlq.send_message(
        QueueUrl=dlq.get_queue_url(QueueName=DLQ)["QueueUrl"],
        MessageBody=json.dumps(envelope("sqs", target, {"to": OTHER_REGION})),
    )
    settings = make_settings(
        accounts=[
            {"account_id": ACCOUNT, "regions": [REGION]},
            {"account_id": MEMBER, "regions": [REGION], "role_arn": role(MEMBER)},
        ],
        guards={"allow_targets": [f"arn:aws:sqs:*:{ACCOUNT}:*", f"arn:aws:sqs:*:{MEMBER}:*"]},
    )
    [report], _ = cycles(settings, 1)
    assert report.outcomes == {Outcome.RESUBMITTED.value: 1}, report.reasons
    assert depth(elsewhere, "dest") == 1
    assert depth(dlq, DLQ) == 0
    assert depth(dlq, PARKING) == 0


def test_a_target_in_a_region_retryd_knows_nothing_of_is_held_not_parked(
    world: World, make_settings: SettingsFactory
) -> None:
    """A target whose region no allow_targets pattern names and no AWS partition has (a
    wildcard matched it): no clients are made for it; the message stays in its DLQ, with why."""
    home = build_place(world, ACCOUNT, REGION, 0)
    target = f"arn:aws:sqs:us-nowhere-7:{ACCOUNT}:dest"
    home.send_message(
        QueueUrl=home.get_queue_url(QueueName=DLQ)["QueueUrl"],
        MessageBody=json.dumps(envelope("sqs", target, {"to": "nowhere"})),
    )
    settings = make_settings(
        accounts=[{"account_id": ACCOUNT, "regions": [REGION]}],
        guards={"allow_targets": [f"arn:aws:sqs:*:{ACCOUNT}:*"]},
    )
    with capture_logs() as logs:
        [report], _ = cycles(settings, 1)
    assert report.outcomes == {Outcome.FAILED.value: 1}, report.reasons
    assert depth(home, PARKING) == 0
    assert depth(home, DLQ) == 1
    [failed] = [line for line in logs if line.get("outcome") == Outcome.FAILED.value]
    assert "us-nowhere-7" in failed["detail"]
    assert "allow_targets" in failed["detail"]


def test_the_loop_guard_holds_a_target_with_no_account_to_the_dlq_of_its_name(
    world: World, make_settings: SettingsFactory
) -> None:
    """A message naming its DLQ with the account left out (which SQS looks up in the caller's
    own account) is parked as a loop, not resubmitted into the DLQ it came from."""
    here = build_place(world, ACCOUNT, REGION, 0)
    dlq_url = here.get_queue_url(QueueName=DLQ)["QueueUrl"]
    body = envelope("sqs", f"arn:aws:sqs:{REGION}::{DLQ}", {"to": "no-account"})
    here.send_message(QueueUrl=dlq_url, MessageBody=json.dumps(body))
    settings = make_settings(
        accounts=[{"account_id": ACCOUNT, "regions": [REGION]}],
        discovery={"queue_prefixes": [], "queues": [f"arn:aws:sqs:{REGION}:{ACCOUNT}:{DLQ}"]},
        guards={"allow_targets": ["arn:aws:sqs:*:*:*"]},
    )
    [report], _ = cycles(settings, 1)
    assert report.outcomes == {Outcome.PARKED.value: 1}
    assert report.reasons[(Outcome.PARKED.value, ParkReason.TARGET_NOT_ALLOWED.value)] == 1
    assert depth(here, DLQ) == 0


def plan_of(settings: Settings) -> tuple[PlanReport, list[str], set[Place]]:
    """`retryd plan` over every place: the report, the problems, the places it opened clients in."""

    async def main() -> tuple[PlanReport, list[str], set[Place]]:
        async with open_places(settings) as places:
            with QueueProgress(enabled=False) as bars:
                report, problems = await plan_everywhere(
                    settings, places, max_messages=10, bars=bars
                )
            return report, problems, set(places._clients)

    return anyio.run(main)


def test_plan_holds_a_target_in_a_region_retryd_knows_nothing_of_as_once_does(
    world: World, make_settings: SettingsFactory
) -> None:
    """`plan` says hold transient-error with PlaceUnavailable and the region, as `once` leaves it,
    not resubmit; and opens no clients for that region (nor for one it could send to)."""
    home = build_place(world, ACCOUNT, REGION, 0)
    nowhere = f"arn:aws:sqs:us-nowhere-7:{ACCOUNT}:dest"
    elsewhere = f"arn:aws:sqs:{OTHER_REGION}:{ACCOUNT}:dest"
    url = home.get_queue_url(QueueName=DLQ)["QueueUrl"]
    for target in (nowhere, elsewhere):
        home.send_message(QueueUrl=url, MessageBody=json.dumps(envelope("sqs", target, {})))
    settings = make_settings(
        accounts=[{"account_id": ACCOUNT, "regions": [REGION]}],
        guards={"allow_targets": [f"arn:aws:sqs:*:{ACCOUNT}:*"]},
    )
    report, problems, opened = plan_of(settings)
    assert problems == []
    by_target = {m.target.arn: m for q in report.queues for m in q.messages if m.target}
    held = by_target[nowhere]
    assert (held.action, held.reason) == (Action.HOLD, FailReason.TRANSIENT_ERROR.value)
    assert held.detail.startswith("PlaceUnavailable: ")
    assert "us-nowhere-7" in held.detail
    assert "allow_targets" in held.detail
    assert by_target[elsewhere].action is Action.RESUBMIT
    assert opened == {Place(ACCOUNT, REGION)}
    assert depth(home, DLQ) == 2


def test_plan_holds_a_target_whose_places_role_cannot_be_assumed(
    world: World, make_settings: SettingsFactory
) -> None:
    """A home message for a member's queue while the member's role is refused: hold, as `once`
    leaves it (its role's error in the detail), and the member's clients are never opened."""
    home = build_place(world, ACCOUNT, REGION, 0)
    target = f"arn:aws:sqs:{REGION}:{MEMBER}:dest"
    home.send_message(
        QueueUrl=home.get_queue_url(QueueName=DLQ)["QueueUrl"],
        MessageBody=json.dumps(envelope("sqs", target, {})),
    )
    world.faults.add(Fault("sts", "AssumeRole", code="AccessDenied", status=403, contains=MEMBER))
    settings = make_settings(
        accounts=[
            {"account_id": ACCOUNT, "regions": [REGION]},
            {"account_id": MEMBER, "regions": [OTHER_REGION], "role_arn": role(MEMBER)},
        ],
        guards={"allow_targets": [f"arn:aws:sqs:*:{ACCOUNT}:*", target]},
    )
    report, problems, opened = plan_of(settings)
    assert [problem.split(":")[0] for problem in problems] == [f"{MEMBER}/{OTHER_REGION}"]
    [message] = [m for q in report.queues for m in q.messages]
    assert (message.action, message.reason) == (Action.HOLD, FailReason.TRANSIENT_ERROR.value)
    assert message.detail.startswith(f"PlaceUnavailable: {MEMBER}/{REGION}: cannot assume")
    assert opened == {Place(ACCOUNT, REGION)}


def test_inspect_reads_each_targets_key_in_the_place_retryd_sends_to_it_from(
    world: World, make_settings: SettingsFactory
) -> None:
    """A target queue in a listed member account is read with the member's role; a home queue
    in a region home does not list, in that region: each one's KMS key is shown."""
    home = build_place(world, ACCOUNT, REGION, 0)
    build_place(world, MEMBER, REGION, 0)
    member_key = sqs_in(world, MEMBER, REGION, "kms").create_key()["KeyMetadata"]
    member_queue = sqs_in(world, MEMBER, REGION).create_queue(
        QueueName="sealed", Attributes={"KmsMasterKeyId": member_key["KeyId"]}
    )["QueueUrl"]
    home_key = sqs_in(world, ACCOUNT, OTHER_REGION, "kms").create_key()["KeyMetadata"]
    sqs_in(world, ACCOUNT, OTHER_REGION).create_queue(
        QueueName="sealed", Attributes={"KmsMasterKeyId": home_key["KeyId"]}
    )
    targets = {
        f"arn:aws:sqs:{REGION}:{MEMBER}:sealed": member_key["KeyId"],
        f"arn:aws:sqs:{OTHER_REGION}:{ACCOUNT}:sealed": home_key["KeyId"],
    }
    assert f"/{MEMBER}/" in member_queue
    url = home.get_queue_url(QueueName=DLQ)["QueueUrl"]
    for target in targets:
        home.send_message(QueueUrl=url, MessageBody=json.dumps(envelope("sqs", target, {})))
    settings = make_settings(
        accounts=[
            {"account_id": ACCOUNT, "regions": [REGION]},
            {"account_id": MEMBER, "regions": [REGION], "role_arn": role(MEMBER)},
        ],
        guards={"allow_targets": list(targets)},
    )

    async def inspect() -> Any:
        async with open_places(settings) as places:
            with QueueProgress(enabled=False) as bars:
                return await inspect_everywhere(settings, places, [], max_messages=10, bars=bars)

    report = anyio.run(inspect)
    [home_dlq] = [
        q for q in report.queues if q.queue.arn == f"arn:aws:sqs:{REGION}:{ACCOUNT}:{DLQ}"
    ]
    assert home_dlq.warnings == []
    assert home_dlq.target_kms_keys == targets
