"""Sending: one resubmitter module per target type, the router, and the sender around them."""

from retryd.targets.base import Delivery, Resubmitter
from retryd.targets.router import TargetRouter

__all__ = ["Delivery", "Resubmitter", "TargetRouter"]
