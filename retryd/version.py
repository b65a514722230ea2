"""The installed distribution's name and version.

The import package and the command are `retryd`; the distribution on PyPI is
`retryd-aws`, because `retryd` there is an unrelated project.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "retryd-aws"
SANDBOX_INSTALL_HINT = f"pip install '{DISTRIBUTION}[sandbox]'"


def package_version() -> str:
    """The installed version, or "unknown" when running from a never-installed source tree."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"
