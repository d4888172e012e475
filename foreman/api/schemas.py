"""The job API's request and response bodies: the contract clients depend on, and
the source of ``/openapi.json`` (the job's own views are :mod:`foreman.views`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from foreman.events.jobs import JobState
from foreman.events.types import JobKind
from foreman.events.values import Metadata, Text, storable_object
from foreman.views import DeliveryView, JobSummary

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
        if parts.username is not None or parts.password is not None:
            # They would be shown back with the job and sent as Basic auth to wherever
            # the URL points: a receiver authenticates by the webhook's signature.
            raise ValueError("must not carry credentials (user:password@): sign instead")
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


class BackendView(_Model):
    """One backend host of the fleet."""

    name: str
    url: str
    state: Literal["up", "down", "draining"] = Field(
        description="down: it stopped answering and is probed until it does; draining: "
        "it finishes what it runs and takes nothing more."
    )
    loaded: list[str] = Field(description="The models it has loaded, as far as Foreman knows.")
    installed: list[str] | None = Field(description="Its models (/api/tags); null until known.")
    running: int = Field(description="Jobs at it now.")
    done: int = Field(description="Jobs it finished since Foreman started.")
    loads: int = Field(description="Jobs it was given that needed a model loaded, since start.")


class BackendList(_Model):
    backends: list[BackendView]
