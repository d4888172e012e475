"""The batches projection: each batch's status, folded from its stream.

State machine (OpenAI's statuses)::

    (none) --BatchCreated--> validating --BatchStarted--> in_progress
    validating | in_progress --BatchCancelling--> cancelling
    validating | in_progress | cancelling --BatchFinalizing--> finalizing
        (a cancelled batch stays ``cancelling`` until it has ended)
    validating --BatchEnded(failed)--> failed
    finalizing | cancelling --BatchEnded--> completed | expired | cancelled

A running batch's request counts are not folded here: they are its lines' jobs
by state (:func:`line_counts`), so no batch event is written per line.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, ClassVar, Literal, NamedTuple, cast

from foreman.events.jobs import SELECT_JOBS, TERMINAL_STATES, Job, job_from_row
from foreman.events.log import format_timestamp
from foreman.events.rows import RowsProjection, Transition, owned_by, refuse
from foreman.events.types import (
    BATCH_STREAM_PREFIX,
    BatchCreated,
    BatchEnded,
    BatchFinalizing,
    RecordedEvent,
)

if TYPE_CHECKING:
    from foreman.events.log import EventLog

BatchStatus = Literal[
    "validating",
    "in_progress",
    "finalizing",
    "completed",
    "failed",
    "expired",
    "cancelling",
    "cancelled",
]
ENDED: frozenset[str] = frozenset({"completed", "failed", "expired", "cancelled"})


class Batch(NamedTuple):
    id: str
    status: BatchStatus
    endpoint: str
    input_file_id: str
    completion_window: str
    requests: int
    metadata: str | None
    """As JSON text."""
    created_at: str
    expires_at: str
    version: int
    in_progress_at: str | None = None
    finalizing_at: str | None = None
    cancelling_at: str | None = None
    ended_at: str | None = None
    end: str | None = None
    """How it ends, once decided (``BatchFinalizing``)."""
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0
    errors: str | None = None
    """Why it failed, as JSON text (a list of OpenAI's error objects)."""
    tenant: str | None = None


def expiry(created_at: str, window: float) -> str:
    """When a batch made at ``created_at`` expires, its window later."""
    return format_timestamp(datetime.fromisoformat(created_at) + timedelta(seconds=window))


def _require(batch: Batch | None, recorded: RecordedEvent, *states: str) -> Batch:
    if batch is None:
        raise refuse(batch, recorded, "no such batch was created")
    if batch.status not in states:
        raise refuse(batch, recorded, f"the batch must be {' or '.join(states)}")
    return batch


def _created(batch: Batch | None, recorded: RecordedEvent) -> Batch:
    if batch is not None or recorded.version != 1:
        raise refuse(batch, recorded, "a batch's stream starts with it")
    event = cast(BatchCreated, recorded.event)
    at = recorded.recorded_at
    return Batch(
        id=recorded.stream.removeprefix(BATCH_STREAM_PREFIX),
        status="validating",
        endpoint=event.endpoint,
        input_file_id=event.input_file_id,
        completion_window=event.completion_window,
        requests=event.requests,
        metadata=None if event.metadata is None else json.dumps(event.metadata),
        created_at=at,
        expires_at=expiry(at, event.window),
        version=recorded.version,
        tenant=event.tenant,
    )


def _started(batch: Batch | None, recorded: RecordedEvent) -> Batch:
    batch = _require(batch, recorded, "validating")
    return batch._replace(
        status="in_progress", in_progress_at=recorded.recorded_at, version=recorded.version
    )


def _cancelling(batch: Batch | None, recorded: RecordedEvent) -> Batch:
    batch = _require(batch, recorded, "validating", "in_progress")
    return batch._replace(
        status="cancelling", cancelling_at=recorded.recorded_at, version=recorded.version
    )


def _finalizing(batch: Batch | None, recorded: RecordedEvent) -> Batch:
    batch = _require(batch, recorded, "validating", "in_progress", "cancelling")
    end = cast(BatchFinalizing, recorded.event).end
    return batch._replace(
        status="cancelling" if batch.status == "cancelling" else "finalizing",
        finalizing_at=recorded.recorded_at,
        end=end,
        version=recorded.version,
    )


def _ended(batch: Batch | None, recorded: RecordedEvent) -> Batch:
    event = cast(BatchEnded, recorded.event)
    if event.status == "failed":
        batch = _require(batch, recorded, "validating")
    else:
        batch = _require(batch, recorded, "finalizing", "cancelling")
        if batch.end != event.status:
            raise refuse(batch, recorded, f"it was finalizing as {batch.end}")
    errors = [e.model_dump() for e in event.errors]
    return batch._replace(
        status=event.status,
        ended_at=recorded.recorded_at,
        output_file_id=event.output_file_id,
        error_file_id=event.error_file_id,
        completed=event.completed,
        failed=event.failed,
        errors=json.dumps(errors) if errors else None,
        version=recorded.version,
    )


class BatchesProjection(RowsProjection[Batch]):
    name: ClassVar[str] = "batches"
    version: ClassVar[int] = 2
    prefix: ClassVar[str] = BATCH_STREAM_PREFIX
    row = Batch
    columns: ClassVar[str] = (
        "id TEXT PRIMARY KEY, status TEXT NOT NULL, endpoint TEXT NOT NULL, "
        "input_file_id TEXT NOT NULL, completion_window TEXT NOT NULL, "
        "requests INTEGER NOT NULL, metadata TEXT, created_at TEXT NOT NULL, "
        "expires_at TEXT NOT NULL, version INTEGER NOT NULL, in_progress_at TEXT, "
        "finalizing_at TEXT, cancelling_at TEXT, ended_at TEXT, end TEXT, "
        "output_file_id TEXT, error_file_id TEXT, completed INTEGER NOT NULL, "
        "failed INTEGER NOT NULL, errors TEXT, tenant TEXT"
    )
    indexes: ClassVar[tuple[str, ...]] = (
        # The batches still to see through: the batcher's work at start.
        "CREATE INDEX IF NOT EXISTS batches_unended ON batches (id) WHERE ended_at IS NULL",
    )
    transitions: ClassVar[dict[str, Transition]] = {
        "BatchCreated": _created,
        "BatchStarted": _started,
        "BatchCancelling": _cancelling,
        "BatchFinalizing": _finalizing,
        "BatchEnded": _ended,
    }


class LineCounts(NamedTuple):
    """A batch's lines by outcome so far (OpenAI's ``request_counts``)."""

    total: int
    completed: int
    failed: int


def batch(log: EventLog, batch_id: str) -> Batch | None:
    return BatchesProjection().get(log.conn, batch_id)


def line_counts(log: EventLog, found: Batch) -> LineCounts:
    """Its counts: final once it ended, else from its lines' jobs (cancelled lines
    count as failed, as they go to the error file)."""
    if found.status in ENDED:
        return LineCounts(found.requests, found.completed, found.failed)
    by_state = dict(
        log.conn.execute(
            "SELECT state, count(*) FROM jobs WHERE batch_id = ? GROUP BY state", (found.id,)
        ).fetchall()
    )
    failed = sum(by_state.get(state, 0) for state in TERMINAL_STATES - {"succeeded"})
    return LineCounts(found.requests, by_state.get("succeeded", 0), failed)


def counted_batch(log: EventLog, batch_id: str) -> tuple[Batch, LineCounts] | None:
    """A batch and its counts, read together."""
    found = batch(log, batch_id)
    return None if found is None else (found, line_counts(log, found))


def list_batches(
    log: EventLog, *, after: str | None, limit: int, tenant: str | None = None
) -> list[tuple[Batch, LineCounts]]:
    """Newest first, older than ``after`` if given, each with its counts; only
    ``tenant``'s when given."""
    where, args = owned_by(tenant)
    if after is not None:
        where.append("id < ?")
        args.append(after)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    rows = log.conn.execute(
        f"{BatchesProjection().select()}{clause} ORDER BY id DESC LIMIT ?", (*args, limit)
    )
    return [(found, line_counts(log, found)) for found in map(Batch._make, rows)]


def unended_batches(log: EventLog) -> list[Batch]:
    rows = log.conn.execute(f"{BatchesProjection().select()} WHERE ended_at IS NULL ORDER BY id")
    return [Batch._make(row) for row in rows]


def line_jobs(log: EventLog, batch_id: str) -> list[Job]:
    """The jobs of the batch's lines, by line (a line not yet a job has none)."""
    rows = log.conn.execute(f"{SELECT_JOBS} WHERE batch_id = ? ORDER BY batch_line", (batch_id,))
    return [job_from_row(row) for row in rows]


_UNFINISHED = "FROM jobs WHERE batch_id = ? AND state IN ('queued', 'running')"


def unfinished_lines(log: EventLog, batch_id: str) -> list[str]:
    """The jobs of the batch's lines still queued or running."""
    return [job_id for (job_id,) in log.conn.execute(f"SELECT id {_UNFINISHED}", (batch_id,))]


def lines_left(log: EventLog, batch_id: str) -> int:
    """How many of the batch's lines are still queued or running (by the index)."""
    (count,) = log.conn.execute(f"SELECT count(*) {_UNFINISHED}", (batch_id,)).fetchone()
    return int(count)
