"""The job API's request and response bodies: the contract clients and webhook
receivers depend on, and the source of ``/openapi.json``."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from foreman.events.deliveries import DeliveryState, NotificationType
from foreman.events.jobs import JobState
from foreman.events.types import JobKind
from foreman.events.values import Metadata, Text, storable_object

MAX_PRIORITY = 1_000_000
"""Priorities are small integers; the bound keeps them within SQLite's and JSON's."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackendRequest(BaseModel):
    """An Ollama request body: ``model`` and whatever else that endpoint takes."""

    model_config = ConfigDict(extra="allow")

    model: Annotated[Text, Field(min_length=1, pattern=r"\S", description="The model to run.")]

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        """The whole body within the log's limits (ADR-0032), extra fields included."""
        return storable_object(data) if isinstance(data, dict) else data


class SubmitJob(_Model):
    """``POST /jobs``: a job to run asynchronously (it never streams)."""

    kind: JobKind = Field(description="Which Ollama endpoint runs it: chat, generate or embed.")
    request: BackendRequest = Field(
        description="The Ollama request body, as /api/chat, /api/generate or /api/embed take it."
    )
    priority: Annotated[int, Field(ge=-MAX_PRIORITY, le=MAX_PRIORITY)] = Field(
        0, description="Higher runs first; within a priority, jobs drain by model."
    )
    state_webhook_url: Text | None = Field(
        None, description="An absolute http(s) URL told about every state change."
    )
    metadata: Metadata = Field(
        None, description="Echoed back with the job: at most 64 KiB as JSON."
    )

    @field_validator("state_webhook_url")
    @classmethod
    def _absolute_http_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http:// or https:// URL")
        try:
            parts.port  # noqa: B018 - reading it checks its range
            if any(character.isspace() for character in parts.hostname):
                raise ValueError("a host name has no spaces")
            # What the sender will do with the host: each label 1 to 63 characters.
            httpx.URL(url).host.encode("idna")
        except (ValueError, httpx.InvalidURL, UnicodeError) as error:
            raise ValueError(f"cannot be sent to: {error}") from None
        return url


class JobAccepted(_Model):
    """The answer to ``POST /jobs``: where the job is and what it is doing."""

    job_id: str
    state: JobState
    created_at: str
    queue_position: int | None = Field(
        description="While queued: how many jobs run before it, under the current rule."
    )
    location: str = Field(description="The job's URL, as in the Location header.")


class JobErrorView(_Model):
    message: str
    status: int | None = Field(description="The backend's HTTP status, when it answered.")


class ArtifactView(_Model):
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


class JobSummary(_Model):
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
    error: JobErrorView | None
    metadata: dict[str, Any] | None


class DeliveryView(_Model):
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


class WebhookPayload(_Model):
    """The body POSTed to ``state_webhook_url`` on each state change of the job."""

    id: str = Field(description="The notification's id, also ``webhook-id``: deduplicate by it.")
    type: NotificationType
    occurred_at: str = Field(description="When the job entered the state (UTC).")
    job: JobView = Field(
        description="The job as it stood then; artifacts by absolute URL, never inline."
    )


class RedeliverWebhooks(_Model):
    """``POST /jobs/{id}/webhooks/redeliver``: which notifications to send again."""

    ids: list[str] | None = Field(
        None,
        min_length=1,
        description="Notification ids (delivered or abandoned); default: every abandoned one.",
    )


class Redelivery(_Model):
    redelivered: list[DeliveryView] = Field(description="Pending again, with fresh tries.")


class JobPage(_Model):
    jobs: list[JobSummary]
    next_cursor: str | None = Field(description="Pass as ``cursor`` for the next, older page.")


class EventView(_Model):
    seq: int
    type: str
    recorded_at: str
    data: dict[str, Any]


class JobEvents(_Model):
    events: list[EventView]


class FieldProblem(_Model):
    field: str
    message: str


class ApiError(_Model):
    """Every error the job API answers: a message a person can act on."""

    error: str
    detail: list[FieldProblem] | None = None
