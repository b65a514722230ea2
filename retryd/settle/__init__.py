"""Where a message ends: deleted after its copy is safe, hidden until due, or parked."""

from retryd.settle.dlq import DeadLetterQueues
from retryd.settle.parking import Parking, ParkRequest

__all__ = ["DeadLetterQueues", "ParkRequest", "Parking"]
