"""The jobs projection: each job's current state, folded from its stream.

State machine (an event outside it is refused before anything is appended)::

    (none) --JobSubmitted--> queued --JobStarted--> running
    running --JobAttemptFailed--> running      (the attempt's error is kept)
    running --JobRequeued(retry|interrupted)--> queued
    running --JobSucceeded--> succeeded
    running --JobFailed--> failed
    queued | running --JobCancelled--> cancelled
    succeeded | failed | cancelled --JobPruned--> (row removed)

An event of the job that cannot be read back (written by an older build, or
planted) marks the job ``unreadable`` instead of stopping the fold, and the
job's later events are passed over: its history can no longer be followed.
Recovery then records ``JobQuarantined`` for it (ADR-0032)::

    queued | running (unreadable) --JobQuarantined--> failed
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, cast

from foreman.events.projection import IllegalTransition, upsert
from foreman.events.types import (
    JobAttemptFailed,
    JobCancelled,
    JobFailed,
    JobQuarantined,
    JobStarted,
    JobSubmitted,
    RecordedEvent,
    UnreadableEvent,
)

if TYPE_CHECKING:
    from foreman.events.log import EventLog

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class JobError(NamedTuple):
    message: str
    status: int | None = None


class Job(NamedTuple):
    """A job's current state. A NamedTuple: immutable, and ``_replace`` is cheap."""

    id: str
    kind: str
    model: str
    state: JobState
    priority: int
    origin: str
    attempts: int
    version: int
    """Version of the job's stream after the last event folded in."""
    created_at: str
    updated_at: str
    started_at: str | None = None
    finished_at: str | None = None
    state_webhook_url: str | None = None
    idempotency_key: str | None = None
    error: JobError | None = None
    result_seq: int | None = None
    """The ``seq`` of the JobSucceeded event holding the result and artifact references:
    they live in the log once, not copied into every projection row (ADR-0017)."""
    cancel_reason: str | None = None
    metadata: str | None = None
    """The submitter's metadata as JSON text: stored and echoed back, never read here."""
    unreadable: int | None = None
    """The ``seq`` of the job's first event that cannot be read back: it is quarantined."""
    backend: str | None = None
    """The backend host of its latest attempt (``JobStarted.backend``)."""
    batch_id: str | None = None
    """The batch it is a line of, if any."""
    batch_line: int | None = None
    """Its line number in that batch's input file."""
    tenant: str | None = None
    """Who submitted it: the tenant of the key used (None: no key was)."""


def _require(job: Job | None, recorded: RecordedEvent, *states: str) -> Job:
    if job is None:
        raise _refuse(job, recorded, "no such job was submitted")
    if job.state not in states:
        raise _refuse(job, recorded, f"the job must be {' or '.join(states)}")
    return job


_FIELD = {name: index for index, name in enumerate(Job._fields)}
_STATE, _ATTEMPTS, _VERSION = _FIELD["state"], _FIELD["attempts"], _FIELD["version"]
_UPDATED_AT, _STARTED_AT, _FINISHED_AT = (
    _FIELD["updated_at"],
    _FIELD["started_at"],
    _FIELD["finished_at"],
)
_BACKEND, _RESULT_SEQ, _ERROR = _FIELD["backend"], _FIELD["result_seq"], _FIELD["error"]


def _job(values: list[Any]) -> Job:
    """A job from all its fields in order (``Job._make`` without its length check)."""
    return tuple.__new__(Job, values)


def _refuse(job: Job | None, recorded: RecordedEvent, reason: str) -> IllegalTransition:
    return IllegalTransition(recorded.stream, job.state if job else None, recorded.type, reason)


def _submitted(job: Job | None, recorded: RecordedEvent) -> Job:
    if job is not None or recorded.version != 1:
        raise _refuse(job, recorded, "already submitted: a job's stream starts with it")
    event = cast(JobSubmitted, recorded.event)
    batch, metadata, at = event.batch, event.metadata, recorded.recorded_at
    # Job(id=recorded.stream, kind=event.kind, ...) by position, in half its time: a
    # NamedTuple's keywords cost a Python call, and every job passes here.
    return _job(
        [
            recorded.stream,  # id
            event.kind,
            event.model,
            "queued",  # state
            event.priority,
            event.origin,
            0,  # attempts
            recorded.version,
            at,  # created_at
            at,  # updated_at
            None,  # started_at
            None,  # finished_at
            event.state_webhook_url,
            event.idempotency_key,
            None,  # error
            None,  # result_seq
            None,  # cancel_reason
            None if metadata is None else json.dumps(metadata),
            None,  # unreadable
            None,  # backend
            None if batch is None else batch.batch_id,
            None if batch is None else batch.line,
            event.tenant,
        ]
    )


def _started(job: Job | None, recorded: RecordedEvent) -> Job:
    job = _require(job, recorded, "queued")
    started = cast(JobStarted, recorded.event)
    attempt = started.attempt
    if attempt != job.attempts + 1:
        raise _refuse(
            job,
            recorded,
            f"attempt {attempt} follows attempt {job.attempts}; expected {job.attempts + 1}",
        )
    at = recorded.recorded_at
    # job._replace(state="running", attempts=attempt, started_at=at, backend=...,
    # version=..., updated_at=at), in a third of its time: every job passes here.
    values = list(job)
    values[_STATE] = "running"
    values[_ATTEMPTS] = attempt
    values[_STARTED_AT] = values[_UPDATED_AT] = at
    values[_BACKEND] = started.backend
    values[_VERSION] = recorded.version
    return _job(values)


def _attempt_failed(job: Job | None, recorded: RecordedEvent) -> Job:
    job = _require(job, recorded, "running")
    event = cast(JobAttemptFailed, recorded.event)
    if event.attempt != job.attempts:
        raise _refuse(
            job, recorded, f"attempt {event.attempt} is not the running attempt {job.attempts}"
        )
    return job._replace(
        error=JobError(event.error), version=recorded.version, updated_at=recorded.recorded_at
    )


def _requeued(job: Job | None, recorded: RecordedEvent) -> Job:
    job = _require(job, recorded, "running")
    return job._replace(state="queued", version=recorded.version, updated_at=recorded.recorded_at)


def _succeeded(job: Job | None, recorded: RecordedEvent) -> Job:
    # Reads only the envelope: the result stays in the log, undecoded (result_seq).
    job = _require(job, recorded, "running")
    at = recorded.recorded_at
    # job._replace(state="succeeded", result_seq=..., error=None, finished_at=at,
    # version=..., updated_at=at), as in _started.
    values = list(job)
    values[_STATE] = "succeeded"
    values[_RESULT_SEQ] = recorded.seq
    values[_ERROR] = None
    values[_FINISHED_AT] = values[_UPDATED_AT] = at
    values[_VERSION] = recorded.version
    return _job(values)


def _failed(job: Job | None, recorded: RecordedEvent) -> Job:
    job = _require(job, recorded, "running")
    event = cast(JobFailed, recorded.event)
    at = recorded.recorded_at
    return job._replace(
        state="failed",
        error=JobError(event.error, event.status),
        finished_at=at,
        version=recorded.version,
        updated_at=at,
    )


def _cancelled(job: Job | None, recorded: RecordedEvent) -> Job:
    job = _require(job, recorded, "queued", "running")
    at = recorded.recorded_at
    return job._replace(
        state="cancelled",
        cancel_reason=cast(JobCancelled, recorded.event).reason,
        finished_at=at,
        version=recorded.version,
        updated_at=at,
    )


def _pruned(job: Job | None, recorded: RecordedEvent) -> None:
    _require(job, recorded, *sorted(TERMINAL_STATES))


def _quarantined(job: Job | None, recorded: RecordedEvent) -> Job:
    job = _require(job, recorded, "queued", "running")
    if job.unreadable is None:
        raise _refuse(job, recorded, "every event of the job can be read")
    at = recorded.recorded_at
    return job._replace(
        state="failed",
        error=JobError(f"quarantined: {cast(JobQuarantined, recorded.event).reason}"),
        finished_at=at,
        version=recorded.version,
        updated_at=at,
    )


_TRANSITIONS: dict[str, Callable[[Job | None, RecordedEvent], Job | None]] = {
    "JobSubmitted": _submitted,
    "JobStarted": _started,
    "JobAttemptFailed": _attempt_failed,
    "JobRequeued": _requeued,
    "JobSucceeded": _succeeded,
    "JobFailed": _failed,
    "JobCancelled": _cancelled,
    "JobPruned": _pruned,
    "JobQuarantined": _quarantined,
}
_AFTER_UNREADABLE = {"JobQuarantined", "JobPruned"}
"""What still applies to a job once one of its events could not be read."""
REASON_LIMIT = 300
"""Characters of a decoding error kept in a quarantined job's error."""


def evolve(job: Job | None, recorded: RecordedEvent) -> Job | None:
    """The job after ``recorded``; pure, and raises IllegalTransition on a refused event."""
    try:
        transition = _TRANSITIONS[recorded.type]
    except KeyError:
        raise _refuse(job, recorded, "not a job event") from None
    if job is not None and job.unreadable is not None and recorded.type not in _AFTER_UNREADABLE:
        return job._replace(version=recorded.version)
    try:
        return transition(job, recorded)
    except UnreadableEvent as error:
        return _unreadable(job, recorded, error)


def _unreadable(job: Job | None, recorded: RecordedEvent, error: UnreadableEvent) -> Job | None:
    """The job marked as holding an event that cannot be read back (its state stays
    as it was until recovery quarantines it)."""
    why = error.reason
    if len(why) > REASON_LIMIT:
        why = why[: REASON_LIMIT - 1] + "…"
    problem = JobError(f"event {recorded.seq} ({recorded.type}) cannot be read back: {why}")
    if job is None:
        if recorded.type != "JobSubmitted":
            return None
        job = _from_unreadable_submission(recorded)
    return job._replace(unreadable=recorded.seq, error=problem, version=recorded.version)


def _from_unreadable_submission(recorded: RecordedEvent) -> Job:
    """A job whose ``JobSubmitted`` cannot be decoded, with what can be made out of it."""
    try:
        data = json.loads(recorded.data)
    except (ValueError, TypeError, RecursionError):
        data = None
    seen: dict[str, Any] = data if isinstance(data, dict) else {}
    kind, model, origin = seen.get("kind"), seen.get("model"), seen.get("origin")
    at = recorded.recorded_at
    return Job(
        id=recorded.stream,
        kind=kind if kind in ("chat", "generate", "embed") else "chat",
        model=model if isinstance(model, str) and model and model.isprintable() else "(unreadable)",
        state="queued",
        priority=0,
        origin=origin if origin in ("sync", "async", "batch") else "async",
        attempts=0,
        version=recorded.version,
        created_at=at,
        updated_at=at,
    )


_COLUMNS = Job._fields


def _to_row(job: Job) -> tuple[Any, ...]:
    """The row of a job: its fields in order, the error as a JSON pair."""
    error = job.error
    if error is None:
        return job
    return (*job[:_ERROR], json.dumps(error), *job[_ERROR + 1 :])


def job_from_row(row: tuple[Any, ...]) -> Job:
    job = Job._make(row)
    error = job.error
    if error is None:
        return job
    return job._replace(error=JobError(*json.loads(error)))  # type: ignore[arg-type]


SELECT_JOBS = f"SELECT {', '.join(_COLUMNS)} FROM jobs"
_LOAD_CHUNK = 500


class JobsProjection:
    """Stores :class:`Job` rows in the ``jobs`` table."""

    name: ClassVar[str] = "jobs"
    version: ClassVar[int] = 7

    def create(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            """CREATE TABLE IF NOT EXISTS jobs (
                id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                model TEXT NOT NULL,
                state TEXT NOT NULL,
                priority INTEGER NOT NULL,
                origin TEXT NOT NULL,
                attempts INTEGER NOT NULL,
                version INTEGER NOT NULL,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                started_at TEXT,
                finished_at TEXT,
                state_webhook_url TEXT,
                idempotency_key TEXT,
                error TEXT,
                result_seq INTEGER,
                cancel_reason TEXT,
                metadata TEXT,
                unreadable INTEGER,
                backend TEXT,
                batch_id TEXT,
                batch_line INTEGER,
                tenant TEXT
            ) WITHOUT ROWID"""
        )
        # By state, newest first within one: recovery finds the unfinished jobs, and
        # GET /jobs?state= pages through one state, without a scan.
        conn.execute("CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, id)")
        # A tenant's jobs, newest first: GET /jobs with a tenant's key.
        conn.execute("CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (tenant, id)")
        # Idempotency-Key: the job a key already created.
        conn.execute(
            "CREATE INDEX IF NOT EXISTS jobs_by_idempotency_key ON jobs (idempotency_key) "
            "WHERE idempotency_key IS NOT NULL"
        )
        # Jobs holding an event that cannot be read back: recovery's first look, at start.
        conn.execute(
            "CREATE INDEX IF NOT EXISTS jobs_unreadable ON jobs (unreadable) "
            "WHERE unreadable IS NOT NULL"
        )
        # A batch's lines by state: its request counts, and what is left to run.
        conn.execute(
            "CREATE INDEX IF NOT EXISTS jobs_by_batch ON jobs (batch_id, state) "
            "WHERE batch_id IS NOT NULL"
        )
        # Finished jobs by when they finished: the janitor's pruning order.
        conn.execute(
            "CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) "
            "WHERE finished_at IS NOT NULL"
        )

    def drop(self, conn: sqlite3.Connection) -> None:
        conn.execute("DROP TABLE IF EXISTS jobs")

    def key(self, event: RecordedEvent) -> str | None:
        return event.stream if event.type in _TRANSITIONS else None

    evolve = staticmethod(evolve)

    def load(self, conn: sqlite3.Connection, keys: Iterable[str]) -> dict[str, Job]:
        keys = list(keys)
        jobs: dict[str, Job] = {}
        for start in range(0, len(keys), _LOAD_CHUNK):
            chunk = keys[start : start + _LOAD_CHUNK]
            marks = ", ".join("?" * len(chunk))
            for row in conn.execute(f"{SELECT_JOBS} WHERE id IN ({marks})", chunk):
                job = job_from_row(row)
                jobs[job.id] = job
        return jobs

    def save(self, conn: sqlite3.Connection, states: Mapping[str, Job | None]) -> None:
        upsert(conn, "jobs", _COLUMNS, [_to_row(job) for job in states.values() if job is not None])
        gone = [(key,) for key, job in states.items() if job is None]
        if gone:
            conn.executemany("DELETE FROM jobs WHERE id = ?", gone)

    def load_all(self, conn: sqlite3.Connection) -> dict[str, Job]:
        return {row[0]: job_from_row(row) for row in conn.execute(f"{SELECT_JOBS} ORDER BY id")}


def finished_before(log: EventLog, cutoff: str, limit: int) -> list[str]:
    """Up to ``limit`` finished jobs whose ``finished_at`` is before ``cutoff``, the
    longest finished first (by the ``jobs_finished`` index, not a scan), leaving out
    those whose webhook deliveries are still pending (they are owed first) and the
    lines of a batch that has not ended (its output is made from them)."""
    rows = log.conn.execute(
        "SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ? "
        "AND NOT EXISTS (SELECT 1 FROM deliveries "
        "WHERE deliveries.job_id = jobs.id AND state = 'pending') "
        "AND NOT EXISTS (SELECT 1 FROM batches "
        "WHERE batches.id = jobs.batch_id AND batches.ended_at IS NULL) "
        "ORDER BY finished_at LIMIT ?",
        (cutoff, limit),
    )
    return [job_id for (job_id,) in rows]


def with_unreadable_events(log: EventLog) -> list[Job]:
    """The jobs whose streams hold an event that cannot be read back (ADR-0032)."""
    rows = log.conn.execute(f"{SELECT_JOBS} WHERE unreadable IS NOT NULL ORDER BY unreadable")
    return [job_from_row(row) for row in rows]


def existing_jobs(log: EventLog, job_ids: list[str]) -> set[str]:
    """Which of ``job_ids`` the jobs projection holds (not pruned, not unknown)."""
    return set(JobsProjection().load(log.conn, job_ids))
