"""The names of the environment variables retryd reads its settings from.

Kept apart from retryd.settings (pydantic) so that the command line can name them in
`--help` without importing the settings machinery.
"""

from __future__ import annotations

# Every setting can be given as RETRYD_<GROUP>__<FIELD>.
ENV_PREFIX = "RETRYD_"
# The settings file to read when no --config is given.
CONFIG_ENV = "RETRYD_CONFIG"
