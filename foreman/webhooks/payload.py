"""The body a notification carries: the job as it stood when it entered the state.

The job is folded from its own stream up to the notification's event, so every
attempt (and every attempt after a restart) sends the same bytes, and a later
state never leaks into an earlier notification. Artifacts are linked by
absolute URL, never inlined: a receiver fetches what it wants.
"""

from __future__ import annotations

from foreman.events import jobs
from foreman.events.deliveries import Delivery, pending_after
from foreman.events.log import EventLog
from foreman.events.queries import JobRecord, success
from foreman.views import WebhookPayload, artifact_view, job_view


def job_as_of(log: EventLog, job_id: str, seq: int) -> JobRecord:
    """The job after its events up to ``seq``: the pure fold the projection runs."""
    job: jobs.Job | None = None
    succeeded = None
    for recorded in log.read_stream(job_id):
        if recorded.seq > seq:
            break
        job = jobs.evolve(job, recorded)
        if recorded.type == "JobSucceeded":
            succeeded = success(recorded)
    if job is None:
        raise LookupError(f"the log has no job {job_id} up to event {seq}")
    return JobRecord(job, succeeded)


def pending_with_jobs(
    log: EventLog, seq: int, limit: int
) -> tuple[int, list[Delivery], dict[str, JobRecord]]:
    """:func:`~foreman.events.deliveries.pending_after`, and the job as it stood for the
    first ``limit`` of them, read in the same snapshot: a delivery found on a commit is
    sent without another trip to the reader."""
    head, pending = pending_after(log, seq)
    records = {d.id: job_as_of(log, d.job_id, d.seq) for d in pending[:limit]}
    return head, pending, records


def render(delivery: Delivery, record: JobRecord, base_url: str) -> bytes:
    refs = record.succeeded.artifacts if record.succeeded is not None else ()
    artifacts = [artifact_view(record.job.id, ref, base_url=base_url) for ref in refs]
    payload = WebhookPayload(
        id=delivery.id,
        type=delivery.type,
        occurred_at=delivery.occurred_at,
        job=job_view(record, artifacts, queue_position=None, webhooks=None),
    )
    return payload.model_dump_json().encode()
