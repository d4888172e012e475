"""How a job is shown: to API clients (``GET /jobs/{id}``, listings) and in webhook
payloads. Both render these views, so a job reads the same wherever it is seen."""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from foreman.artifacts import is_text
from foreman.events.deliveries import Delivery, DeliveryState, NotificationType
from foreman.events.jobs import Job, JobState
from foreman.events.queries import JobRecord
from foreman.events.types import ArtifactRef, JobKind


class _View(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobErrorView(_View):
    message: str
    status: int | None = Field(description="The backend's HTTP status, when it answered.")


class ArtifactView(_View):
    name: str
    media_type: str
    size: int
    sha256: str
    url: str
    inline: str | None = Field(
        description="The content, when at most FOREMAN_ARTIFACT_INLINE_MAX bytes."
    )
    inline_encoding: Literal["utf-8", "base64"] | None = Field(
        description="How ``inline`` holds the bytes: text as a string, anything else base64."
    )


class JobSummary(_View):
    """A job as listed: its state, without its outputs."""

    id: str
    kind: JobKind
    model: str
    state: JobState
    priority: int
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    backend: str | None = Field(description="The backend host of its latest attempt.")
    error: JobErrorView | None
    metadata: dict[str, Any] | None
    tenant: str | None = Field(
        None, description="Whose job it is: its key's tenant (null: submitted with no key)."
    )


class DeliveryView(_View):
    """One state notification to the job's ``state_webhook_url``, and how it went."""

    id: str = Field(description="The notification's id, sent as ``webhook-id``.")
    type: NotificationType
    occurred_at: str
    state: DeliveryState = Field(
        description="abandoned: every try failed; POST /jobs/{id}/webhooks/redeliver sends "
        "it again."
    )
    attempts: int
    next_attempt_at: str | None = Field(description="While pending after a failed try.")
    last_status: int | None = Field(description="The receiver's status on the last try.")
    last_error: str | None = Field(
        description="Why the last try failed; null once delivered, or sent again."
    )
    updated_at: str


class JobView(JobSummary):
    """``GET /jobs/{id}``: the job, its place in the queue, its result and outputs."""

    queue_position: int | None = Field(
        description="While queued: how many jobs run before it, under the current rule."
    )
    result: dict[str, Any] | None = Field(description="The backend's final response.")
    artifacts: list[ArtifactView]
    state_webhook_url: str | None
    webhooks: list[DeliveryView] | None = Field(
        description="Each state notification sent to state_webhook_url (null without "
        "one, and inside a webhook's own payload)."
    )


class WebhookPayload(_View):
    """The body POSTed to ``state_webhook_url`` on each state change of the job."""

    id: str = Field(description="The notification's id, also ``webhook-id``: deduplicate by it.")
    type: NotificationType
    occurred_at: str = Field(description="When the job entered the state (UTC).")
    job: JobView = Field(
        description="The job as it stood then; artifacts by absolute URL, never inline."
    )


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
        backend=job.backend,
        error=None if job.error is None else JobErrorView(**job.error._asdict()),
        metadata=None if job.metadata is None else json.loads(job.metadata),
        tenant=job.tenant,
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
