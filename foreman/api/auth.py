"""Who is asking: API keys, checked on every request before any route sees it.

With a key issued (``FOREMAN_AUTH=keys``, the default), every request but
``/healthz`` must carry a live one as ``Authorization: Bearer KEY`` (the
``openai`` client's ``api_key``, the ``ollama`` client's ``headers``); any other
is answered 401 in the route's dialect. With none issued, everyone is let in as
:data:`OPEN`, as before keys existed; the supervisor starts Foreman that way only
on loopback, and a request a proxy forwarded (``X-Forwarded-For``, ``Forwarded``,
``X-Real-IP``) is not let in so: the proxy may serve the world. The route reads the
:class:`Principal` with :func:`principal`.

The :class:`Keychain` holds the current :class:`~foreman.events.tenants.Keyring`;
the keys routes fold each change they commit into it before they answer, so a
revoked key is refused from the next request on.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from foreman.api.errors import ApiProblem, error_response, openai_error_response, speaks_openai
from foreman.api.rates import SubmissionRates
from foreman.api.ui import UI_PATHS
from foreman.events.tenants import ApiKey, Keyring, Limits, fold
from foreman.events.types import RecordedEvent
from foreman.openai_protocol import OpenAIError

SCOPE_KEY = "foreman.principal"
UNAUTHENTICATED = (
    "an API key is required: send it as 'Authorization: Bearer KEY' "
    "(an admin makes one with `foreman keys create`)"
)
UNKNOWN_KEY = "this API key is not valid: it is unknown, or was revoked"
PROXIED = (
    "this request came through a proxy, and Foreman is open without keys to its own "
    "machine only: issue keys (`foreman keys create`) to serve it through a proxy"
)
FORWARDED = frozenset({"forwarded", "x-forwarded-for", "x-real-ip"})
"""Headers a reverse proxy adds: a request that carries one did not start here."""
OPEN_PATHS = frozenset({"/healthz"}) | UI_PATHS
"""Asked for no key: health, and the dashboard's page and assets (they hold no data)."""
SCRAPE_PATH = "/metrics"
"""The one path ``FOREMAN_METRICS_TOKEN`` opens (ADR-0044)."""
SUBMISSIONS = frozenset(
    ("POST", path)
    for path in (
        "/jobs",
        "/api/chat",
        "/api/generate",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/batches",
    )
)
"""The requests that make work, counted against a tenant's rate."""


@dataclass(frozen=True, slots=True)
class Principal:
    """The key a request came with: its tenant, and whether it is an admin's."""

    tenant: str | None
    """Whose the work it submits is (None: no key is in use)."""
    admin: bool
    key_id: str | None = None

    @property
    def sees(self) -> str | None:
        """The tenant whose work it may see and act on; None: everyone's."""
        return None if self.admin else self.tenant

    def owns(self, tenant: str | None) -> bool:
        """Whether it may see and act on work of ``tenant``."""
        return self.admin or tenant == self.tenant


def require_admin(who: Principal, refusal: str) -> None:
    """403 with ``refusal`` unless ``who`` holds an admin key (or no key is in use)."""
    if not who.admin:
        raise ApiProblem(403, refusal)


OPEN = Principal(tenant=None, admin=True)
SCRAPER = Principal(tenant=None, admin=False, key_id="metrics-token")
"""A request with ``FOREMAN_METRICS_TOKEN``: it may read ``/metrics``, nothing else."""
"""Anyone, when no key is in use: sees everything, as before keys existed."""


class Keychain:
    """The keyring requests are checked against, changed as key events commit."""

    def __init__(self, keyring: Keyring, *, required: bool = True, loopback: bool = True) -> None:
        self.keyring = keyring
        self.required = required
        """False with ``FOREMAN_AUTH=off``: no key is asked for."""
        self.loopback = loopback
        """Listening on loopback only: with no key in use, everyone is let in."""

    def fold(self, events: list[RecordedEvent]) -> None:
        self.keyring = fold(events, self.keyring)

    def why_not_revoke(self, key: ApiKey) -> str | None:
        return self.keyring.why_not_revoke(key, exposed=self.required and not self.loopback)

    def limits(self, tenant: str | None) -> Limits:
        return self.keyring.limits_of(tenant)

    def who(self, headers: Headers) -> Principal | str:
        """The principal a request's headers make it, or why none."""
        if not self.required:
            return OPEN
        if self.loopback and not self.keyring.in_use:
            # Open to this machine only: not to whoever a proxy on it passes along.
            return PROXIED if FORWARDED.intersection(headers) else OPEN
        scheme, _, secret = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            return UNAUTHENTICATED
        key = self.keyring.find(secret.strip())
        if key is None:
            return UNKNOWN_KEY
        return Principal(key.tenant, key.admin, key.id)


class KeyGuard:
    """ASGI middleware: a request without a live key is answered 401 before any route
    reads it (and before its body is read), and a submission beyond its tenant's rate
    429; one let in carries its principal."""

    def __init__(
        self, app: ASGIApp, *, keychain: Keychain, scrape_token: str | None = None
    ) -> None:
        self.app = app
        self.keychain = keychain
        self.scrape_token = scrape_token
        self.rates = SubmissionRates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            who = OPEN
            if path == SCRAPE_PATH and self._scraper(Headers(scope=scope)):
                who = SCRAPER
            elif path not in OPEN_PATHS:
                found = self.keychain.who(Headers(scope=scope))
                if isinstance(found, str):
                    await _refused(path, found)(scope, receive, send)
                    return
                who = found
                refused = self._over_rate(scope, who)
                if refused is not None:
                    await refused(scope, receive, send)
                    return
            scope[SCOPE_KEY] = who
        await self.app(scope, receive, send)

    def _scraper(self, headers: Headers) -> bool:
        """Whether the request carries the scrape token (compared in constant time)."""
        if self.scrape_token is None:
            return False
        scheme, _, secret = headers.get("authorization", "").partition(" ")
        given = secret.strip().encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(given, self.scrape_token.encode())

    def _over_rate(self, scope: Scope, who: Principal) -> Response | None:
        """429 for a submission beyond its tenant's rate (``foreman keys limits --rate``)."""
        if who.tenant is None or (scope["method"], scope["path"]) not in SUBMISSIONS:
            return None
        rate = self.keychain.limits(who.tenant).rate
        wait = self.rates.take(who.tenant, rate)
        if wait is None:
            return None
        message = f"tenant {who.tenant} may submit {rate} requests a minute: try again in {wait} s"
        headers = {"Retry-After": str(wait)}
        if speaks_openai(scope["path"]):
            error = OpenAIError(429, message, code="rate_limit_exceeded")
            return openai_error_response(error, headers)
        return error_response(scope["path"], 429, message, headers)


def _refused(path: str, why: str) -> Response:
    """401 in the route's dialect; OpenAI's names the bad key as its clients expect."""
    headers = {"WWW-Authenticate": 'Bearer realm="foreman"'}
    if speaks_openai(path):
        return openai_error_response(OpenAIError(401, why, code="invalid_api_key"), headers)
    return error_response(path, 401, why, headers)


def principal_of(request: Request) -> Principal:
    who = request.scope[SCOPE_KEY]  # KeyGuard put it there: no route is reached without
    assert isinstance(who, Principal)
    return who


async def _principal(request: Request) -> Principal:
    """:func:`principal_of` as a dependency: ``async``, since FastAPI runs a plain
    function on a worker thread, and that hop cost every request a third of a
    millisecond of CPU."""
    return principal_of(request)


principal = Annotated[Principal, Depends(_principal)]
"""A route's parameter of this type is the request's :class:`Principal`."""
