"""Who is asking: one authenticator per `[console] auth` mode, chosen once at start-up.

- token: `Authorization: Bearer` compared in constant time with the viewer and
  operator tokens (from the settings, the environment or files);
- none: everyone is the operator `local`, allowed only on a loopback address;
- alb-oidc: the ALB's signed `x-amzn-oidc-data` header (alb_oidc.py).
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from aiohttp import web
from pydantic import SecretStr

from retryd.errors import ConfigError
from retryd.settings import ConsoleSettings

LOCAL_USER = "local"


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Identity:
    """A signed-in person and what they may do."""

    name: str
    role: Role

    @property
    def operator(self) -> bool:
        return self.role is Role.OPERATOR


class Refused(Exception):  # noqa: N818 - a verdict, not a failure of the console
    """The request carries no acceptable identity: answered 401 (or 403) with `why`."""

    def __init__(self, why: str, status: int = 401) -> None:
        super().__init__(why)
        self.why = why
        self.status = status


class Authenticator(Protocol):
    async def identify(self, request: web.Request) -> Identity:
        """The requester, or Refused."""
        ...


class NoAuth:
    """Loopback only: the local user is the operator `local`."""

    async def identify(self, request: web.Request) -> Identity:
        return Identity(LOCAL_USER, Role.OPERATOR)


def _secret(value: SecretStr | None, path: str | None, field: str) -> str | None:
    if value is not None and path is not None:
        raise ConfigError([f"console.{field}: give the token or its file, not both"])
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"console.{field}_file: cannot read {path}: {exc}"]) from None
        return text or None
    return value.get_secret_value() if value is not None else None


class TokenAuth:
    """Bearer tokens: one for viewers, one for operators."""

    # Shorter tokens can be guessed online; 32 characters is what `openssl rand -hex 16` gives.
    MIN_CHARS = 32

    def __init__(self, settings: ConsoleSettings) -> None:
        self._tokens: list[tuple[bytes, Role]] = []
        for field, role in (("operator_token", Role.OPERATOR), ("viewer_token", Role.VIEWER)):
            token = _secret(getattr(settings, field), getattr(settings, f"{field}_file"), field)
            if token is None:
                continue
            if len(token) < self.MIN_CHARS:
                raise ConfigError([f"console.{field}: at least {self.MIN_CHARS} characters"])
            self._tokens.append((token.encode(), role))
        if not self._tokens:
            raise ConfigError(
                [
                    'console.auth = "token" needs console.viewer_token or console.operator_token '
                    "(or their _file)"
                ]
            )

    async def identify(self, request: web.Request) -> Identity:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Refused("sign in: send Authorization: Bearer TOKEN")
        presented = given.strip().encode("utf-8", "replace")
        role: Role | None = None
        # Every token is compared, whatever matched, so the time taken says nothing.
        for token, token_role in self._tokens:
            if hmac.compare_digest(presented, token) and role is None:
                role = token_role
        if role is None:
            raise Refused("unknown token")
        return Identity(f"{role.value}-token", role)


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or `localhost`) only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_none_allowed(host: str) -> None:
    """`auth = "none"` is only for a console nobody else can reach."""
    if not is_loopback(host):
        raise ConfigError(
            [f'console.auth = "none" only listens on loopback (127.0.0.1, ::1), not {host}']
        )
