"""The async job API: ``POST /jobs``, then poll, list, audit, cancel, fetch outputs.

A job submitted here is the same durable job ``/api/chat`` makes (origin
``async``): ``JobSubmitted`` is committed before the 202, the scheduler runs
it by priority then drain-by-model, and it never streams. Reads come from the
log through the :class:`~foreman.events.reader.Reader`; the queue position,
which only the scheduler knows, is asked of it.
"""

from __future__ import annotations

import errno
import math
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, NoReturn

import httpx
import trio
from fastapi import APIRouter, Header, Query, Request, params
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator
from starlette.responses import FileResponse, Response

from foreman.actors import (
    JournalClient,
    ModelNotFound,
    QueueFull,
    SchedulerClient,
    TenantQueueFull,
)
from foreman.api.auth import Principal, principal
from foreman.api.bound import Bound, Busy
from foreman.api.errors import ApiProblem
from foreman.api.rates import QUEUED_RETRY_AFTER, over_queue
from foreman.api.schemas import (
    ApiError,
    EventView,
    JobAccepted,
    JobEvents,
    JobPage,
    RedeliverWebhooks,
    Redelivery,
    SubmitJob,
)
from foreman.api.stored import stored_headers
from foreman.artifacts import ArtifactStore, output_bytes, outputs, picked, valid_name
from foreman.events.deliveries import Deliveries, job_deliveries, redeliveries_asked
from foreman.events.jobs import TERMINAL_STATES, Job, JobState
from foreman.events.log import EventLog, unix_time, wall_clock
from foreman.events.projection import IllegalTransition
from foreman.events.queries import (
    JobRecord,
    job_by_idempotency_key,
    job_record,
    list_jobs,
    submitted_as,
    submitted_job,
)
from foreman.events.reader import Reader
from foreman.events.types import (
    ArtifactRef,
    JobKind,
    JobSubmitted,
    WebhookRedeliveryRequested,
    delivery_stream,
    stored_data,
)
from foreman.units import format_duration
from foreman.views import (
    ArtifactView,
    DeliveryView,
    JobView,
    artifact_view,
    delivery_view,
    job_summary,
    job_view,
)
from foreman.webhooks import Targets

BUSY = "the queue is full (FOREMAN_MAX_QUEUE): try again shortly"
LISTINGS_BUSY = "too many job listings at once (FOREMAN_MAX_LISTINGS): try again shortly"
DEFAULT_PAGE = 50
MAX_PAGE = 1000
JOB_ID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")
"""A job's id: a ULID, 26 Crockford base32 characters, as Foreman mints them."""
CANCEL_SETTLING_SECONDS = 2.0
"""How long a cancel's answer may wait for the worker to record that a job sent to
the backend never started."""
REDELIVERIES = 10
REDELIVERY_WINDOW = 3600.0
"""A job's notifications may be asked for again ``REDELIVERIES`` times per window."""
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ApiError, "description": description}
    for status, description in {
        400: "The body is not JSON.",
        404: "No such job (or artifact); on submission: no backend has the model.",
        409: "In conflict with the job's state, or with an earlier use of the Idempotency-Key.",
        410: "The job finished long ago and was pruned (FOREMAN_JOB_TTL).",
        413: "The body is over FOREMAN_MAX_BODY.",
        422: "A field is missing or invalid.",
        429: "Over the tenant's limits (queued jobs, submissions a minute): see Retry-After.",
        503: "The queue is full (FOREMAN_MAX_QUEUE), or the event log cannot be written "
        "now: Foreman takes no new work (the reason, and Retry-After).",
    }.items()
}


JOB_LINKS = {
    name: {"operationId": operation, "parameters": {"job_id": "$response.body#/job_id"}}
    for name, operation in (
        ("GetJob", "get_job"),
        ("GetJobEvents", "get_job_events"),
        ("CancelJob", "cancel_job"),
        ("RedeliverWebhooks", "redeliver_webhooks"),
    )
}
"""OpenAPI links: the id ``POST /jobs`` returns is what the other operations take."""


@dataclass(frozen=True, slots=True)
class JobsApi:
    """What the job API's routes talk to."""

    journal: JournalClient
    scheduler: SchedulerClient
    reader: Reader
    store: ArtifactStore
    inline_max: int
    listings: Bound
    """FOREMAN_MAX_LISTINGS: ``GET /jobs`` listings in flight at once."""
    listing_reader: Reader
    """Listings read on a connection and thread of their own: a job poll never waits
    behind pages of a thousand jobs."""
    webhook_targets: Targets = field(default_factory=Targets)
    """Where a state_webhook_url may point: public addresses, and the hosts
    FOREMAN_WEBHOOK_ALLOWED_HOSTS names."""
    _key_locks: dict[str, trio.Lock] = field(default_factory=dict)

    @asynccontextmanager
    async def holding(self, idempotency_key: str) -> AsyncIterator[None]:
        """One submission at a time per Idempotency-Key, so its lookup and its submit
        are one step; the lock goes away with its last user."""
        lock = self._key_locks.setdefault(idempotency_key, trio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._key_locks.pop(idempotency_key, None)


def job_routes(api: JobsApi, writes: params.Depends) -> APIRouter:
    """``writes``: the dependency of a route that appends (:mod:`foreman.api.writable`)."""
    router = APIRouter(prefix="/jobs", tags=["jobs"])

    def responses(
        *statuses: int, extra: dict[int | str, dict[str, Any]] | None = None
    ) -> dict[int | str, dict[str, Any]]:
        return (extra or {}) | {status: ERRORS[status] for status in statuses}

    @router.post(
        "",
        operation_id="submit_job",
        status_code=202,
        response_model=JobAccepted,
        responses=responses(
            400,
            404,
            409,
            413,
            422,
            429,
            503,
            extra={
                200: {"model": JobAccepted, "description": "The job this key made."},
                202: {"links": JOB_LINKS},
            },
        ),
        dependencies=[writes],
    )
    async def submit(
        body: SubmitJob,
        who: principal,
        idempotency_key: Annotated[
            str | None, Header(min_length=1, max_length=255, description="Repeat safely.")
        ] = None,
    ) -> Response:
        """Queue a job; 202 with its id and ``Location``. With an ``Idempotency-Key``
        already used (by the same tenant) for the same body: 200 and that job; for
        another body: 409."""
        _check_webhook_host(api, body)
        if idempotency_key is None:
            return await _submit(api, body, None, who)
        async with api.holding(f"{who.tenant}\0{idempotency_key}"):
            return await _submit_once(api, body, idempotency_key, who)

    @router.get(
        "",
        operation_id="list_jobs",
        response_model=JobPage,
        responses=responses(
            422, extra={503: {"model": ApiError, "description": "Too many listings at once."}}
        ),
    )
    async def list_(
        state: JobState | None = None,
        model: str | None = None,
        kind: JobKind | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
        cursor: Annotated[
            str | None,
            Query(description="next_cursor of the page before"),
            AfterValidator(_job_id),
        ] = None,
        *,
        who: principal,
    ) -> Response:
        """Jobs, newest first, a page at a time (503 beyond FOREMAN_MAX_LISTINGS at once);
        a tenant's key lists its own."""
        with listing(api):
            page = await api.listing_reader.read(
                lambda log: _page(
                    log,
                    state=state,
                    model=model,
                    kind=kind,
                    cursor=cursor,
                    limit=limit,
                    tenant=who.sees,
                )
            )
        return Response(page, media_type="application/json")

    @router.get(
        "/{job_id}", operation_id="get_job", response_model=JobView, responses=responses(404, 410)
    )
    async def get(job_id: str, who: principal) -> Response:
        """The job: state, place in the queue, result, outputs."""
        return _json(await _view(api, job_id, who))

    @router.get(
        "/{job_id}/events",
        operation_id="get_job_events",
        response_model=JobEvents,
        responses=responses(404),
    )
    async def events(job_id: str, who: principal) -> JobEvents:
        """The job's whole history from the log (kept after it is pruned), for audit."""
        recorded = await api.reader.read(EventLog.read_stream, job_id)
        submitted = submitted_as(recorded[0]) if recorded else None
        # A submission that cannot be read back names no tenant: admins only see it.
        if not recorded or not who.owns(submitted.tenant if submitted else None):
            raise ApiProblem(404, f"no job {job_id!r}")
        return JobEvents(
            events=[
                EventView(
                    seq=e.seq, type=e.type, recorded_at=e.recorded_at, data=stored_data(e.data)
                )
                for e in recorded
            ]
        )

    @router.delete(
        "/{job_id}",
        operation_id="cancel_job",
        response_model=JobView,
        responses=responses(
            404,
            409,
            410,
            503,
            extra={202: {"model": JobView, "description": "Running: being stopped."}},
        ),
        dependencies=[writes],
    )
    async def cancel(job_id: str, who: principal) -> Response:
        """Cancel: a queued job never runs (200); a running one's backend call is
        stopped (202, ``JobCancelled`` follows); a finished one: 409."""
        record = await _record(api, job_id, who)
        if record.job.state not in TERMINAL_STATES:
            answer = await api.scheduler.cancel(job_id, "cancelled_by_request")
            if answer != "not_found":
                view = await (_settled_view if answer == "stopping" else _view)(api, job_id, who)
                return _json(view, 200 if view.state == "cancelled" else 202)
            record = await _record(api, job_id, who)
        raise ApiProblem(409, f"job {job_id} has already {record.job.state}: nothing to cancel")

    @router.get(
        "/{job_id}/artifacts/{name}",
        operation_id="get_artifact",
        response_class=FileResponse,
        responses=responses(
            404,
            410,
            extra={
                200: {"description": "The artifact's bytes.", "content": {"*/*": {}}},
                206: {"description": "The requested range.", "content": {"*/*": {}}},
                304: {"description": "Unchanged (If-None-Match)."},
            },
        ),
    )
    async def artifact(job_id: str, name: str, request: Request, who: principal) -> Response:
        """An output's bytes, with its media type, ``ETag`` (its sha256) and ranges."""
        record = await _record(api, job_id, who)
        ref = _artifact(record, name)
        etag = f'"{ref.sha256}"'
        if etag in _etags(request.headers.get("if-none-match", "")):
            return Response(status_code=304, headers={"ETag": etag})
        return await _download(api, record, ref)

    @router.post(
        "/{job_id}/webhooks/redeliver",
        operation_id="redeliver_webhooks",
        status_code=202,
        response_model=Redelivery,
        responses=responses(400, 404, 409, 410, 413, 422, 429, 503),
        dependencies=[writes],
    )
    async def redeliver(
        job_id: str, who: principal, body: RedeliverWebhooks | None = None
    ) -> Redelivery:
        """Send state notifications again, with fresh tries: every abandoned one, or
        the ones named (delivered or abandoned). They keep their ``webhook-id``."""
        record = await _record(api, job_id, who)
        if record.job.state_webhook_url is None:
            raise ApiProblem(409, f"job {job_id} was submitted without a state_webhook_url")
        _check_redelivery_rate(job_id, await api.reader.read(redeliveries_asked, job_id))
        chosen = _to_redeliver(await api.reader.read(job_deliveries, job_id), body)
        ids = tuple(delivery.id for delivery in chosen)
        try:
            await api.journal.append(
                delivery_stream(job_id), [WebhookRedeliveryRequested(deliveries=ids)]
            )
        except IllegalTransition as refused:
            raise ApiProblem(409, f"not sent again: {refused}") from None
        now = await api.reader.read(job_deliveries, job_id)
        return Redelivery(redelivered=[delivery_view(d) for d in now if d.id in ids])

    return router


def _page(
    log: EventLog,
    *,
    state: JobState | None,
    model: str | None,
    kind: JobKind | None,
    cursor: str | None,
    limit: int,
    tenant: str | None,
) -> bytes:
    """A page of the listing as JSON, built on the reader's thread: a page of a thousand
    jobs is work the event loop, answering everyone else, should not do."""
    jobs = list_jobs(
        log, state=state, model=model, kind=kind, before=cursor, limit=limit + 1, tenant=tenant
    )
    more = len(jobs) > limit
    jobs = jobs[:limit]
    page = JobPage(
        jobs=[job_summary(job) for job in jobs], next_cursor=jobs[-1].id if more else None
    )
    return page.model_dump_json().encode()


@contextmanager
def listing(api: JobsApi) -> Iterator[None]:
    """One of the FOREMAN_MAX_LISTINGS places for the block, or 503 at once."""
    try:
        with api.listings.slot():
            yield
    except Busy:
        raise ApiProblem(503, LISTINGS_BUSY, headers={"Retry-After": "1"}) from None


def _job_id(value: str | None) -> str | None:
    if value is not None and not JOB_ID.fullmatch(value):
        raise ValueError("not a job id: a cursor is the 26-character ULID of next_cursor")
    return value


async def _settled_view(api: JobsApi, job_id: str, who: Principal) -> JobView:
    """The view of a job its worker is stopping. One sent to the backend behind the
    running job (ADR-0026) is still ``queued`` in the log when the scheduler hands
    its cancel to the worker, which records ``JobCancelled`` a moment later: wait
    for the job's next event (subscribed before the view is read, so none is missed)."""
    async with await api.journal.subscribe() as committed:
        view = await _view(api, job_id, who)
        if view.state != "queued":
            return view
        with trio.move_on_after(CANCEL_SETTLING_SECONDS):
            async for events in committed:
                if any(event.stream == job_id for event in events):
                    break
    return await _view(api, job_id, who)


def _check_webhook_host(api: JobsApi, body: SubmitJob) -> None:
    """A URL naming an address webhooks may not go to is refused now; one naming a
    host is judged by what the host resolves to when a notification is sent (a
    resolution now could differ then, and would cost each submission a lookup)."""
    url = body.state_webhook_url
    if url is None:
        return
    problem = api.webhook_targets.literal_refusal(httpx.URL(url).raw_host.decode("ascii"))
    if problem is not None:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", "state_webhook_url"), "msg": problem}]
        )


def _check_redelivery_rate(job_id: str, asked: list[str]) -> None:
    """429 with ``Retry-After`` once a job's notifications were asked for again
    :data:`REDELIVERIES` times within :data:`REDELIVERY_WINDOW` seconds (by the log:
    a restart forgets nothing): a redelivery is a request to the receiver, and a
    client in a loop would make Foreman hammer it."""
    now = wall_clock().timestamp()
    recent = [moment for moment in map(unix_time, asked) if moment > now - REDELIVERY_WINDOW]
    if len(recent) < REDELIVERIES:
        return
    wait = math.ceil(recent[-REDELIVERIES] + REDELIVERY_WINDOW - now)
    raise ApiProblem(
        429,
        f"job {job_id}'s notifications were sent again {REDELIVERIES} times in the last "
        f"{format_duration(REDELIVERY_WINDOW)}: try again in {wait} s",
        headers={"Retry-After": str(wait)},
    )


def _to_redeliver(deliveries: Deliveries, body: RedeliverWebhooks | None) -> Deliveries:
    if body is None or body.ids is None:
        abandoned = tuple(d for d in deliveries if d.state == "abandoned")
        if not abandoned:
            raise ApiProblem(409, "no webhook delivery of this job is abandoned: nothing to send")
        return abandoned
    known = {d.id: d for d in deliveries}
    unknown = [id_ for id_ in body.ids if id_ not in known]
    if unknown:
        raise ApiProblem(404, f"the job has no webhook deliveries {', '.join(unknown)}")
    # One still pending is refused by the log itself (409, from the append).
    return tuple(known[id_] for id_ in dict.fromkeys(body.ids))


async def _submit_once(api: JobsApi, body: SubmitJob, key: str, who: Principal) -> Response:
    earlier = await api.reader.read(job_by_idempotency_key, key, who.tenant)
    if earlier is None:
        return await _submit(api, body, key, who)
    job_id, submitted = earlier
    if _as_submitted(body, key, who.tenant) != submitted:
        raise ApiProblem(409, f"Idempotency-Key {key!r} was used for another request body")
    record = await _record(api, job_id, who)
    return _accepted(await _accepted_view(api, record.job), 200)


async def _submit(api: JobsApi, body: SubmitJob, key: str | None, who: Principal) -> Response:
    try:
        queued = await api.scheduler.submit(_as_submitted(body, key, who.tenant))
    except TenantQueueFull as full:
        headers = {"Retry-After": str(QUEUED_RETRY_AFTER)}
        raise ApiProblem(429, over_queue(full), headers=headers) from None
    except QueueFull:
        raise ApiProblem(503, BUSY, headers={"Retry-After": "1"}) from None
    except ModelNotFound as missing:
        raise ApiProblem(404, f"no backend has the model {missing.args[0]!r}") from None
    accepted = JobAccepted(
        job_id=queued.job_id,
        state="queued",
        created_at=queued.created_at,
        queue_position=queued.position,
        location=f"/jobs/{queued.job_id}",
    )
    return _accepted(accepted, 202)


def _as_submitted(body: SubmitJob, key: str | None, tenant: str | None) -> JobSubmitted:
    """The event ``tenant``'s submission becomes: async jobs never stream."""
    request = body.request.model_dump()
    if body.kind != "embed":
        request["stream"] = False
    return JobSubmitted(
        kind=body.kind,
        model=request["model"],
        request=request,
        priority=body.priority,
        state_webhook_url=body.state_webhook_url,
        origin="async",
        idempotency_key=key,
        metadata=body.metadata,
        tenant=tenant,
    )


def _accepted(accepted: JobAccepted, status: int) -> Response:
    headers = {"Location": accepted.location}
    return Response(accepted.model_dump_json(), status, headers, media_type="application/json")


async def _accepted_view(api: JobsApi, job: Job) -> JobAccepted:
    position = await api.scheduler.position(job.id) if job.state == "queued" else None
    return JobAccepted(
        job_id=job.id,
        state=job.state,
        created_at=job.created_at,
        queue_position=position,
        location=f"/jobs/{job.id}",
    )


async def _record(api: JobsApi, job_id: str, who: Principal) -> JobRecord:
    """The job, if ``who`` may see it: another tenant's is as unknown as none (404)."""
    record = await api.reader.read(job_record, job_id)
    if record is None or not who.owns(record.job.tenant):
        await _missing(api, job_id, who)
    return record


async def _missing(api: JobsApi, job_id: str, who: Principal) -> NoReturn:
    """404, or 410 for a job of ``who``'s that the log has but the janitor pruned."""
    submitted = await api.reader.read(submitted_job, job_id)
    if submitted is not None and who.owns(submitted.tenant):
        raise ApiProblem(410, f"job {job_id} finished long ago and was pruned (FOREMAN_JOB_TTL)")
    raise ApiProblem(404, f"no job {job_id!r}")


async def _view(api: JobsApi, job_id: str, who: Principal) -> JobView:
    """The job's view: its record, outputs and deliveries read in one go on the
    reader's thread, its queue position from the scheduler."""
    found = await api.reader.read(_read_view, api, job_id)
    if found is None or not who.owns(found[0].job.tenant):
        await _missing(api, job_id, who)
    record, artifacts, deliveries = found
    job = record.job
    return job_view(
        record,
        artifacts,
        queue_position=await api.scheduler.position(job.id) if job.state == "queued" else None,
        webhooks=None if job.state_webhook_url is None else deliveries,
    )


def _read_view(
    log: EventLog, api: JobsApi, job_id: str
) -> tuple[JobRecord, list[ArtifactView], list[DeliveryView]] | None:
    record = job_record(log, job_id)
    if record is None:
        return None
    refs = record.succeeded.artifacts if record.succeeded is not None else ()
    # Small outputs are shown inline: made from the job's response, once for all of
    # them (ADR-0048), or read from the file an older Foreman wrote.
    made: list[tuple[str, str, bytes]] = []
    artifacts = []
    for ref in refs:
        inline = None
        if ref.size <= api.inline_max:
            path = api.store.path(job_id, ref.sha256)
            if path.is_file():
                inline = path.read_bytes()
            else:
                made = made or outputs(record.job.kind, _result(record))
                inline = picked(made, ref)
        artifacts.append(artifact_view(job_id, ref, inline=inline))
    return record, artifacts, [delivery_view(d) for d in job_deliveries(log, job_id)]


async def _download(api: JobsApi, record: JobRecord, ref: ArtifactRef) -> Response:
    """An output served from its file, written from the job's response the first time
    it is asked (ADR-0048); when the disk will not take it (full, read-only), the
    bytes, whole (no ranges)."""
    headers = {"ETag": f'"{ref.sha256}"', **stored_headers(ref.name, ref.media_type)}
    result = _result(record)
    try:
        path = await trio.to_thread.run_sync(
            api.store.output, record.job.id, record.job.kind, result, ref
        )
    except OSError as error:
        if error.errno not in DISK_REFUSALS:
            raise
        data = output_bytes(record.job.kind, result, ref)
        return Response(data, media_type=ref.media_type, headers=headers)
    return FileResponse(path, media_type=ref.media_type, headers=headers)


def _result(record: JobRecord) -> dict[str, Any]:
    assert record.succeeded is not None  # only a success names outputs
    return record.succeeded.result


def _json(model: JobView, status: int = 200) -> Response:
    """Serialized once, straight from the model (the route's response_model documents it)."""
    return Response(model.model_dump_json(), status, media_type="application/json")


def _artifact(record: JobRecord, name: str) -> ArtifactRef:
    refs = record.succeeded.artifacts if record.succeeded is not None else ()
    for ref in refs if valid_name(name) else ():
        if ref.name == name:
            return ref
    raise ApiProblem(404, f"job {record.job.id} has no artifact named {name!r}")


DISK_REFUSALS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
"""Why a disk may not take a file, which an output is served without."""


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}
