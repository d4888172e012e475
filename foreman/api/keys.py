"""Keys and tenants' limits, for admins: ``/keys`` and ``/tenants/{name}/limits``.

Each change is an event committed through the journal (``KeyIssued``,
``KeyRevoked``, ``TenantLimitsSet``) and folded into the
:class:`~foreman.api.auth.Keychain` before the answer: a key works, or stops
working, from the next request on. A key itself is in one answer only, the one
that made it; the log keeps its SHA-256.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import trio
from fastapi import APIRouter, Path, params
from pydantic import BaseModel, ConfigDict, Field

from foreman.actors import JournalClient
from foreman.api.auth import Keychain, principal, require_admin
from foreman.api.errors import ApiProblem
from foreman.api.schemas import ApiError
from foreman.events.tenants import ApiKey, Limits, limits_set, new_key
from foreman.events.types import KeyRevoked, TenantLimitsSet, TenantName, key_stream, tenant_stream

ADMIN_ONLY = "managing keys takes an admin key (`foreman keys create --admin`)"
TENANT_PATH = Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LimitsBody(_Model):
    """A tenant's share and limits; a field left out is unlimited (weight: 1)."""

    weight: Annotated[float, Field(gt=0, le=1000)] = Field(
        1.0, description="Its share of a model's queue against other tenants' (fair share)."
    )
    max_queued: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Jobs it may have queued at once (then 429), batch lines aside."
    )
    rate: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Submissions it may make per minute (then 429)."
    )
    batch_share: Annotated[float, Field(gt=0, le=1)] | None = Field(
        None, description="The fraction of the backends' slots its batch lines may hold."
    )


class CreateKey(_Model):
    """``POST /keys``: a key for ``tenant``; a limit given here changes the tenant's, the
    others stay as they are."""

    tenant: TenantName
    admin: bool = Field(False, description="Sees and acts on every tenant's work; manages keys.")
    weight: Annotated[float, Field(gt=0, le=1000)] | None = None
    max_queued: Annotated[int, Field(ge=1)] | None = None
    rate: Annotated[int, Field(ge=1)] | None = None
    batch_share: Annotated[float, Field(gt=0, le=1)] | None = None


class LimitsView(LimitsBody):
    set_at: str | None = Field(description="When they were set; null: never (the defaults).")


class KeyView(_Model):
    id: str
    tenant: str
    admin: bool
    prefix: str = Field(description="The key's first characters, to tell it apart.")
    issued_at: str
    revoked_at: str | None
    limits: LimitsView = Field(description="Its tenant's.")


class NewKey(KeyView):
    key: str = Field(description="The key itself: shown this once, never again.")


class KeyList(_Model):
    keys: list[KeyView]


@dataclass(frozen=True, slots=True)
class KeysApi:
    journal: JournalClient
    keychain: Keychain
    changing: trio.Lock = field(default_factory=trio.Lock)
    """One change at a time: a check (the last admin key) holds until its append."""


def key_routes(api: KeysApi, writes: params.Depends) -> APIRouter:
    """``writes``: the dependency of a route that appends (:mod:`foreman.api.writable`)."""
    router = APIRouter(tags=["keys"])
    errors: dict[int | str, dict[str, Any]] = {
        400: {"model": ApiError, "description": "The body is not JSON."},
        403: {"model": ApiError, "description": "Not an admin key."},
        404: {"model": ApiError, "description": "No such key."},
        409: {"model": ApiError, "description": "Already revoked, or the last admin key."},
        422: {"model": ApiError, "description": "A field is missing or invalid."},
        503: {"model": ApiError, "description": "The event log cannot be written now."},
    }

    @router.post(
        "/keys",
        operation_id="create_key",
        status_code=201,
        response_model=NewKey,
        responses=errors,
        dependencies=[writes],
    )
    async def create(body: CreateKey, who: principal) -> NewKey:
        """Issue a key (shown once); with limits, set its tenant's too."""
        require_admin(who, ADMIN_ONLY)
        key_id, secret, issued = new_key(body.tenant, admin=body.admin)
        async with api.changing:
            committed = await api.journal.append(key_stream(key_id), [issued], expected_version=0)
            api.keychain.fold(committed)
            changes = body.model_dump(exclude={"tenant", "admin"}, exclude_none=True)
            if changes:
                event = limits_set(api.keychain.limits(body.tenant), **changes)
                await _set_limits(api, body.tenant, event)
        return NewKey(**_view(api, api.keychain.keyring.keys[key_id]).model_dump(), key=secret)

    @router.get("/keys", operation_id="list_keys", response_model=KeyList, responses=errors)
    async def list_(who: principal) -> KeyList:
        """Every key issued, revoked ones included, oldest first; never the keys."""
        require_admin(who, ADMIN_ONLY)
        return KeyList(keys=[_view(api, key) for key in api.keychain.keyring.keys.values()])

    @router.delete(
        "/keys/{key_id}",
        operation_id="revoke_key",
        response_model=KeyView,
        responses=errors,
        dependencies=[writes],
    )
    async def revoke(key_id: str, who: principal) -> KeyView:
        """Revoke a key: it is refused from the next request on."""
        require_admin(who, ADMIN_ONLY)
        async with api.changing:
            key = api.keychain.keyring.keys.get(key_id)
            if key is None:
                raise ApiProblem(404, f"no key {key_id!r}: GET /keys lists them")
            refused = api.keychain.why_not_revoke(key)
            if refused is not None:
                raise ApiProblem(409, refused)
            revoked = await api.journal.append(key_stream(key_id), [KeyRevoked()])
            api.keychain.fold(revoked)
        return _view(api, api.keychain.keyring.keys[key_id])

    @router.put(
        "/tenants/{tenant}/limits",
        operation_id="set_tenant_limits",
        response_model=LimitsView,
        responses=errors,
        dependencies=[writes],
    )
    async def set_limits(
        tenant: Annotated[str, TENANT_PATH], body: LimitsBody, who: principal
    ) -> LimitsView:
        """Replace a tenant's share and limits."""
        require_admin(who, ADMIN_ONLY)
        async with api.changing:
            await _set_limits(api, tenant, TenantLimitsSet(**body.model_dump()))
        return limits_view(api.keychain.limits(tenant))

    return router


async def _set_limits(api: KeysApi, tenant: str, event: TenantLimitsSet) -> None:
    api.keychain.fold(await api.journal.append(tenant_stream(tenant), [event]))


def limits_view(limits: Limits) -> LimitsView:
    return LimitsView(
        weight=limits.weight,
        max_queued=limits.max_queued,
        rate=limits.rate,
        batch_share=limits.batch_share,
        set_at=limits.set_at,
    )


def _view(api: KeysApi, key: ApiKey) -> KeyView:
    return key_view(key, api.keychain.limits(key.tenant))


def key_view(key: ApiKey, limits: Limits) -> KeyView:
    return KeyView(
        id=key.id,
        tenant=key.tenant,
        admin=key.admin,
        prefix=key.prefix,
        issued_at=key.issued_at,
        revoked_at=key.revoked_at,
        limits=limits_view(limits),
    )
