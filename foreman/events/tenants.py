"""API keys and tenants' limits, folded from the log.

A key's stream (``keys/key_<ULID>``) holds its ``KeyIssued`` and perhaps its
``KeyRevoked``; a tenant's stream (``tenants/<name>``) each ``TenantLimitsSet``.
The :class:`Keyring` is their fold: a pure function of those events, small enough
to be kept whole in memory and asked on every request. Only a key's SHA-256 is
stored (a key is 256 random bits: a fast hash is enough, there is nothing to
guess), so neither the log nor a backup of it gives a key away.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, cast

from foreman.events.types import (
    KEY_ID_PREFIX,
    KEY_STREAM_PREFIX,
    TENANT_STREAM_PREFIX,
    KeyIssued,
    RecordedEvent,
    TenantLimitsSet,
    UnreadableEvent,
)
from foreman.ids import new_ulid

if TYPE_CHECKING:
    from foreman.events.log import EventLog

KEY_PREFIX = "fm-"
"""Every key Foreman makes starts so: a secret scanner (or a person) can spot one."""
SHOWN = 10
"""The first characters of a key kept to tell keys apart in a listing."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    tenant: str
    admin: bool
    sha256: str
    prefix: str
    issued_at: str
    revoked_at: str | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """A tenant's share and limits: :class:`~foreman.events.types.TenantLimitsSet`'s
    fields, the defaults when none was ever set."""

    weight: float = 1.0
    max_queued: int | None = None
    rate: int | None = None
    batch_share: float | None = None
    set_at: str | None = None


NO_LIMITS = Limits()


def _frozen() -> Mapping[str, object]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Keyring:
    """Every key ever issued and every tenant's limits, as of the last event folded."""

    keys: Mapping[str, ApiKey] = field(default_factory=_frozen)  # type: ignore[arg-type]
    """By id, in the order they were issued."""
    limits: Mapping[str, Limits] = field(default_factory=_frozen)  # type: ignore[arg-type]
    _by_hash: Mapping[str, str] = field(default_factory=_frozen)  # type: ignore[arg-type]

    @property
    def in_use(self) -> bool:
        """Whether some key is issued and not revoked: then every request needs one."""
        return any(key.revoked_at is None for key in self.keys.values())

    def find(self, secret: str) -> ApiKey | None:
        """The live key ``secret`` is, or None (unknown, or revoked)."""
        key_id = self._by_hash.get(digest(secret))
        key = self.keys.get(key_id) if key_id is not None else None
        return key if key is not None and key.revoked_at is None else None

    def limits_of(self, tenant: str | None) -> Limits:
        return self.limits.get(tenant, NO_LIMITS) if tenant is not None else NO_LIMITS

    def why_not_revoke(self, key: ApiKey, *, exposed: bool) -> str | None:
        """Why ``key`` may not be revoked, if so: it was already; or revoking it would
        lock every admin out, being the last live admin key while other keys stay
        (nobody could manage them), or the last key of all while Foreman is
        ``exposed`` (beyond loopback: nobody could get in)."""
        if key.revoked_at is not None:
            return f"key {key.id} was revoked at {key.revoked_at}"
        live = [other for other in self.keys.values() if other.revoked_at is None]
        if not key.admin or sum(other.admin for other in live) > 1:
            return None
        if len(live) > 1:
            return "this is the last admin key: issue another admin key before revoking it"
        if exposed:
            return (
                "this is the last key, and Foreman listens beyond loopback: revoked, it "
                "would let nobody in; issue another admin key first"
            )
        return None

    def evolve(self, recorded: RecordedEvent) -> Keyring:
        """The keyring after ``recorded`` (unchanged by any other stream's events, and
        by an event that cannot be read back: a key it issued stays unusable)."""
        stream = recorded.stream
        try:
            if stream.startswith(KEY_STREAM_PREFIX):
                return self._key_changed(stream.removeprefix(KEY_STREAM_PREFIX), recorded)
            if stream.startswith(TENANT_STREAM_PREFIX) and recorded.type == "TenantLimitsSet":
                event = cast(TenantLimitsSet, recorded.event)
                limits = Limits(
                    event.weight,
                    event.max_queued,
                    event.rate,
                    event.batch_share,
                    recorded.recorded_at,
                )
                tenant = stream.removeprefix(TENANT_STREAM_PREFIX)
                return replace(self, limits=MappingProxyType({**self.limits, tenant: limits}))
        except UnreadableEvent:
            pass
        return self

    def _key_changed(self, key_id: str, recorded: RecordedEvent) -> Keyring:
        if recorded.type == "KeyIssued":
            event = cast(KeyIssued, recorded.event)
            key = ApiKey(
                key_id, event.tenant, event.admin, event.sha256, event.prefix, recorded.recorded_at
            )
            return replace(
                self,
                keys=MappingProxyType({**self.keys, key_id: key}),
                _by_hash=MappingProxyType({**self._by_hash, key.sha256: key_id}),
            )
        if recorded.type == "KeyRevoked" and key_id in self.keys:
            revoked = replace(self.keys[key_id], revoked_at=recorded.recorded_at)
            return replace(self, keys=MappingProxyType({**self.keys, key_id: revoked}))
        return self


def fold(events: Iterable[RecordedEvent], keyring: Keyring | None = None) -> Keyring:
    keyring = keyring or Keyring()
    for recorded in events:
        keyring = keyring.evolve(recorded)
    return keyring


def read_keyring(log: EventLog) -> Keyring:
    """The keyring as the log stands (by the streams' index: no scan of the log)."""
    rows = log.conn.execute(
        "SELECT seq FROM events WHERE (stream >= ? AND stream < ?) OR (stream >= ? AND stream < ?)"
        " ORDER BY seq",
        (*_prefix_range(KEY_STREAM_PREFIX), *_prefix_range(TENANT_STREAM_PREFIX)),
    )
    return fold(log.events_at([seq for (seq,) in rows]))


def _prefix_range(prefix: str) -> tuple[str, str]:
    """The bounds of the strings that start with ``prefix`` (one ending in ``/``)."""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


def limits_set(current: Limits, **changes: float | int | None) -> TenantLimitsSet:
    """The event that sets a tenant's limits to ``current`` with ``changes`` (those not
    None) applied."""
    fields = {
        "weight": current.weight,
        "max_queued": current.max_queued,
        "rate": current.rate,
        "batch_share": current.batch_share,
    }
    return TenantLimitsSet(**fields | {k: v for k, v in changes.items() if v is not None})


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_key(tenant: str, *, admin: bool) -> tuple[str, str, KeyIssued]:
    """A new key's id, the key itself (to show once), and the event that issues it."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    issued = KeyIssued(tenant=tenant, admin=admin, sha256=digest(secret), prefix=secret[:SHOWN])
    return f"{KEY_ID_PREFIX}{new_ulid()}", secret, issued
