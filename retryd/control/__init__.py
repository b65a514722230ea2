"""Operator state: pauses, redrive jobs and audit records, kept in the ledger's backend."""

from retryd.control.factory import control_store
from retryd.control.store import ControlError, ControlStore, Doc

__all__ = ["ControlError", "ControlStore", "Doc", "control_store"]
