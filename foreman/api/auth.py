"""Who is asking: API keys, checked on every request before any route sees it.

With a key issued (``FOREMAN_AUTH=keys``, the default), every request but
``/healthz`` must carry a live one as ``Authorization: Bearer KEY`` (the
``openai`` client's ``api_key``, the ``ollama`` client's ``headers``); any other
is answered 401 in the route's dialect. With none issued, everyone is let in as
:data:`OPEN`, as before keys existed; the supervisor starts Foreman that way only
on loopback. The route reads the :class:`Principal` with :func:`principal`.

The :class:`Keychain` holds the current :class:`~foreman.events.tenants.Keyring`;
the keys routes fold each change they commit into it before they answer, so a
revoked key is refused from the next request on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from foreman.api.errors import error_response, openai_error_response, speaks_openai
from foreman.events.tenants import ApiKey, Keyring, Limits
from foreman.events.types import RecordedEvent
from foreman.openai_protocol import OpenAIError

SCOPE_KEY = "foreman.principal"
UNAUTHENTICATED = (
    "an API key is required: send it as 'Authorization: Bearer KEY' "
    "(an admin makes one with `foreman keys create`)"
)
UNKNOWN_KEY = "this API key is not valid: it is unknown, or was revoked"
OPEN_PATHS = frozenset({"/healthz"})


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


OPEN = Principal(tenant=None, admin=True)
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
        keyring = self.keyring
        for recorded in events:
            keyring = keyring.evolve(recorded)
        self.keyring = keyring

    def why_not_revoke(self, key: ApiKey) -> str | None:
        """Why revoking ``key`` would lock every admin out, if it would: it is the last
        live admin key and other keys stay (nobody could manage them), or it is the
        last key of all and Foreman listens beyond loopback (nobody could get in)."""
        live = [other for other in self.keyring.keys.values() if other.revoked_at is None]
        if not key.admin or sum(other.admin for other in live) > 1:
            return None
        if len(live) > 1:
            return "this is the last admin key: issue another admin key before revoking it"
        if self.required and not self.loopback:
            return (
                "this is the last key, and Foreman listens beyond loopback: revoked, it "
                "would let nobody in; issue another admin key first"
            )
        return None

    def limits(self, tenant: str | None) -> Limits:
        return self.keyring.limits_of(tenant)

    def who(self, authorization: str | None) -> Principal | str:
        """The principal a request's ``Authorization`` header makes it, or why none."""
        if not self.required or (self.loopback and not self.keyring.in_use):
            return OPEN
        scheme, _, secret = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            return UNAUTHENTICATED
        key = self.keyring.find(secret.strip())
        if key is None:
            return UNKNOWN_KEY
        return Principal(key.tenant, key.admin, key.id)


class KeyGuard:
    """ASGI middleware: a request without a live key is answered 401 before any route
    reads it (and before its body is read); one with a key carries its principal."""

    def __init__(self, app: ASGIApp, *, keychain: Keychain) -> None:
        self.app = app
        self.keychain = keychain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            who = OPEN
            if path not in OPEN_PATHS:
                found = self.keychain.who(Headers(scope=scope).get("authorization"))
                if isinstance(found, str):
                    await _refused(path, found)(scope, receive, send)
                    return
                who = found
            scope[SCOPE_KEY] = who
        await self.app(scope, receive, send)


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


principal = Annotated[Principal, Depends(principal_of)]
"""A route's parameter of this type is the request's :class:`Principal`."""
