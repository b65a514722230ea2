"""The ALB's OIDC sign-in: verify `x-amzn-oidc-data` and map its claims to a person and a role.

The ALB signs the token with ES256 and names its key by `kid` in the header; the
public key is fetched from the Region's key endpoint (a template setting, so tests
serve their own) and cached. The header's `signer` must be the configured ALB:
a token signed by another load balancer in the same Region verifies too, so this
is the check that makes the key endpoint ours. ALB pads its base64 segments; the
signature is over the segments as sent, so padding is only removed from the
signature segment, never from what was signed.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from typing import Any

import aiohttp
import jwt
from aiohttp import web

from retryd.console.auth import Identity, Refused, Role
from retryd.errors import ConfigError
from retryd.settings import ConsoleSettings

HEADER = "x-amzn-oidc-data"
ALGORITHM = "ES256"
# A kid is a UUID at AWS; anything else must not reach the URL template.
_KID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
KEYS_CACHED = 32
FETCH_TIMEOUT_S = 5.0
# Clock skew tolerated on `exp`, between the ALB and this host.
LEEWAY_S = 30
# arn:partition:service:region:account:resource
ARN_FIELDS = 6


def alb_region(alb_arn: str) -> str:
    """The Region field of an ELB ARN; ConfigError when it is not one."""
    parts = alb_arn.split(":")
    if len(parts) < ARN_FIELDS or parts[2] != "elasticloadbalancing" or not parts[3]:
        raise ConfigError([f"console.alb_arn: not a load balancer ARN: {alb_arn!r}"])
    return parts[3]


def _unverified_header(token: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise Refused(f"malformed sign-in token: {exc}") from None
    return header


def _claim_values(raw: object) -> set[str]:
    if isinstance(raw, str):
        return {part.strip() for part in re.split(r"[,\s]+", raw) if part.strip()}
    if isinstance(raw, list):
        return {str(item) for item in raw}
    return set()


class AlbOidcAuth:
    """Verifies the ALB's token; keys fetched once per kid."""

    def __init__(self, settings: ConsoleSettings, clock: Any = time.time) -> None:
        if not settings.alb_arn:
            raise ConfigError(['console.auth = "alb-oidc" needs console.alb_arn'])
        self._settings = settings
        self._signer = settings.alb_arn
        self._region = alb_region(settings.alb_arn)
        self._keys: OrderedDict[str, str] = OrderedDict()
        self._clock = clock

    async def _key(self, kid: str) -> str:
        if kid in self._keys:
            self._keys.move_to_end(kid)
            return self._keys[kid]
        url = self._settings.alb_key_url.format(region=self._region, kid=kid)
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url) as response,
            ):
                if response.status != 200:  # noqa: PLR2004 - HTTP OK
                    raise Refused(f"no ALB key {kid} (HTTP {response.status})")
                pem = await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Refused(f"cannot fetch the ALB key {kid}: {type(exc).__name__}", 503) from None
        self._keys[kid] = pem
        while len(self._keys) > KEYS_CACHED:
            self._keys.popitem(last=False)
        return pem

    async def identify(self, request: web.Request) -> Identity:
        token = request.headers.get(HEADER, "").strip()
        if not token:
            raise Refused("sign in through the load balancer (no x-amzn-oidc-data)")
        header = _unverified_header(token)
        if header.get("alg") != ALGORITHM:
            raise Refused("sign-in token not signed with ES256")
        if header.get("signer") != self._signer:
            raise Refused("sign-in token signed by another load balancer")
        kid = header.get("kid")
        if not isinstance(kid, str) or not _KID.match(kid):
            raise Refused("sign-in token has no usable kid")
        header_exp = header.get("exp")
        if isinstance(header_exp, int | float) and header_exp + LEEWAY_S < self._clock():
            raise Refused("sign-in token expired")
        pem = await self._key(kid)
        head, _, signature = token.rpartition(".")
        try:
            claims = jwt.decode(
                f"{head}.{signature.rstrip('=')}",
                pem,
                algorithms=[ALGORITHM],
                leeway=LEEWAY_S,
                options={"require": ["exp"], "verify_aud": False, "verify_iss": False},
            )
        except jwt.ExpiredSignatureError:
            raise Refused("sign-in token expired") from None
        except (jwt.PyJWTError, ValueError) as exc:
            raise Refused(f"sign-in token not valid: {type(exc).__name__}") from None
        return self._identity(claims)

    def _identity(self, claims: dict[str, Any]) -> Identity:
        name = claims.get(self._settings.identity_claim)
        if not isinstance(name, str) or not name:
            raise Refused(f"sign-in token has no {self._settings.identity_claim!r} claim", 403)
        groups = _claim_values(claims.get(self._settings.roles_claim))
        if groups & set(self._settings.operator_groups):
            return Identity(name, Role.OPERATOR)
        viewers = set(self._settings.viewer_groups)
        if not viewers or groups & viewers:
            return Identity(name, Role.VIEWER)
        raise Refused(f"{name} is in none of the console's groups", 403)
