"""The one error the operator commands raise for bad input."""

from __future__ import annotations

from retryd.errors import ExitCode, RetrydError


class OperatorInputError(RetrydError):
    """A command line that cannot be acted on (a bad selector, glob, time or job id)."""

    # The exit code of every input error (as for an invalid configuration).
    exit_code = ExitCode.CONFIG
