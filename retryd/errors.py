"""Exceptions and exit codes: one root, one subclass per decision a caller makes.

Per-message results are values (`models.Decision`), never exceptions: these are
for the few things that stop a command. Each error class carries exactly one
`ExitCode`; the CLI's epilog and the documented table are generated from the enum.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Every exit status `retryd` returns; each value's docstring line is its meaning."""

    OK = 0
    CYCLE_FAILED = 1
    CONFIG = 2
    SANDBOX_EXTRA_MISSING = 3
    PARKING_QUEUE_MISSING = 4
    AWS = 5
    INTERRUPTED = 130
    TERMINATED = 143

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "ok: all of the work was done (also when the reader of the output went away, "
    "e.g. `| head`: the work is finished first, and the code is the work's)",
    ExitCode.CYCLE_FAILED: "not all of the work was done: a queue could not be read or is not "
    "a DLQ retryd knows, messages failed (in a redrive: failed or were refused), or a redrive "
    "stopped itself",
    ExitCode.CONFIG: "invalid configuration or command line (refused before anything was sent), "
    "or a message failed for a configuration reason (e.g. the ledger table is missing)",
    ExitCode.SANDBOX_EXTRA_MISSING: "the sandbox extra is not installed",
    ExitCode.PARKING_QUEUE_MISSING: "the parking queue does not exist",
    ExitCode.AWS: "AWS unusable: no region, unknown profile, no credentials, or AWS "
    "unreachable or refusing access",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C); a redrive job says how to resume it",
    ExitCode.TERMINATED: "terminated (SIGTERM) during a redrive job, which says how to resume it",
}


def exit_code_lines() -> list[str]:
    """One `N  meaning` line per exit code, for `--help` and the docs."""
    return [f"{int(code):>3}  {code.meaning}" for code in ExitCode]


class RetrydError(Exception):
    """Root of every error retryd raises on purpose."""

    exit_code: ExitCode = ExitCode.CYCLE_FAILED


class ConfigError(RetrydError):
    """The configuration is invalid: start-up stops and the message names the field."""

    exit_code = ExitCode.CONFIG

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        # One problem fits on one line; several get one line each.
        separator = " " if len(problems) == 1 else "\n  "
        super().__init__("invalid configuration:" + separator + separator.join(problems))


class UsageError(RetrydError):
    """Command-line arguments that cannot go together (argparse's own errors also exit 2)."""

    exit_code = ExitCode.CONFIG


class QueueNotFoundError(RetrydError):
    """A queue named on the command line that retryd cannot find: nothing is done."""

    exit_code = ExitCode.CYCLE_FAILED

    def __init__(self, command: str, names: list[str]) -> None:
        self.names = names
        super().__init__(
            f"{command}: no such queue: {', '.join(names)}; nothing was done "
            "(`retryd inspect` lists the DLQs retryd drains)"
        )


class AwsSetupError(RetrydError):
    """AWS cannot be used as set up: no region, an unknown profile, no credentials, no access."""

    exit_code = ExitCode.AWS


class SandboxUnavailableError(RetrydError):
    """The sandbox needs the optional moto extra, which is not installed."""

    exit_code = ExitCode.SANDBOX_EXTRA_MISSING


class ParkingQueueMissingError(RetrydError):
    """The parking queue does not exist: nothing may be parked, so nothing is drained."""

    exit_code = ExitCode.PARKING_QUEUE_MISSING

    def __init__(self, queue: str) -> None:
        self.queue = queue
        super().__init__(
            f"parking queue {queue!r} not found; create it (or fix parking.queue) before "
            "retryd drains anything, since parking is where unrecoverable messages go"
        )
