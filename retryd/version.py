"""The installed distribution's name and version.

The import package and the command are `retryd`; the distribution on PyPI is
`retryd-aws`, because `retryd` there is an unrelated project.
"""

from __future__ import annotations

DISTRIBUTION = "retryd-aws"
SANDBOX_INSTALL_HINT = f"pip install '{DISTRIBUTION}[sandbox]'"


def package_version() -> str:
    """The installed version, or "unknown" when running from a never-installed source tree."""
    # Imported here: importlib.metadata costs about 10 ms, and most commands that import
    # this module (for the names above) never ask for the version.
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"
