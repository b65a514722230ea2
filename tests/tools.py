"""Platform tools some tests drive (promtool, prometheus, systemd-analyze), found or explained."""

from __future__ import annotations

import os
import shutil

import pytest

# Set by .ci/run when it could not install a missing Debian package, with the reason.
UNAVAILABLE_ENV = "CI_TOOLS_UNAVAILABLE"


def require_tool(name: str, package: str) -> str:
    """The tool's path; otherwise skip, saying how to get it.

    On CI (CI=true) a missing tool fails the test instead, because .ci/run installs
    it, unless .ci/run said the package truly could not be installed there.
    """
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"{name} is not installed (Debian package {package}; .ci/run installs it)"
    unavailable = os.environ.get(UNAVAILABLE_ENV)
    if os.environ.get("CI") == "true" and not unavailable:
        pytest.fail(f"{reason}, and CI must have it")
    pytest.skip(f"{reason}; on this machine: {unavailable}" if unavailable else reason)
