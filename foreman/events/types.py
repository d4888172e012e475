"""The domain events: immutable pydantic models, one class per type.

Each class carries ``type`` (the discriminator, also stored in its own column)
and a ``SCHEMA_VERSION``. A row is decoded by its stored ``type`` and
``schema_version``; an older version is first upcast to the current shape
(see :meth:`Event.upcast`), so old logs keep loading.

Job events live on the job's stream (its id); webhook delivery events on the
job's delivery stream (:func:`delivery_stream`), so a job's own stream stays
the story of the job.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from foreman.events.values import STORED, JsonObject, Metadata, ReadableText, Text

JobKind = Literal["chat", "generate", "embed"]
Origin = Literal["sync", "async", "batch"]
RequeueReason = Literal["retry", "interrupted", "backend_down"]
TenantName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")]
"""Who owns a job, a file or a batch: the tenant of the key that submitted it (None
when no key is in use)."""


class UnreadableEvent(ValueError):
    """A stored row cannot be turned back into its event (ADR-0032: quarantine)."""

    @property
    def reason(self) -> str:
        """Why, on one line (pydantic's messages span several)."""
        return " ".join(str(self).split())


class UnknownEventType(UnreadableEvent):
    """A stored row names an event type this build does not know."""


class UnsupportedSchemaVersion(UnreadableEvent):
    """A stored row was written with a schema version this build cannot read."""


class EventDecodeError(UnreadableEvent):
    """A stored row's data does not match its event type's schema."""


class Event(BaseModel):
    """Base of every domain event."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    SCHEMA_VERSION: ClassVar[int] = 1
    type: str

    @classmethod
    def upcast(cls, schema_version: int, data: dict[str, Any]) -> dict[str, Any]:
        """Turn the stored data of an older ``schema_version`` into the current shape.

        Override in an event class when its schema changes; the base knows no
        older versions because every event type is still at version 1.
        """
        raise UnsupportedSchemaVersion(
            f"{cls.__name__} has no upcaster from schema version {schema_version} "
            f"to {cls.SCHEMA_VERSION}"
        )


class BatchLine(BaseModel):
    """Where a batch's job comes from: its batch and its line in the input file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_id: Annotated[str, Field(min_length=1, max_length=64)]
    line: Annotated[int, Field(ge=1)]
    """Its line number in the input file, from 1."""
    custom_id: Annotated[Text, Field(min_length=1)]


class JobSubmitted(Event):
    type: Literal["JobSubmitted"] = "JobSubmitted"
    kind: JobKind
    model: Annotated[Text, Field(min_length=1)]
    request: JsonObject
    """The backend request body, exactly as the backend will receive it."""
    priority: int = 0
    state_webhook_url: Text | None = None
    origin: Origin
    idempotency_key: Text | None = None
    metadata: Metadata = None
    """The submitter's own data, echoed back with the job (async jobs)."""
    batch: BatchLine | None = None
    """The batch line it runs (origin ``batch``): it waits below every other job."""
    tenant: TenantName | None = None

    @model_validator(mode="after")
    def _webhooks_only_for_async_jobs(self) -> JobSubmitted:
        if self.state_webhook_url is not None and self.origin != "async":
            raise ValueError("state_webhook_url is honoured only on POST /jobs (ADR-0014)")
        if (self.batch is not None) != (self.origin == "batch"):
            raise ValueError("a batch's lines, and only they, have origin 'batch'")
        return self


class JobStarted(Event):
    type: Literal["JobStarted"] = "JobStarted"
    attempt: Annotated[int, Field(ge=1)]
    backend: str


class JobAttemptFailed(Event):
    type: Literal["JobAttemptFailed"] = "JobAttemptFailed"
    attempt: Annotated[int, Field(ge=1)]
    error: ReadableText
    retryable: bool


class JobRequeued(Event):
    type: Literal["JobRequeued"] = "JobRequeued"
    reason: RequeueReason


class ArtifactRef(BaseModel):
    """A content-addressed output of a job, stored before the event naming it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    media_type: str
    size: Annotated[int, Field(ge=0)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class JobSucceeded(Event):
    type: Literal["JobSucceeded"] = "JobSucceeded"
    result: JsonObject
    artifacts: tuple[ArtifactRef, ...] = ()


class JobFailed(Event):
    type: Literal["JobFailed"] = "JobFailed"
    error: ReadableText
    status: int | None = None
    """The backend's HTTP status, when the failure was an error answer."""


class JobCancelled(Event):
    type: Literal["JobCancelled"] = "JobCancelled"
    reason: Annotated[ReadableText, Field(min_length=1)]


JOB_ENDS = frozenset({"JobSucceeded", "JobFailed", "JobCancelled", "JobQuarantined"})
"""The types of the event that ends a job."""


class JobPruned(Event):
    type: Literal["JobPruned"] = "JobPruned"


class JobQuarantined(Event):
    """One of the job's events cannot be read back: the job is failed, never run again.

    Recorded at start by recovery for an unfinished job whose stream holds an
    unreadable event (ADR-0032), so the log itself says what became of it."""

    type: Literal["JobQuarantined"] = "JobQuarantined"
    event_seq: Annotated[int, Field(ge=1)]
    """The ``seq`` of the first event of the job that cannot be read back."""
    reason: ReadableText


DELIVERY_STREAM_PREFIX = "webhooks/"


def delivery_stream(job_id: str) -> str:
    """The stream of a job's webhook deliveries: every attempt and its outcome."""
    return f"{DELIVERY_STREAM_PREFIX}{job_id}"


BACKEND_STREAM_PREFIX = "backends/"


def backend_stream(name: str) -> str:
    """The stream of a backend host's state changes."""
    return f"{BACKEND_STREAM_PREFIX}{name}"


class BackendDown(Event):
    """The host stopped answering (refused, timed out, or dropped a call): it is given
    no work until a probe finds it answering again."""

    type: Literal["BackendDown"] = "BackendDown"
    reason: ReadableText


class BackendUp(Event):
    """A probe found the down host answering: it takes work again."""

    type: Literal["BackendUp"] = "BackendUp"


class BackendDrained(Event):
    """An operator drained the host: it finishes the jobs it runs and takes no more."""

    type: Literal["BackendDrained"] = "BackendDrained"


class BackendResumed(Event):
    """The host takes work again after a drain."""

    type: Literal["BackendResumed"] = "BackendResumed"


FILE_STREAM_PREFIX = "files/"
FILE_ID_PREFIX = "file-"
"""A file's id is ``file-<ULID>``; a batch's, ``batch_<ULID>`` (OpenAI's forms)."""
BATCH_ID_PREFIX = "batch_"
BATCH_STREAM_PREFIX = "batches/"
FilePurpose = Literal["batch", "batch_output"]
BatchEndpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
BATCH_ENDPOINTS: tuple[str, ...] = get_args(BatchEndpoint)
BatchEnd = Literal["completed", "expired", "cancelled", "failed"]


def file_stream(file_id: str) -> str:
    """The stream of a stored file (``file-<ULID>``): stored, then deleted."""
    return f"{FILE_STREAM_PREFIX}{file_id}"


def batch_stream(batch_id: str) -> str:
    """The stream of a batch (``batch_<ULID>``): created, started, ended."""
    return f"{BATCH_STREAM_PREFIX}{batch_id}"


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class FileStored(Event):
    """A file was stored with the artifacts (an upload, or a batch's output)."""

    type: Literal["FileStored"] = "FileStored"
    filename: Annotated[ReadableText, Field(min_length=1, max_length=255)]
    purpose: FilePurpose
    bytes: Annotated[int, Field(ge=0)]
    sha256: Sha256
    requests: Annotated[int, Field(ge=0)] | None = None
    """A batch input's lines (requests)."""
    endpoint: BatchEndpoint | None = None
    """The ``url`` every line of a batch input names."""
    tenant: TenantName | None = None


class FileDeleted(Event):
    """Deleted by its owner, or pruned FOREMAN_JOB_TTL after it was stored."""

    type: Literal["FileDeleted"] = "FileDeleted"
    reason: Literal["deleted", "expired"]


class BatchProblem(BaseModel):
    """Why a batch could not start (OpenAI's ``errors.data`` item)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str
    message: ReadableText
    param: str | None = None
    line: int | None = None


BatchMetadata = Annotated[
    dict[Annotated[Text, Field(max_length=64)], Annotated[Text, Field(max_length=512)]],
    Field(max_length=16),
]
"""OpenAI's batch metadata: at most 16 pairs of strings, keys up to 64 characters, values
up to 512."""


class BatchCreated(Event):
    """A batch was accepted: its lines are about to become jobs (``validating``)."""

    type: Literal["BatchCreated"] = "BatchCreated"
    input_file_id: Annotated[str, Field(min_length=1, max_length=64)]
    endpoint: BatchEndpoint
    completion_window: Annotated[str, Field(min_length=1, max_length=16)]
    window: Annotated[float, Field(gt=0)]
    """The completion window in seconds: the batch expires that long after it was made."""
    requests: Annotated[int, Field(ge=0)]
    metadata: BatchMetadata | None = None
    tenant: TenantName | None = None


class BatchStarted(Event):
    """Every line is a queued job (``in_progress``)."""

    type: Literal["BatchStarted"] = "BatchStarted"


class BatchCancelling(Event):
    """Cancel asked: its queued lines are withdrawn; the running ones finish."""

    type: Literal["BatchCancelling"] = "BatchCancelling"


class BatchFinalizing(Event):
    """No line is left to run (all ended, or the window passed): its output is written."""

    type: Literal["BatchFinalizing"] = "BatchFinalizing"
    end: BatchEnd


class BatchEnded(Event):
    """The batch's outcome, its output and error files, and its final counts."""

    type: Literal["BatchEnded"] = "BatchEnded"
    status: BatchEnd
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: Annotated[int, Field(ge=0)] = 0
    failed: Annotated[int, Field(ge=0)] = 0
    errors: tuple[BatchProblem, ...] = ()
    """Why it failed (``failed`` only)."""


class WebhookAttemptFailed(Event):
    """An attempt to deliver a notification failed; the next is due at ``retry_at``."""

    type: Literal["WebhookAttemptFailed"] = "WebhookAttemptFailed"
    delivery: str
    """The notification's id (its ``webhook-id``)."""
    attempt: Annotated[int, Field(ge=1)]
    error: ReadableText
    status: int | None = None
    """The receiver's HTTP status, when it answered."""
    retry_at: str
    """When the next attempt is due (wall clock, as ``recorded_at``): kept across restarts."""


class WebhookDelivered(Event):
    type: Literal["WebhookDelivered"] = "WebhookDelivered"
    delivery: str
    attempt: Annotated[int, Field(ge=1)]
    status: int


class WebhookAbandoned(Event):
    """The last attempt failed, or the failure is final: no more tries unless redelivered."""

    type: Literal["WebhookAbandoned"] = "WebhookAbandoned"
    delivery: str
    attempt: Annotated[int, Field(ge=1)]
    error: ReadableText
    status: int | None = None


class WebhookRedeliveryRequested(Event):
    """An operator asked for these notifications to be sent again, with fresh tries."""

    type: Literal["WebhookRedeliveryRequested"] = "WebhookRedeliveryRequested"
    deliveries: Annotated[tuple[str, ...], Field(min_length=1)]


KEY_STREAM_PREFIX = "keys/"
KEY_ID_PREFIX = "key_"
TENANT_STREAM_PREFIX = "tenants/"


def key_stream(key_id: str) -> str:
    """The stream of an API key (``key_<ULID>``): issued, then perhaps revoked."""
    return f"{KEY_STREAM_PREFIX}{key_id}"


def tenant_stream(tenant: str) -> str:
    """The stream of a tenant's limits: each change of them."""
    return f"{TENANT_STREAM_PREFIX}{tenant}"


class KeyIssued(Event):
    """An API key was made for a tenant. Only its SHA-256 is kept: the key itself is
    shown once, to whoever made it."""

    type: Literal["KeyIssued"] = "KeyIssued"
    tenant: TenantName
    admin: bool = False
    """An admin key sees every tenant's work, acts on it, and manages keys."""
    sha256: Sha256
    prefix: Annotated[str, Field(min_length=1, max_length=16)]
    """The key's first characters, to tell keys apart in a listing."""


class KeyRevoked(Event):
    """The key no longer opens anything, from the moment this is committed."""

    type: Literal["KeyRevoked"] = "KeyRevoked"


class TenantLimitsSet(Event):
    """A tenant's share of the GPUs and its limits (None: unlimited), replacing the
    previous ones."""

    type: Literal["TenantLimitsSet"] = "TenantLimitsSet"
    weight: Annotated[float, Field(gt=0, le=1000)] = 1.0
    """Its share of a model's queue against other tenants' (fair share, ADR-0042)."""
    max_queued: Annotated[int, Field(ge=1)] | None = None
    """Jobs it may have queued at once, batch lines aside."""
    rate: Annotated[int, Field(ge=1)] | None = None
    """Submissions it may make per minute."""
    batch_share: Annotated[float, Field(gt=0, le=1)] | None = None
    """The fraction of the hosts its batch lines may hold at once."""


AnyEvent = Annotated[
    JobSubmitted
    | JobStarted
    | JobAttemptFailed
    | JobRequeued
    | JobSucceeded
    | JobFailed
    | JobCancelled
    | JobPruned
    | JobQuarantined
    | WebhookAttemptFailed
    | WebhookDelivered
    | WebhookAbandoned
    | WebhookRedeliveryRequested
    | BackendDown
    | BackendUp
    | BackendDrained
    | BackendResumed
    | FileStored
    | FileDeleted
    | BatchCreated
    | BatchStarted
    | BatchCancelling
    | BatchFinalizing
    | BatchEnded
    | KeyIssued
    | KeyRevoked
    | TenantLimitsSet,
    Field(discriminator="type"),
]

EVENT_TYPES: dict[str, type[Event]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        JobSubmitted,
        JobStarted,
        JobAttemptFailed,
        JobRequeued,
        JobSucceeded,
        JobFailed,
        JobCancelled,
        JobPruned,
        JobQuarantined,
        WebhookAttemptFailed,
        WebhookDelivered,
        WebhookAbandoned,
        WebhookRedeliveryRequested,
        BackendDown,
        BackendUp,
        BackendDrained,
        BackendResumed,
        FileStored,
        FileDeleted,
        BatchCreated,
        BatchStarted,
        BatchCancelling,
        BatchFinalizing,
        BatchEnded,
        KeyIssued,
        KeyRevoked,
        TenantLimitsSet,
    )
}


_NOT_DATA = {"type"}


def encode(event: Event) -> str:
    """The JSON text stored in the ``data`` column (``type`` has its own column).

    ``model_dump_json(exclude={"type"})``, without its Python wrapper (a third of
    its cost: ADR-0047); the same text."""
    return event.__pydantic_serializer__.to_json(event, exclude=_NOT_DATA).decode()


def stored_data(data: object) -> dict[str, Any]:
    """An event's stored ``data`` as an object, for showing it: what cannot be parsed
    (an unreadable event) is shown as ``{"unreadable": <the text>}``."""
    try:
        parsed = json.loads(data)  # type: ignore[arg-type]
    except (ValueError, TypeError, RecursionError):
        parsed = None
    return parsed if isinstance(parsed, dict) else {"unreadable": str(data)}


def decode(type_: str, schema_version: int, data: str) -> Event:
    """Rebuild an event from its stored columns, upcasting older schema versions."""
    try:
        cls = EVENT_TYPES[type_]
    except KeyError:
        raise UnknownEventType(f"unknown event type {type_!r}") from None
    if schema_version > cls.SCHEMA_VERSION:
        raise UnsupportedSchemaVersion(
            f"{type_} schema version {schema_version} was written by a newer Foreman "
            f"(this one reads up to {cls.SCHEMA_VERSION})"
        )
    try:
        if schema_version == cls.SCHEMA_VERSION:
            return cls.model_validate_json(data, context=STORED)
        return cls.model_validate(cls.upcast(schema_version, json.loads(data)), context=STORED)
    except UnreadableEvent:  # an upcaster that cannot read this version says so itself
        raise
    except (ValidationError, ValueError, TypeError, RecursionError) as error:
        raise EventDecodeError(f"{type_} v{schema_version} data does not decode: {error}") from None


class RecordedEvent(NamedTuple):
    """An event as the log holds it: the envelope, and the domain event.

    Fields are the ``events`` table's columns, in order, then ``decoded``: the
    domain event when the writer had it at hand, else None and :attr:`event`
    decodes ``data`` when asked. So a fold that needs only the envelope of some
    events (the jobs projection never reads a result) does not pay for
    decoding them, and replay builds a plain tuple per row. Equality and
    hashing are the envelope's (``hash`` covers ``data``).
    """

    seq: int
    id: str
    stream: str
    version: int
    type: str
    schema_version: int
    data: str
    recorded_at: str
    hash: str
    decoded: Event | None = None

    @property
    def event(self) -> Event:
        decoded = self.decoded
        if decoded is None:
            return decode(self.type, self.schema_version, self.data)
        return decoded

    @property
    def readable(self) -> bool:
        """Whether the event can be read back (an older build's or a damaged row may not)."""
        try:
            self.event  # noqa: B018 - decoding it is the check
        except UnreadableEvent:
            return False
        return True

    def with_event_decoded(self) -> RecordedEvent:
        """This event, its domain event decoded once for every later use."""
        return self if self.decoded is not None else self._replace(decoded=self.event)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RecordedEvent) and self[:9] == other[:9]

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self[:9])
