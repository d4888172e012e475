"""The deliveries projection: the webhook outbox, folded from the log (ADR-0031).

A job submitted with ``state_webhook_url`` owes its receiver a notification for
each state it enters. Each notification is derived from the job event itself,
in the same transaction that commits it, so no state change can be committed
without its notification: that is the outbox. Its id (the ``webhook-id``) is
the ULID of that job event. Attempts and outcomes are events on the job's
delivery stream. The state, keyed by job, is the job's deliveries in order::

    job event (JobSubmitted, JobStarted, JobRequeued, JobSucceeded, JobFailed,
               JobCancelled, JobQuarantined) --> a new delivery, pending
    pending --WebhookAttemptFailed--> pending      (attempts + 1, retry_at)
    pending --WebhookDelivered--> delivered
    pending --WebhookAbandoned--> abandoned
    delivered | abandoned --WebhookRedeliveryRequested--> pending (attempts from 0)
    JobPruned --> (rows removed); refused while a delivery is pending

``pending_since`` is the ``seq`` that made a delivery pending (its job event,
or the redelivery request): the dispatcher asks for what became pending after
the last ``seq`` it saw.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping
from itertools import groupby
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, cast

from foreman.events.projection import IllegalTransition
from foreman.events.types import (
    DELIVERY_STREAM_PREFIX,
    JobRequeued,
    JobSubmitted,
    RecordedEvent,
    UnreadableEvent,
    WebhookAbandoned,
    WebhookAttemptFailed,
    WebhookDelivered,
    WebhookRedeliveryRequested,
    delivery_stream,
)

if TYPE_CHECKING:
    from foreman.events.log import EventLog

DeliveryState = Literal["pending", "delivered", "abandoned"]
NotificationType = Literal[
    "job.queued",
    "job.running",
    "job.retry_scheduled",
    "job.succeeded",
    "job.failed",
    "job.cancelled",
]
Deliveries = tuple["Delivery", ...]


class Delivery(NamedTuple):
    id: str
    """The notification's id: the ULID of the job event it reports (``webhook-id``)."""
    job_id: str
    seq: int
    """The ``seq`` of that job event: the payload is the job as it stood then."""
    type: NotificationType
    """What the receiver is told."""
    url: str
    occurred_at: str
    state: DeliveryState
    attempts: int
    pending_since: int
    updated_at: str
    retry_at: str | None = None
    last_status: int | None = None
    last_error: str | None = None


_JOB_NOTIFICATIONS: dict[str, NotificationType] = {
    "JobSubmitted": "job.queued",
    "JobStarted": "job.running",
    "JobSucceeded": "job.succeeded",
    "JobFailed": "job.failed",
    "JobCancelled": "job.cancelled",
    "JobQuarantined": "job.failed",
}


def notification_type(recorded: RecordedEvent) -> NotificationType | None:
    """What a job event tells a receiver, or None for an event it is not told of
    (an attempt's failure is told by the ``job.retry_scheduled`` or ``job.failed``
    that follows it)."""
    if recorded.type == "JobRequeued":
        reason = cast(JobRequeued, recorded.event).reason
        return "job.retry_scheduled" if reason == "retry" else "job.queued"
    return _JOB_NOTIFICATIONS.get(recorded.type)


def makes_pending(recorded: RecordedEvent) -> bool:
    """Whether ``recorded`` can make a delivery pending (the dispatcher's wake-up)."""
    return recorded.type in _PENDING_MAKERS


def _refuse(recorded: RecordedEvent, key: str, state: str | None, reason: str) -> IllegalTransition:
    return IllegalTransition(key, state, recorded.type, reason)


def _job_event(deliveries: Deliveries | None, recorded: RecordedEvent) -> Deliveries | None:
    if recorded.type == "JobSubmitted":
        url = cast(JobSubmitted, recorded.event).state_webhook_url
        return None if url is None else (_notification(recorded, url, "job.queued"),)
    if deliveries is None:
        return None
    kind = notification_type(recorded)
    if kind is None or not recorded.readable:  # as the jobs fold, pass over what cannot be read
        return deliveries
    return (*deliveries, _notification(recorded, deliveries[0].url, kind))


def _notification(recorded: RecordedEvent, url: str, kind: NotificationType) -> Delivery:
    return Delivery(
        id=recorded.id,
        job_id=recorded.stream,
        seq=recorded.seq,
        type=kind,
        url=url,
        occurred_at=recorded.recorded_at,
        state="pending",
        attempts=0,
        pending_since=recorded.seq,
        updated_at=recorded.recorded_at,
    )


def _pruned(deliveries: Deliveries | None, recorded: RecordedEvent) -> None:
    if deliveries is not None and any(d.state == "pending" for d in deliveries):
        raise _refuse(
            recorded, recorded.stream, "pending", "its webhook deliveries are still pending"
        )


def _outcome(deliveries: Deliveries | None, recorded: RecordedEvent) -> Deliveries:
    event = cast(WebhookAttemptFailed | WebhookDelivered | WebhookAbandoned, recorded.event)
    delivery = _find(deliveries, recorded, event.delivery)
    if delivery.state != "pending":
        raise _refuse(recorded, delivery.id, delivery.state, "the delivery must be pending")
    if event.attempt != delivery.attempts + 1:
        raise _refuse(
            recorded,
            delivery.id,
            delivery.state,
            f"attempt {event.attempt} follows attempt {delivery.attempts}; "
            f"expected {delivery.attempts + 1}",
        )
    changed = delivery._replace(attempts=event.attempt, updated_at=recorded.recorded_at)
    if isinstance(event, WebhookDelivered):
        changed = changed._replace(
            state="delivered", last_status=event.status, last_error=None, retry_at=None
        )
    else:
        changed = changed._replace(
            state="pending" if isinstance(event, WebhookAttemptFailed) else "abandoned",
            retry_at=event.retry_at if isinstance(event, WebhookAttemptFailed) else None,
            last_status=event.status,
            last_error=event.error,
        )
    return _replaced(deliveries, changed)


def _redelivery(deliveries: Deliveries | None, recorded: RecordedEvent) -> Deliveries:
    event = cast(WebhookRedeliveryRequested, recorded.event)
    for delivery_id in event.deliveries:
        delivery = _find(deliveries, recorded, delivery_id)
        if delivery.state == "pending":
            raise _refuse(recorded, delivery.id, "pending", "it is still being delivered")
        deliveries = _replaced(
            deliveries,
            delivery._replace(
                state="pending",
                attempts=0,
                pending_since=recorded.seq,
                retry_at=None,
                last_status=None,
                last_error=None,
                updated_at=recorded.recorded_at,
            ),
        )
    assert deliveries is not None
    return deliveries


def _find(deliveries: Deliveries | None, recorded: RecordedEvent, delivery_id: str) -> Delivery:
    for delivery in deliveries or ():
        if delivery.id == delivery_id:
            return delivery
    raise _refuse(recorded, delivery_id, None, "the job has no such webhook delivery")


def _replaced(deliveries: Deliveries | None, changed: Delivery) -> Deliveries:
    return tuple(changed if d.id == changed.id else d for d in deliveries or ())


_TRANSITIONS: dict[str, Callable[[Deliveries | None, RecordedEvent], Deliveries | None]] = {
    **dict.fromkeys(
        (
            "JobSubmitted",
            "JobStarted",
            "JobRequeued",
            "JobSucceeded",
            "JobFailed",
            "JobCancelled",
            "JobQuarantined",
        ),
        _job_event,
    ),
    "JobPruned": _pruned,
    "WebhookAttemptFailed": _outcome,
    "WebhookDelivered": _outcome,
    "WebhookAbandoned": _outcome,
    "WebhookRedeliveryRequested": _redelivery,
}
_DELIVERY_EVENTS = frozenset(type_ for type_ in _TRANSITIONS if type_.startswith("Webhook"))
_PENDING_MAKERS = frozenset((*_JOB_NOTIFICATIONS, "JobRequeued", "WebhookRedeliveryRequested"))


def evolve(deliveries: Deliveries | None, recorded: RecordedEvent) -> Deliveries | None:
    """A job's deliveries after ``recorded``; pure, raises IllegalTransition on a refused
    event. An event that cannot be read back changes nothing (its job is quarantined)."""
    try:
        return _TRANSITIONS[recorded.type](deliveries, recorded)
    except UnreadableEvent:
        return deliveries


_COLUMNS = Delivery._fields
SELECT_DELIVERIES = f"SELECT {', '.join(_COLUMNS)} FROM deliveries"
_UPSERT = (
    f"INSERT OR REPLACE INTO deliveries ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_COLUMNS))})"
)
_LOAD_CHUNK = 500


class DeliveriesProjection:
    """Stores each :class:`Delivery` as a row of the ``deliveries`` table."""

    name: ClassVar[str] = "deliveries"
    version: ClassVar[int] = 1

    def create(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            """CREATE TABLE IF NOT EXISTS deliveries (
                id TEXT PRIMARY KEY,
                job_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                type TEXT NOT NULL,
                url TEXT NOT NULL,
                occurred_at TEXT NOT NULL,
                state TEXT NOT NULL,
                attempts INTEGER NOT NULL,
                pending_since INTEGER NOT NULL,
                updated_at TEXT NOT NULL,
                retry_at TEXT,
                last_status INTEGER,
                last_error TEXT
            ) WITHOUT ROWID"""
        )
        conn.execute("CREATE INDEX IF NOT EXISTS deliveries_by_job ON deliveries (job_id, seq)")
        # What the dispatcher has still to deliver, in the order it became pending.
        conn.execute(
            "CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (pending_since) "
            "WHERE state = 'pending'"
        )

    def drop(self, conn: sqlite3.Connection) -> None:
        conn.execute("DROP TABLE IF EXISTS deliveries")

    def key(self, event: RecordedEvent) -> str | None:
        if event.type in _DELIVERY_EVENTS:
            return event.stream.removeprefix(DELIVERY_STREAM_PREFIX)
        return event.stream if event.type in _TRANSITIONS else None

    evolve = staticmethod(evolve)

    def load(self, conn: sqlite3.Connection, keys: Iterable[str]) -> dict[str, Deliveries]:
        keys = list(keys)
        found: dict[str, Deliveries] = {}
        for start in range(0, len(keys), _LOAD_CHUNK):
            chunk = keys[start : start + _LOAD_CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows = conn.execute(
                f"{SELECT_DELIVERIES} WHERE job_id IN ({marks}) ORDER BY job_id, seq", chunk
            )
            found.update(_grouped(rows))
        return found

    def save(self, conn: sqlite3.Connection, states: Mapping[str, Deliveries | None]) -> None:
        conn.executemany(
            "DELETE FROM deliveries WHERE job_id = ?",
            [(job_id,) for job_id, deliveries in states.items() if deliveries is None],
        )
        conn.executemany(
            _UPSERT, [delivery for deliveries in states.values() for delivery in deliveries or ()]
        )

    def load_all(self, conn: sqlite3.Connection) -> dict[str, Deliveries]:
        return dict(_grouped(conn.execute(f"{SELECT_DELIVERIES} ORDER BY job_id, seq")))


def _grouped(rows: Iterable[tuple[Any, ...]]) -> Iterable[tuple[str, Deliveries]]:
    for job_id, group in groupby(map(Delivery._make, rows), key=lambda d: d.job_id):
        yield job_id, tuple(group)


def job_deliveries(log: EventLog, job_id: str) -> Deliveries:
    return DeliveriesProjection().load(log.conn, [job_id]).get(job_id, ())


def redeliveries_asked(log: EventLog, job_id: str) -> list[str]:
    """When redeliveries of the job's notifications were asked for, oldest first (the
    log's timestamps of its ``WebhookRedeliveryRequested`` events)."""
    rows = log.conn.execute(
        "SELECT recorded_at FROM events WHERE stream = ? AND type = ? ORDER BY version",
        (delivery_stream(job_id), WebhookRedeliveryRequested.model_fields["type"].default),
    )
    return [stamp for (stamp,) in rows]


def pending_after(log: EventLog, seq: int) -> tuple[int, list[Delivery]]:
    """The log's head, and the deliveries that became pending after ``seq``, in order."""
    head = log.head()[0]
    rows = log.conn.execute(
        f"{SELECT_DELIVERIES} WHERE state = 'pending' AND pending_since > ? "
        "ORDER BY pending_since, seq",
        (seq,),
    )
    return head, [Delivery._make(row) for row in rows]
