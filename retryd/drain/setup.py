"""What a cycle, a plan and a redrive find in one place before they read a message.

The parking queue (located by name: ParkingQueueMissingError stops the work in
that place) and the survey of the DLQs beside it, with the ARNs no message may
be resubmitted into. Built here once, so the three paths (and the console) see
one place the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from retryd.discovery.survey import Survey, survey_queues
from retryd.models import QueueRef, queue_ref_from_url
from retryd.settings import Settings
from retryd.settle.parking import Parking, locate_parking

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient


@dataclass(frozen=True, slots=True)
class PlaceSetup:
    """One place's parking queue and DLQs, as found now."""

    parking: Parking
    parking_queue: QueueRef
    survey: Survey


async def locate(sqs: SQSClient, settings: Settings) -> tuple[Parking, QueueRef]:
    """The parking queue and its QueueRef; ParkingQueueMissingError when it does not exist."""
    parking = await locate_parking(sqs, settings)
    return parking, queue_ref_from_url(parking.queue_url, sqs.meta.region_name)


async def set_up_place(
    sqs: SQSClient, settings: Settings, parking: tuple[Parking, QueueRef] | None = None
) -> PlaceSetup:
    """Locate the parking queue (unless already `parking`) and survey the DLQs beside it."""
    found, ref = parking or await locate(sqs, settings)
    return PlaceSetup(found, ref, await survey_queues(sqs, settings, ref.arn))
