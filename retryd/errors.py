"""retryd's exceptions: one root, one subclass per decision a caller makes.

Per-message results are values (`models.Decision`), never exceptions: these are
for the few things that stop a command.
"""

from __future__ import annotations


class RetrydError(Exception):
    """Root of every error retryd raises on purpose."""

    exit_code: int = 1


class ConfigError(RetrydError):
    """The configuration is invalid: start-up stops and the message names the field."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


class SandboxUnavailableError(RetrydError):
    """The sandbox needs the optional moto extra, which is not installed."""

    exit_code = 3


class ParkingQueueMissingError(RetrydError):
    """The parking queue does not exist: nothing may be parked, so nothing is drained."""

    exit_code = 4

    def __init__(self, queue: str) -> None:
        self.queue = queue
        super().__init__(
            f"parking queue {queue!r} not found; create it (or fix parking.queue) before "
            "retryd drains anything, since parking is where unrecoverable messages go"
        )
