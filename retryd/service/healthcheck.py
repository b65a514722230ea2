"""`python -m retryd.service.healthcheck`: exit 0 when the local /healthz answers 200, else 1.

For container health checks (Docker HEALTHCHECK, ECS healthCheck), where slim
images have no curl. It reads only the environment, not the TOML file, so it
stays fast and works even while the configuration is broken: the port is
RETRYD_HTTP__PORT (default 9464) and the host RETRYD_HTTP__HOST when that is
a specific address (a wildcard listen address is probed on loopback). Set the
port in the environment, or pass --port, when the file changes it.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from http import HTTPStatus

DEFAULT_PORT = 9464
DEFAULT_TIMEOUT_S = 3.0
# Listening on every address means loopback answers too.
_WILDCARD_HOSTS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - compared, not bound


def probe_url(environ: Mapping[str, str], port: int | None = None) -> str:
    """The /healthz URL of the retryd configured by `environ` (or on `port`)."""
    host = environ.get("RETRYD_HTTP__HOST", "")
    host = _WILDCARD_HOSTS.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    chosen_port = port if port is not None else int(environ.get("RETRYD_HTTP__PORT", DEFAULT_PORT))
    return f"http://{host}:{chosen_port}/healthz"


def check(url: str, timeout_s: float) -> tuple[bool, str]:
    """(healthy, what was seen): healthy only on a 200 within the timeout."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - http URL built above
            status = response.status
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code}: {exc.read().decode(errors='replace').strip()}"
    except (OSError, ValueError) as exc:
        return False, f"{url}: {exc}"
    return status == HTTPStatus.OK, f"{url}: HTTP {status}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m retryd.service.healthcheck",
        description="Probe the local retryd's /healthz: exit 0 if healthy, 1 if not.",
    )
    parser.add_argument("--port", type=int, help="default: $RETRYD_HTTP__PORT, else 9464")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS")
    args = parser.parse_args(argv)
    try:
        url = probe_url(os.environ, args.port)
    except ValueError as exc:
        print(f"unhealthy: RETRYD_HTTP__PORT is not a port number: {exc}", file=sys.stderr)
        return 1
    healthy, seen = check(url, args.timeout)
    print(("healthy: " if healthy else "unhealthy: ") + seen, file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())
