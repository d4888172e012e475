"""How a job is shown: to API clients (``GET /jobs/{id}``) and in webhook payloads."""

from __future__ import annotations

import base64
import json

from foreman.api.schemas import ArtifactView, DeliveryView, JobErrorView, JobSummary, JobView
from foreman.artifacts import is_text
from foreman.events.deliveries import Delivery
from foreman.events.jobs import Job
from foreman.events.queries import JobRecord
from foreman.events.types import ArtifactRef


def job_summary(job: Job) -> JobSummary:
    return JobSummary(
        id=job.id,
        kind=job.kind,
        model=job.model,
        state=job.state,
        priority=job.priority,
        attempts=job.attempts,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        error=None if job.error is None else JobErrorView(**job.error._asdict()),
        metadata=None if job.metadata is None else json.loads(job.metadata),
    )


def job_view(
    record: JobRecord,
    artifacts: list[ArtifactView],
    *,
    queue_position: int | None,
    webhooks: list[DeliveryView] | None,
) -> JobView:
    job, succeeded = record.job, record.succeeded
    return JobView(
        **job_summary(job).model_dump(),
        queue_position=queue_position,
        result=None if succeeded is None else succeeded.result,
        artifacts=artifacts,
        state_webhook_url=job.state_webhook_url,
        webhooks=webhooks,
    )


def artifact_view(
    job_id: str, ref: ArtifactRef, *, base_url: str = "", inline: bytes | None = None
) -> ArtifactView:
    """An output by its URL (relative, unless ``base_url`` is given), with its bytes
    ``inline`` if given: text as a string, anything else in base64."""
    shown, encoding = None, None
    if inline is not None:
        if is_text(ref.media_type):
            shown, encoding = inline.decode("utf-8", errors="replace"), "utf-8"
        else:
            shown, encoding = base64.b64encode(inline).decode(), "base64"
    return ArtifactView(
        **ref.model_dump(),
        url=f"{base_url}/jobs/{job_id}/artifacts/{ref.name}",
        inline=shown,
        inline_encoding=encoding,
    )


def delivery_view(delivery: Delivery) -> DeliveryView:
    return DeliveryView(
        id=delivery.id,
        type=delivery.type,
        occurred_at=delivery.occurred_at,
        state=delivery.state,
        attempts=delivery.attempts,
        next_attempt_at=delivery.retry_at,
        last_status=delivery.last_status,
        last_error=delivery.last_error,
        updated_at=delivery.updated_at,
    )
