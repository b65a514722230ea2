"""The ALB's OIDC sign-in: tokens signed as the ALB signs them, keys served over loopback HTTP."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from anyio.from_thread import BlockingPortal, start_blocking_portal
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from retryd.console.alb_oidc import HEADER, AlbOidcAuth
from retryd.console.auth import Identity, Refused, Role
from retryd.errors import ConfigError
from retryd.settings import ConsoleSettings

ALB = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/retryd/50dc6c495c0c9188"
OTHER_ALB = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/other/1"


def _b64(raw: bytes) -> str:
    # As ALB does: base64url WITH its '=' padding, which some JWT libraries refuse.
    return base64.urlsafe_b64encode(raw).decode()


@dataclass
class Signer:
    """An ALB stand-in: a P-256 key, its kid, and the keys it serves by kid."""

    kid: str = field(default_factory=lambda: str(uuid.uuid4()))
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    fetched: list[str] = field(default_factory=list)

    def pem(self) -> str:
        return (
            self.key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def token(
        self,
        claims: dict[str, Any] | None = None,
        *,
        signer: str = ALB,
        alg: str = "ES256",
        exp_s: float | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> str:
        exp = int(exp_s if exp_s is not None else time.time() + 60)
        header = {
            "alg": alg,
            "kid": self.kid,
            "signer": signer,
            "iss": "https://idp",
            "client": "c",
            "typ": "JWT",
            "exp": exp,
        }
        body = {
            "sub": "u1",
            "email": "ana@example.com",
            "groups": ["oncall"],
            "exp": exp,
            "iss": "https://idp",
        }
        body.update(claims or {})
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(body).encode())}"
        if alg == "none":
            return signing_input + "."
        der = (key or self.key).sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


@dataclass
class KeyServer:
    portal: BlockingPortal
    url: str
    signer: Signer


@pytest.fixture
def keys() -> Iterator[KeyServer]:
    """A key endpoint on loopback serving the signer's PEM at /{region}/{kid}."""
    signer = Signer()
    known_kid = signer.kid

    async def key(request: web.Request) -> web.Response:
        signer.fetched.append(request.path)
        if request.match_info["kid"] != known_kid:
            return web.Response(status=404)
        return web.Response(text=signer.pem())

    app = web.Application()
    app.router.add_get("/{region}/{kid}", key)
    runner = web.AppRunner(app, access_log=None)
    with start_blocking_portal() as portal:

        async def start() -> int:
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            port: int = runner.addresses[0][1]
            return port

        port = portal.call(start)
        try:
            yield KeyServer(portal, f"http://127.0.0.1:{port}/{{region}}/{{kid}}", signer)
        finally:
            portal.call(runner.cleanup)


def _auth(keys: KeyServer, **overrides: Any) -> AlbOidcAuth:
    settings = ConsoleSettings(auth="alb-oidc", alb_arn=ALB, alb_key_url=keys.url, **overrides)
    return AlbOidcAuth(settings)


def _identify(keys: KeyServer, auth: AlbOidcAuth, token: str | None) -> Identity:
    headers = {HEADER: token} if token is not None else {}
    request = make_mocked_request("GET", "/", headers=headers)
    return keys.portal.call(auth.identify, request)


def test_a_valid_padded_token_names_the_person_and_its_key_is_cached(keys: KeyServer) -> None:
    """ALB's padded token verifies; the email names the person; the key is fetched once."""
    auth = _auth(keys)
    token = keys.signer.token()
    assert "=" in token, "the test token must carry ALB's padding"
    assert _identify(keys, auth, token) == Identity("ana@example.com", Role.VIEWER)
    assert _identify(keys, auth, keys.signer.token()) == Identity("ana@example.com", Role.VIEWER)
    assert keys.signer.fetched == [f"/eu-west-1/{keys.signer.kid}"]


def test_groups_map_to_operator_and_viewer(keys: KeyServer) -> None:
    """The roles claim (a list or a comma-separated string) picks the role; others are 403."""
    auth = _auth(keys, operator_groups=["sre"], viewer_groups=["dev"], identity_claim="sub")
    assert _identify(keys, auth, keys.signer.token({"groups": ["dev", "sre"]})) == Identity(
        "u1", Role.OPERATOR
    )
    assert _identify(keys, auth, keys.signer.token({"groups": "dev, other"})).role is Role.VIEWER
    with pytest.raises(Refused) as refused:
        _identify(keys, auth, keys.signer.token({"groups": ["sales"]}))
    assert refused.value.status == 403


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda s: s.token(signer=OTHER_ALB), "another load balancer"),
        (lambda s: s.token(key=ec.generate_private_key(ec.SECP256R1())), "not valid"),
        (lambda s: s.token(exp_s=time.time() - 3600), "expired"),
        (lambda s: s.token(alg="none"), "ES256"),
        (lambda s: s.token(alg="HS256"), "ES256"),
        (lambda s: "not.a.token", "malformed"),
        (lambda s: _tampered(s.token()), "not valid"),
    ],
    ids=["wrong-signer", "wrong-key", "expired", "alg-none", "alg-hs256", "garbage", "tampered"],
)
def test_bad_tokens_are_refused(keys: KeyServer, make: Any, why: str) -> None:
    """Wrong signer, wrong key, expired, alg none or HS256, garbage: 401 with the reason."""
    with pytest.raises(Refused, match=why) as refused:
        _identify(keys, _auth(keys), make(keys.signer))
    assert refused.value.status == 401


def test_no_header_is_refused(keys: KeyServer) -> None:
    """A request that did not come through the ALB's sign-in: 401."""
    with pytest.raises(Refused, match="x-amzn-oidc-data"):
        _identify(keys, _auth(keys), None)


def test_an_unknown_kid_is_refused_and_a_kid_cannot_bend_the_url(keys: KeyServer) -> None:
    """A kid the endpoint does not know is 401; a kid with '/' or '..' is never fetched."""
    auth = _auth(keys)
    keys.signer.kid = "0000-unknown"
    with pytest.raises(Refused, match="no ALB key"):
        _identify(keys, auth, keys.signer.token())
    keys.signer.kid = "../../admin"
    with pytest.raises(Refused, match="kid"):
        _identify(keys, auth, keys.signer.token())
    assert keys.signer.fetched == ["/eu-west-1/0000-unknown"]


def test_alb_oidc_needs_a_load_balancer_arn() -> None:
    """alb-oidc without alb_arn, or with something that is not an ELB ARN, will not start."""
    with pytest.raises(ConfigError, match=r"needs console\.alb_arn"):
        AlbOidcAuth(ConsoleSettings(auth="alb-oidc"))
    with pytest.raises(ConfigError, match="not a load balancer ARN"):
        AlbOidcAuth(ConsoleSettings(auth="alb-oidc", alb_arn="arn:aws:sqs:eu-west-1:1:q"))


def _tampered(token: str) -> str:
    """The same token with its claims changed after signing (the person made an operator)."""
    header, body, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body))
    claims["email"] = "eve@example.com"
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"
