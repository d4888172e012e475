"""The deliveries projection: which notifications a job owes, and what the log refuses."""

from __future__ import annotations

import pytest

from foreman.events.deliveries import job_deliveries, pending_after
from foreman.events.jobs import finished_before
from foreman.events.log import EventLog
from foreman.events.projection import IllegalTransition
from foreman.events.types import (
    JobRequeued,
    WebhookAbandoned,
    WebhookAttemptFailed,
    WebhookDelivered,
    WebhookRedeliveryRequested,
    delivery_stream,
)
from foreman.ids import new_ulid
from tests import factories

HOOK = "http://hooks.example/foreman"


def submit(log: EventLog, url: str | None = HOOK) -> str:
    job_id = new_ulid()
    log.append(job_id, [factories.submitted().model_copy(update={"state_webhook_url": url})])
    return job_id


def delivered(delivery: str, attempt: int = 1) -> WebhookDelivered:
    return WebhookDelivered(delivery=delivery, attempt=attempt, status=200)


def test_each_state_a_job_enters_is_owed_to_its_webhook_with_the_events_id(
    log: EventLog,
) -> None:
    job_id = submit(log)
    log.append(job_id, [factories.started()])
    log.append(job_id, [factories.attempt_failed(), factories.requeued_retry()])
    log.append(job_id, [factories.started(2)])
    log.append(job_id, [JobRequeued(reason="interrupted")])
    log.append(job_id, [factories.started(3)])
    log.append(job_id, [factories.succeeded()])

    deliveries = job_deliveries(log, job_id)
    assert [d.type for d in deliveries] == [
        "job.queued",
        "job.running",
        "job.retry_scheduled",
        "job.running",
        "job.queued",
        "job.running",
        "job.succeeded",
    ]
    stream = log.read_stream(job_id)
    told = [e for e in stream if e.type != "JobAttemptFailed"]
    assert [(d.id, d.seq, d.occurred_at) for d in deliveries] == [
        (e.id, e.seq, e.recorded_at) for e in told
    ]
    assert {(d.state, d.attempts, d.url) for d in deliveries} == {("pending", 0, HOOK)}


def test_a_job_without_a_webhook_owes_nothing(log: EventLog) -> None:
    job_id = submit(log, url=None)
    log.append(job_id, [factories.started()])
    log.append(job_id, [factories.failed()])
    assert job_deliveries(log, job_id) == ()
    assert pending_after(log, 0) == (log.head()[0], [])


def test_attempts_are_recorded_in_order_and_only_for_a_pending_delivery(log: EventLog) -> None:
    job_id = submit(log)
    (queued,) = job_deliveries(log, job_id)
    stream = delivery_stream(job_id)
    failed = WebhookAttemptFailed(
        delivery=queued.id, attempt=1, error="HTTP 503", status=503, retry_at="2026-11-28T12:00:02Z"
    )
    log.append(stream, [failed])
    (after,) = job_deliveries(log, job_id)
    assert (after.state, after.attempts, after.last_status, after.retry_at) == (
        "pending",
        1,
        503,
        "2026-11-28T12:00:02Z",
    )
    with pytest.raises(IllegalTransition, match="expected 2"):
        log.append(stream, [delivered(queued.id, attempt=1)])
    with pytest.raises(IllegalTransition, match="no such webhook delivery"):
        log.append(stream, [delivered("01NOTADELIVERY", attempt=1)])
    log.append(stream, [delivered(queued.id, attempt=2)])
    (done,) = job_deliveries(log, job_id)
    assert (done.state, done.attempts, done.retry_at, done.last_status, done.last_error) == (
        "delivered",
        2,
        None,
        200,
        None,
    )
    with pytest.raises(IllegalTransition, match="must be pending"):
        log.append(stream, [WebhookAbandoned(delivery=queued.id, attempt=3, error="late")])


def test_a_redelivery_makes_finished_deliveries_pending_again_with_fresh_tries(
    log: EventLog,
) -> None:
    job_id = submit(log)
    log.append(job_id, [factories.started()])
    first, second = job_deliveries(log, job_id)
    stream = delivery_stream(job_id)
    with pytest.raises(IllegalTransition, match="still being delivered"):
        log.append(stream, [WebhookRedeliveryRequested(deliveries=(first.id,))])
    log.append(stream, [delivered(first.id)])
    log.append(stream, [WebhookAbandoned(delivery=second.id, attempt=1, error="HTTP 400")])
    seen = log.head()[0]
    assert pending_after(log, 0)[1] == []

    (request,) = log.append(stream, [WebhookRedeliveryRequested(deliveries=(first.id, second.id))])
    head, pending = pending_after(log, seen)
    assert head == request.seq
    assert [(d.id, d.state, d.attempts, d.pending_since, d.last_error) for d in pending] == [
        (first.id, "pending", 0, request.seq, None),
        (second.id, "pending", 0, request.seq, None),
    ]
    assert pending_after(log, head) == (head, [])


def test_a_finished_job_is_not_pruned_while_it_owes_a_notification(log: EventLog) -> None:
    job_id = submit(log)
    log.append(job_id, [factories.started()])
    log.append(job_id, [factories.cancelled()])
    assert finished_before(log, "9999", 10) == []
    with pytest.raises(IllegalTransition, match="still pending"):
        log.append(job_id, [factories.pruned()])
    stream = delivery_stream(job_id)
    for delivery in job_deliveries(log, job_id):
        log.append(stream, [delivered(delivery.id)])
    assert finished_before(log, "9999", 10) == [job_id]
    log.append(job_id, [factories.pruned()])
    assert job_deliveries(log, job_id) == ()
