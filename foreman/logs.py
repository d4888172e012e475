"""Foreman's log lines on stderr: readable by default, one JSON object each with
``FOREMAN_LOG_FORMAT=json``. One line per actor start and stop, and one per job,
batch, file, host or delivery transition, read from the journal's committed
events. A job's being submitted and started are at DEBUG, so a job that runs
through makes one line at INFO, its end; a batch's lines' transitions are all at
DEBUG (a batch of 50,000 lines is followed by its own events, not by 150,000
lines of log)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

import trio

from foreman.events.types import (
    BACKEND_STREAM_PREFIX,
    BATCH_STREAM_PREFIX,
    DELIVERY_STREAM_PREFIX,
    FILE_STREAM_PREFIX,
    JOB_ENDS,
    JobSubmitted,
    RecordedEvent,
)

logger = logging.getLogger("foreman.transitions")
"""The transition lines' own logger, so an operator can raise its level alone."""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "job_event", None)
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **(_event_fields(event) if event is not None else {}),
        }
        return json.dumps(line)


def _event_fields(event: RecordedEvent) -> dict[str, Any]:
    """What a job or delivery event says, for a JSON line (decoded only when JSON lines
    are on); ``job`` is the job's id for both."""
    data = json.loads(event.data)
    data.pop("request", None)
    data.pop("result", None)
    job = event.stream.removeprefix(DELIVERY_STREAM_PREFIX)
    return {"job": job, "event": event.type, "seq": event.seq, **data}


def configure(log_format: Literal["text", "json"]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for chatty in ("hypercorn.access", "httpx"):  # a line per request: not ours to log
        logging.getLogger(chatty).setLevel(logging.WARNING)


async def log_transitions(committed: trio.MemoryReceiveChannel[list[RecordedEvent]]) -> None:
    """A line per committed event: its stream, type and what it says (not for
    ``JobPruned``: the janitor logs how many it pruned)."""
    lines: set[str] = set()  # the batch lines seen submitted and not ended
    async with committed:
        async for events in committed:
            for event in events:
                if event.type == "JobPruned":
                    continue
                if event.type == "JobSubmitted":
                    submitted = event.decoded
                    if isinstance(submitted, JobSubmitted) and submitted.batch is not None:
                        lines.add(event.stream)
                quiet = event.type in ROUTINE or event.stream in lines
                level = logging.DEBUG if quiet else logging.INFO
                if event.type in JOB_ENDS:
                    lines.discard(event.stream)
                logger.log(
                    level,
                    "%s %s %s",
                    _kind(event.stream),
                    event.stream,
                    event.type,
                    extra={"job_event": event},
                )


ROUTINE = frozenset({"JobSubmitted", "JobStarted"})
"""A job's transitions logged at DEBUG: its end says it ran."""


def _kind(stream: str) -> str:
    """What a stream is about: a webhook delivery, a backend host, a batch, a file,
    or a job."""
    for prefix, kind in KINDS:
        if stream.startswith(prefix):
            return kind
    return "job"


KINDS = (
    (DELIVERY_STREAM_PREFIX, "delivery"),
    (BACKEND_STREAM_PREFIX, "backend"),
    (BATCH_STREAM_PREFIX, "batch"),
    (FILE_STREAM_PREFIX, "file"),
)
