"""The middleware every console response goes through, from sign-in to security headers.

Sign-in, the operator role and same-origin for every change, the security headers,
metrics, and a plain 500 page instead of a traceback.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from urllib.parse import urlsplit

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from retryd.console.auth import Authenticator, Identity, Refused
from retryd.console.metrics import ConsoleMetrics

log = structlog.get_logger("retryd.console")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Set on the request by the middleware, for the handlers.
IDENTITY_KEY: web.RequestKey[Identity] = web.RequestKey("identity", Identity)
CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Probes and scrapes: answered without a sign-in (they say nothing about messages).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def identity(request: web.Request) -> Identity:
    """The signed-in requester (set by the middleware before any handler runs)."""
    return request[IDENTITY_KEY]


def same_origin(request: web.Request) -> bool:
    """A browser's own page sent it: Sec-Fetch-Site says so, or Origin is this host.

    As Go 1.25's CrossOriginProtection: Sec-Fetch-Site is trusted when present; an
    older client without it must send an Origin naming this host; a request with
    neither is refused (a script with a stolen token is not a browser, but it is
    also not who a CSRF attack uses).
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("Origin")
    if not origin or origin == "null":
        return False
    return urlsplit(origin).netloc.lower() == request.host.lower()


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", content_type="text/plain")


def _route(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


def security_middleware(auth: Authenticator, metrics: ConsoleMetrics) -> Middleware:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = uuid.uuid4().hex[:12]
        try:
            response = await _guarded(request, handler, auth)
        except web.HTTPRedirection as exc:
            # A form's answer: back to the page (Post/Redirect/Get).
            response = web.Response(
                status=exc.status, headers={"Location": exc.headers["Location"]}
            )
        except web.HTTPException as exc:
            response = _plain(exc.status, exc.reason)
        except Exception:
            log.exception("console-error", request_id=request_id, path=request.path)
            response = _plain(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                f"internal error (request {request_id}; the console's log has the details)",
            )
        response.headers.update(HEADERS)
        response.headers["X-Request-Id"] = request_id
        metrics.requests.labels(_route(request), str(response.status)).inc()
        return response

    return guard


async def _guarded(
    request: web.Request, handler: Handler, auth: Authenticator
) -> web.StreamResponse:
    if request.path in OPEN_PATHS or request.path.startswith("/static/"):
        return await handler(request)
    try:
        who = await auth.identify(request)
    except Refused as refused:
        return _plain(refused.status, refused.why)
    request[IDENTITY_KEY] = who
    if request.method in CHANGES:
        if not who.operator:
            return _plain(HTTPStatus.FORBIDDEN, f"{who.name} is a viewer: only operators act")
        if not same_origin(request):
            return _plain(HTTPStatus.FORBIDDEN, "cross-origin request refused")
    return await handler(request)
