"""`retryd redrive` from an S3 source on the moto server: selectors, ramps, resume, leases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from retryd.commands.cli import main
from retryd.ledger import open_ledger
from retryd.models import DeadLetter, QueueRef
from retryd.resolve.failure_groups import error_signature, failure_group_id
from retryd.s3_objects import source_ref
from retryd.settings import LedgerSettings
from retryd.settle.objects import Objects
from tests.e2e.test_redrive import cli_json, config
from tests.e2e.test_s3_sources import BUCKET, PREFIX, key, keys, put, record, world_with_bucket
from tests.faults import Fault
from tests.operator_helpers import PARKING
from tests.world import ACCOUNT, World

pytestmark = pytest.mark.usefixtures("keep_logging_config")

SOURCE = f"{BUCKET}/{PREFIX}"


def s3_config(tmp_path: Path) -> str:
    """The redrive tests' config (SQLite ledger) with the bucket prefix as an S3 source."""
    path = Path(config(tmp_path))
    text = path.read_text()
    named = 'queue_prefixes = ["retry-"]'
    path.write_text(text.replace(named, f'{named}\ns3_sources = ["{SOURCE}"]'))
    return str(path)


def invoked(world: World, function: str = "charge") -> list[Any]:
    """The payloads the function was invoked with, in order."""
    return [json.loads(call["payload"]) for call in world.invocations(function)]


def bucket_world(world: World) -> dict[str, str]:
    """Four objects: two for `charge` (one failed in January), one for `bill`, one malformed."""
    charge = world_with_bucket(world)
    bill = world.create_function("bill")
    old = record(charge, {"order": 0})
    old["timestamp"] = "2026-01-01T00:00:00.000Z"
    refused = record(bill, {"order": 2})
    refused["responsePayload"] = {"errorType": "Refused", "errorMessage": "card refused"}
    put(world, key(0), old)
    put(world, key(1), record(charge, {"order": 1}))
    put(world, key(2), refused)
    put(world, key(3), "not json at all")
    return {"charge": charge, "bill": bill}


def planned(capsys: pytest.CaptureFixture[str], cfg: str, *args: str) -> dict[str, Any]:
    code, [document] = cli_json(capsys, "redrive", "--config", cfg, *args)
    assert code == 0, document
    plan: dict[str, Any] = document["plan"]
    return plan


def test_each_selector_selects_from_an_s3_source_by_any_of_its_names(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """bucket/prefix, its s3:// URL and its ARN name the source; every selector picks exact
    objects (a message id is the key); a plan leaves every object where it was."""
    arns = bucket_world(world)
    world.record()
    cfg = s3_config(tmp_path)
    body = record(arns["bill"], {"order": 2})
    body["responsePayload"] = {"errorType": "Refused", "errorMessage": "card refused"}
    refused = DeadLetter(QueueRef(SOURCE, "", ""), "-", "-", json.dumps(body))
    bill_group = failure_group_id(arns["bill"], error_signature(refused))
    for name in (SOURCE, f"s3://{SOURCE}", f"arn:aws:s3:::{SOURCE}"):
        assert planned(capsys, cfg, "--from", name)["selected"] == 4, name
    cases: list[tuple[list[str], int]] = [
        (["--target", f"arn:aws:lambda:*:{ACCOUNT}:function:charge"], 2),
        (["--group", bill_group], 1),
        (["--until", "2026-06-01T00:00:00Z"], 1),
        (["--since", "2026-06-01T00:00:00Z"], 3),
        (["--message-id", key(1), "--message-id", key(3)], 2),
        (["--where", "requestPayload.order > `0`"], 2),
        (["--target", "*", "--where", "requestPayload.order == `1`"], 1),
    ]
    for selectors, expected in cases:
        plan = planned(capsys, cfg, "--from", SOURCE, *selectors)
        assert plan["selected"] == expected, (selectors, plan)
    plan = planned(capsys, cfg, "--from", SOURCE)
    actions = {(g["target"], g["action"], g["reason"]): g["count"] for g in plan["groups"]}
    assert actions == {
        (arns["charge"], "resubmit", None): 2,
        (arns["bill"], "resubmit", None): 1,
        # A redrive never parks on a guard's word: what cannot be resolved stays.
        (None, "refuse", "unresolvable"): 1,
    }
    assert plan["errors"] == []
    assert keys(world) == [key(n) for n in range(4)]
    assert world.invocations() == []


def test_an_executed_redrive_sends_the_selected_objects_and_removes_only_them(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--execute: the selected objects reach their function once and are deleted after; the
    plan's groups are the job's; the objects not selected stay."""
    bucket_world(world)
    world.record()
    cfg = s3_config(tmp_path)

    code, documents = cli_json(
        capsys,
        "redrive",
        "--config",
        cfg,
        "--from",
        SOURCE,
        "--target",
        f"arn:aws:lambda:*:{ACCOUNT}:function:charge",
        "--execute",
        "--canary-wait-s",
        "0",
    )

    assert code == 0, documents
    plan, job = documents[0]["plan"], documents[1]["job"]
    assert job["state"] == "done"
    assert plan["groups"] == job["groups"]
    assert sorted(payload["order"] for payload in invoked(world)) == [0, 1]
    assert keys(world) == [key(2), key(3)]
    # Run again: nothing left to select, nothing sent twice.
    code, documents = cli_json(
        capsys, "redrive", "--config", cfg, "--from", SOURCE, "--execute", "--canary-wait-s", "0"
    )
    assert len(invoked(world)) == 2


def test_a_parked_object_resolves_as_if_still_in_its_s3_source(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An object parked after its function refused it comes back from parking, after the fix,
    to the function its record names, once."""
    charge = world_with_bucket(world)
    put(world, key(1), record(charge, {"order": 1}))
    world.faults.add(Fault("lambda", "Invoke", "AccessDeniedException", 403, contains="charge"))
    cfg = s3_config(tmp_path)
    assert main(["once", "--config", cfg]) == 0
    capsys.readouterr()
    assert keys(world) == []
    assert world.depth(PARKING) == 1
    world.faults.clear()
    world.record()

    code, documents = cli_json(
        capsys, "redrive", "--config", cfg, "--from", "parking", "--execute", "--ramp", "none"
    )

    assert code == 0, documents
    assert documents[1]["job"]["counts"] == {f"resubmitted||{charge}": 1}
    assert invoked(world) == [{"order": 1}]
    assert world.depth(PARKING) == 0


def test_a_canary_ramp_over_an_s3_source_stops_leaves_the_rest_and_resumes(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failing function stops the ramp at its first canary with every object in place;
    resumed after the fix, each object reaches the function once and is deleted."""
    charge = world_with_bucket(world)
    for n in range(4):
        put(world, key(n), record(charge, {"order": n}))
    world.faults.add(Fault("lambda", "Invoke", "ServiceException", 500, contains="charge"))
    cfg = s3_config(tmp_path)

    code, documents = cli_json(
        capsys, "redrive", "--config", cfg, "--from", SOURCE, "--execute", "--canary-wait-s", "0"
    )

    assert code == 1, documents
    job = documents[1]["job"]
    assert job["state"] == "stopped"
    assert "1 canary failure(s)" in job["stop_reason"]
    assert keys(world) == [key(n) for n in range(4)]
    world.faults.clear()
    world.record()

    code, [resumed] = cli_json(capsys, "redrive", "--config", cfg, "--resume", job["id"])

    assert code == 0, resumed
    assert resumed["job"]["state"] == "done"
    assert resumed["job"]["counts"] == {f"resubmitted||{charge}": 4}
    assert sorted(payload["order"] for payload in invoked(world)) == [0, 1, 2, 3]
    assert keys(world) == []


def test_an_s3_outage_during_a_redrive_leaves_every_object_where_it_was(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bucket S3 will not list: the plan says so, the job sends nothing, every object stays."""
    charge = world_with_bucket(world)
    put(world, key(1), record(charge, {"order": 1}))
    world.faults.add(Fault("s3", "GET", "InternalError", 500, contains=f"/{BUCKET}"))
    world.record()
    cfg = s3_config(tmp_path)

    code, documents = cli_json(
        capsys, "redrive", "--config", cfg, "--from", SOURCE, "--execute", "--ramp", "none"
    )

    plan = documents[0]["plan"]
    assert plan["selected"] == 0
    assert any("listing failed" in error for error in plan["errors"]), plan
    assert world.invocations() == []
    world.faults.clear()
    assert keys(world) == [key(1)]
    # The job found nothing it could read, so it did nothing: exit 1, not a success.
    assert code == 1, documents
    assert documents[1]["job"]["counts"] == {}


def test_an_object_leased_by_a_live_replica_is_left_to_it(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An object the daemon holds (its ledger lease) is not sent by a redrive beside it; a
    redrive's own leases are released when it ends."""
    charge = world_with_bucket(world)
    put(world, key(0), record(charge, {"order": 0}))
    put(world, key(1), record(charge, {"order": 1}))
    world.record()
    cfg = s3_config(tmp_path)
    ledger = LedgerSettings(backend="sqlite", path=str(tmp_path / "ledger.sqlite3"))
    source = source_ref(BUCKET, PREFIX)

    async def lease(owner: str, wanted: list[str]) -> list[str]:
        # An hour ahead: the live replica's lease has not lapsed.
        async with open_ledger(
            ledger, None, owner=owner, clock=lambda: time.time() + 3_600.0
        ) as opened:
            return await Objects(None, opened).lease(source, wanted)

    assert anyio.run(lease, "replica", [key(0)]) == [key(0)]

    code, documents = cli_json(
        capsys, "redrive", "--config", cfg, "--from", SOURCE, "--execute", "--ramp", "none"
    )

    assert code == 0, documents
    assert invoked(world) == [{"order": 1}]
    assert keys(world) == [key(0)]
    # The redrive handed its own leases back: another replica takes key(1)'s at once.
    assert anyio.run(lease, "another", [key(1)]) == [key(1)]


def test_an_unknown_s3_source_is_refused_by_name(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bucket prefix retryd does not drain: exit 1, naming it, and how sources are named."""
    world_with_bucket(world)
    cfg = s3_config(tmp_path)

    code = main(["redrive", "--config", cfg, "--from", f"{BUCKET}/elsewhere/"])

    assert code == 1
    err = capsys.readouterr().err
    assert f"{BUCKET}/elsewhere/" in err
    assert "bucket/prefix" in err


@pytest.mark.parametrize("spelling", [SOURCE, f"s3://{SOURCE}", f"arn:aws:s3:::{SOURCE}"])
def test_inspect_names_an_s3_source_as_redrive_does(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], spelling: str
) -> None:
    """`retryd inspect` takes an S3 source by each of the names `redrive --from` takes."""
    bucket_world(world)
    cfg = s3_config(tmp_path)

    code, [document] = cli_json(capsys, "inspect", "--config", cfg, spelling)

    assert code == 0, document
    (source,) = document["queues"]
    assert source["name"] == SOURCE
    assert sum(group["count"] for group in source["groups"]) == 4
    assert document["missing"] == []


def test_a_canary_whose_record_comes_back_into_the_s3_source_stops_the_ramp(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The function takes the canary, fails again, and Lambda writes its record back into the
    bucket during the canary wait: the job stops, the rest left where they were."""
    charge = world_with_bucket(world)
    for n in range(3):
        put(world, key(n), record(charge, {"order": n}))
    world.record()
    cfg = s3_config(tmp_path)
    command = [
        *(sys.executable, "-m", "retryd", "redrive", "--config", cfg, "--from", SOURCE),
        *("--execute", "--ramp", "1", "--canary-wait-s", "10", "--output", "json"),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        deadline = time.monotonic() + 60
        while not world.invocations("charge"):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the canary never reached its function"
            time.sleep(0.1)
        (canary,) = invoked(world)
        # Lambda's on-failure destination writes the failed invocation's record again.
        put(world, key(10), record(charge, canary))
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
        process.communicate()

    assert process.returncode == 1, err
    job = json.loads(out[out.index('{\n  "job"') :])["job"]
    assert job["state"] == "stopped"
    assert "1 canary failure(s)" in job["stop_reason"]
    assert len(invoked(world)) == 1
    assert len(keys(world)) == 3
