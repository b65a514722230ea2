"""Discovery: which queues retryd drains, found over the moto server, and URL -> ARN derivation."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import anyio
import pytest
from botocore.exceptions import ClientError
from botocore.loaders import create_loader
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from retryd.arns import Arn, is_region_name, parse_queue_url, partition_for_region, queue_name
from retryd.aws import open_clients
from retryd.discovery.queues import LIST_PAGE_SIZE, discover_queues
from retryd.models import QueueRef, queue_ref_from_url
from retryd.settings import Settings
from tests.conftest import SettingsFactory
from tests.faults import Fault
from tests.world import ACCOUNT, REGION, World


def discover(settings: Settings, parking_queue: str | None = None) -> list[QueueRef]:
    """Run one discovery with retryd's own clients, as a cycle would."""

    async def run() -> list[QueueRef]:
        async with open_clients(settings.aws) as clients:
            return await discover_queues(
                clients.sqs, settings.discovery, parking_queue or settings.parking.queue
            )

    return anyio.run(run)


def names(queues: list[QueueRef]) -> list[str]:
    return [queue.name for queue in queues]


def events(logs: list[MutableMapping[str, Any]], level: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["log_level"] == level]


# -- over the moto server ---------------------------------------------------------------


@pytest.mark.slow
def test_pagination_finds_every_queue_past_the_first_page(
    world: World, make_settings: SettingsFactory
) -> None:
    """1,050 prefixed queues among others: all of them are found, and only they."""
    sqs = world.client("sqs")
    prefixed = [f"retry-{index:05d}" for index in range(1050)]
    # Measured: ~4 ms per CreateQueue, and a thread pool does not help (the in-process
    # server holds the GIL), so a plain loop keeps setup at about 4 s.
    for name in [*prefixed, *(f"other-{index:03d}" for index in range(30))]:
        sqs.create_queue(QueueName=name)
    # The fixture is only a pagination test if one page cannot hold it.
    first_page = sqs.list_queues(QueueNamePrefix="retry-", MaxResults=LIST_PAGE_SIZE)
    assert len(first_page["QueueUrls"]) == LIST_PAGE_SIZE
    assert first_page.get("NextToken")

    found = discover(make_settings(discovery={"queue_prefixes": ["retry-"]}))

    assert names(found) == prefixed
    assert found[1049].arn == world.queue_arn("retry-01049")


def test_refs_carry_the_url_and_arn_aws_would_give(
    world: World, make_settings: SettingsFactory
) -> None:
    """URL is the one SQS returns; the derived ARN equals the queue's QueueArn attribute."""
    world.create_queue("retry-orders")
    world.create_queue("retry-payments.fifo")

    found = discover(make_settings())

    for ref in found:
        attributes = world.client("sqs").get_queue_attributes(
            QueueUrl=ref.url, AttributeNames=["QueueArn"]
        )["Attributes"]
        assert ref.url == world.queue_url(ref.name)
        assert ref.arn == attributes["QueueArn"]
    assert [ref.is_fifo for ref in found] == [False, True]


def test_several_prefixes_overlap_without_duplicates(
    world: World, make_settings: SettingsFactory
) -> None:
    """Queues matched by two prefixes come back once; results are sorted by name."""
    for name in ("retry-b", "retry-a", "retry-apple", "dlq-x", "other-y", "Retry-upper"):
        world.create_queue(name)

    found = discover(make_settings(discovery={"queue_prefixes": ["retry-", "retry-a", "dlq-"]}))

    # "Retry-upper" is absent: ListQueues prefixes are case-sensitive.
    assert names(found) == ["dlq-x", "retry-a", "retry-apple", "retry-b"]


def test_tag_filter_keeps_queues_with_every_tag_and_value(
    world: World, make_settings: SettingsFactory
) -> None:
    """Only queues carrying all wanted tags with the wanted values survive the filter."""
    world.create_queue("retry-all", tags={"retryd": "enabled", "team": "pay", "extra": "x"})
    world.create_queue("retry-one-missing", tags={"retryd": "enabled"})
    world.create_queue("retry-wrong-value", tags={"retryd": "disabled", "team": "pay"})
    world.create_queue("retry-untagged")
    world.create_queue("other-all", tags={"retryd": "enabled", "team": "pay"})
    settings = make_settings(
        discovery={"queue_prefixes": ["retry-"], "queue_tags": {"retryd": "enabled", "team": "pay"}}
    )

    with capture_logs() as logs:
        found = discover(settings)

    assert names(found) == ["retry-all"]
    [summary] = [entry for entry in logs if entry["event"] == "queues-discovered"]
    assert summary["log_level"] == "info"
    assert (summary["matched_by_prefix"], summary["removed_by_tags"]) == (4, 3)
    assert (summary["explicit"], summary["total"]) == (0, 1)
    discovered = [entry for entry in logs if entry["event"] == "queue-discovered"]
    assert [(entry["log_level"], entry["queue"]) for entry in discovered] == [
        ("debug", "retry-all")
    ]


def test_explicit_queues_by_name_and_url_skip_missing_and_ignore_tags(
    world: World, make_settings: SettingsFactory
) -> None:
    """Listed queues are found by name or URL without tags; a missing one is a warning."""
    world.create_queue("retry-tagged", tags={"retryd": "enabled"})
    world.create_queue("orders-dlq")
    by_url = world.create_queue("payments-dlq.fifo")
    missing_url = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/gone-dlq"
    settings = make_settings(
        discovery={
            "queue_prefixes": ["retry-"],
            "queue_tags": {"retryd": "enabled"},
            "queues": ["orders-dlq", by_url, "never-created", missing_url],
        }
    )

    with capture_logs() as logs:
        found = discover(settings)

    assert names(found) == ["orders-dlq", "payments-dlq.fifo", "retry-tagged"]
    assert found[1].url == by_url
    warned = {entry["queue"] for entry in events(logs, "warning")}
    assert warned == {"never-created", missing_url}


def test_explicit_queues_need_no_prefix(world: World, make_settings: SettingsFactory) -> None:
    """With no prefixes at all, only the listed queues are returned (no ListQueues scan)."""
    world.create_queue("retry-unlisted")
    world.create_queue("orders-dlq")

    found = discover(make_settings(discovery={"queue_prefixes": [], "queues": ["orders-dlq"]}))

    assert names(found) == ["orders-dlq"]


def test_queue_matched_by_prefix_and_listed_is_returned_once(
    world: World, make_settings: SettingsFactory
) -> None:
    """A queue both matched and listed (by name and by URL) appears once."""
    url = world.create_queue("retry-orders")

    found = discover(
        make_settings(discovery={"queue_prefixes": ["retry-"], "queues": ["retry-orders", url]})
    )

    assert names(found) == ["retry-orders"]


@pytest.mark.parametrize("as_url", [False, True], ids=["name", "url"])
def test_parking_queue_is_never_returned(
    world: World, make_settings: SettingsFactory, as_url: bool
) -> None:
    """The parking queue is excluded when a prefix matches it and when it is listed."""
    parking_url = world.create_queue("retry-parking")
    world.create_queue("retry-orders")
    listed = parking_url if as_url else "retry-parking"
    settings = make_settings(
        discovery={"queue_prefixes": ["retry-"], "queues": [listed]},
        parking={"queue": "retry-parking"},
    )

    with capture_logs() as logs:
        found = discover(settings, parking_queue=parking_url if as_url else None)

    assert names(found) == ["retry-orders"]
    assert [entry["event"] for entry in events(logs, "warning")] == ["parking-queue-listed"]


@pytest.mark.parametrize(
    ("operation", "code", "status"),
    [
        ("ListQueues", "AWS.SimpleQueueService.Throttled", 400),
        ("ListQueueTags", "InternalError", 500),
        ("GetQueueUrl", "ServiceUnavailable", 503),
    ],
)
def test_aws_errors_propagate_unwrapped(
    world: World, make_settings: SettingsFactory, operation: str, code: str, status: int
) -> None:
    """A failing AWS call fails discovery with that ClientError, not an ExceptionGroup."""
    for index in range(20):
        world.create_queue(f"retry-{index:02d}", tags={"retryd": "enabled"})
    world.create_queue("orders-dlq")
    world.faults.add(Fault("sqs", operation, code=code, status=status, times=1))
    settings = make_settings(
        discovery={
            "queue_prefixes": ["retry-"],
            "queue_tags": {"retryd": "enabled"},
            "queues": ["orders-dlq"],
        }
    )

    with pytest.raises(ClientError) as raised:
        discover(settings)

    assert raised.value.response["Error"]["Code"] == code


# -- URL -> ARN, pure -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "arn"),
    [
        (
            "https://sqs.us-east-1.amazonaws.com/123456789012/orders-dlq",
            "arn:aws:sqs:us-east-1:123456789012:orders-dlq",
        ),
        (
            "https://sqs.eu-west-1.amazonaws.com/123456789012/orders-dlq.fifo",
            "arn:aws:sqs:eu-west-1:123456789012:orders-dlq.fifo",
        ),
        (
            "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/orders-dlq",
            "arn:aws-cn:sqs:cn-north-1:123456789012:orders-dlq",
        ),
        (
            "https://sqs.us-gov-west-1.amazonaws.com/123456789012/orders-dlq.fifo",
            "arn:aws-us-gov:sqs:us-gov-west-1:123456789012:orders-dlq.fifo",
        ),
        (
            "https://sqs-fips.us-gov-east-1.amazonaws.com/123456789012/q",
            "arn:aws-us-gov:sqs:us-gov-east-1:123456789012:q",
        ),
        (
            "https://sqs.ap-southeast-2.api.aws/123456789012/dual_stack",
            "arn:aws:sqs:ap-southeast-2:123456789012:dual_stack",
        ),
        # Legacy hosts, still returned for old queues.
        (
            "https://queue.amazonaws.com/123456789012/legacy",
            "arn:aws:sqs:us-east-1:123456789012:legacy",
        ),
        (
            "https://us-west-2.queue.amazonaws.com/123456789012/legacy",
            "arn:aws:sqs:us-west-2:123456789012:legacy",
        ),
        # Emulators: the host names no region, so the client's region is used.
        (
            "http://127.0.0.1:5000/123456789012/local",
            "arn:aws:sqs:eu-central-1:123456789012:local",
        ),
        (
            "http://localhost:4566/000000000000/local.fifo",
            "arn:aws:sqs:eu-central-1:000000000000:local.fifo",
        ),
    ],
)
def test_arn_from_queue_url(url: str, arn: str) -> None:
    """Real AWS URL shapes map to the queue's ARN; a region in the host beats the client's."""
    ref = queue_ref_from_url(url, default_region="eu-central-1")

    assert ref == QueueRef(name=arn.rsplit(":", 1)[1], url=url, arn=arn)


@pytest.mark.parametrize(
    ("region", "partition"),
    [
        ("us-east-1", "aws"),
        ("eu-west-3", "aws"),
        ("cn-north-1", "aws-cn"),
        ("cn-northwest-1", "aws-cn"),
        ("us-gov-west-1", "aws-us-gov"),
        ("us-iso-east-1", "aws-iso"),
        ("us-isob-east-1", "aws-iso-b"),
    ],
)
def test_partition_for_region(region: str, partition: str) -> None:
    """China and GovCloud (and ISO) regions get their own partitions; the rest are aws."""
    assert partition_for_region(region) == partition


@pytest.mark.parametrize(
    "url",
    [
        "https://sqs.us-east-1.amazonaws.com/orders-dlq",
        "https://sqs.us-east-1.amazonaws.com/",
        "ftp://sqs.us-east-1.amazonaws.com/123456789012/orders-dlq",
        "orders-dlq",
    ],
)
def test_malformed_queue_url_is_rejected(url: str) -> None:
    """Anything without scheme, account and name is not a queue URL."""
    with pytest.raises(ValueError, match="not an SQS queue URL"):
        parse_queue_url(url)


def test_missing_region_is_an_error_not_a_blank_arn() -> None:
    """An emulator URL with no client region cannot yield an ARN."""
    with pytest.raises(ValueError, match="no region"):
        queue_ref_from_url("http://127.0.0.1:5000/123456789012/q", default_region=None)


def test_queue_name_from_name_or_url() -> None:
    """A bare name is its own name; a URL's name is its last path segment."""
    assert queue_name("retryd-parking") == "retryd-parking"
    assert queue_name("https://sqs.eu-west-1.amazonaws.com/123456789012/p.fifo") == "p.fifo"


_REGIONS = st.from_regex(r"(us-gov|us-iso|cn|[a-z]{2})-[a-z]{4,9}-[1-9]", fullmatch=True)
_ACCOUNTS = st.from_regex(r"[0-9]{12}", fullmatch=True)
_NAMES = st.from_regex(r"[A-Za-z0-9_-]{1,75}(\.fifo)?", fullmatch=True)


@given(region=_REGIONS, account=_ACCOUNTS, name=_NAMES)
def test_arn_round_trips_region_account_and_name(region: str, account: str, name: str) -> None:
    """Whatever the region, account and name in an AWS URL, the ARN carries the same three."""
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    url = f"https://sqs.{region}.{domain}/{account}/{name}"

    ref = queue_ref_from_url(url, default_region="xx-never-9")
    arn = Arn.parse(ref.arn)

    assert (arn.region, arn.account, arn.resource, ref.name) == (region, account, name, name)
    assert (arn.service, arn.partition) == ("sqs", partition_for_region(region))


@given(region=_REGIONS, account=_ACCOUNTS, name=_NAMES, port=st.integers(1, 65535))
def test_emulator_url_takes_the_client_region(
    region: str, account: str, name: str, port: int
) -> None:
    """On a non-AWS host the ARN's region is the client's, account and name from the path."""
    ref = queue_ref_from_url(f"http://127.0.0.1:{port}/{account}/{name}", default_region=region)

    assert ref.arn == f"arn:{partition_for_region(region)}:sqs:{region}:{account}:{name}"


def _botocore_regions() -> list[tuple[str, str]]:
    """Every (region, partition) botocore's partition data names (no `*-global` pseudo-region)."""
    partitions = create_loader().load_data("partitions")["partitions"]
    return [
        (region, partition["id"])
        for partition in partitions
        for region in partition["regions"]
        if not region.endswith("-global")
    ]


@pytest.mark.parametrize(("region", "partition"), _botocore_regions())
def test_every_region_botocore_knows_is_a_region_in_its_partition(
    region: str, partition: str
) -> None:
    """Each real region (the European Sovereign Cloud's eusc-de-east-1 too) is taken as a
    region name, its ARNs get its own partition, and its queue URLs' hosts name it."""
    suffix = next(
        p["outputs"]["dnsSuffix"]
        for p in create_loader().load_data("partitions")["partitions"]
        if p["id"] == partition
    )
    url = f"https://sqs.{region}.{suffix}/123456789012/orders-dlq"

    assert is_region_name(region)
    assert partition_for_region(region) == partition
    assert parse_queue_url(url).region == region
