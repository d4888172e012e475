"""Foreman's log lines on stderr: readable by default, one JSON object each with
``FOREMAN_LOG_FORMAT=json``. One line per actor start and stop, and one per job
transition, read from the journal's committed events."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

import trio

from foreman.events.types import BACKEND_STREAM_PREFIX, DELIVERY_STREAM_PREFIX, RecordedEvent

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
    """A line per committed job or webhook delivery event: its stream, type and what it
    says (not for ``JobPruned``: the janitor logs how many it pruned)."""
    async with committed:
        async for events in committed:
            for event in events:
                if event.type == "JobPruned":
                    continue
                logger.info(
                    "%s %s %s",
                    _kind(event.stream),
                    event.stream,
                    event.type,
                    extra={"job_event": event},
                )


def _kind(stream: str) -> str:
    """What a stream is about: a webhook delivery, a backend host, or a job."""
    if stream.startswith(DELIVERY_STREAM_PREFIX):
        return "delivery"
    return "backend" if stream.startswith(BACKEND_STREAM_PREFIX) else "job"
