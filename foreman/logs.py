"""Foreman's log lines on stderr: readable by default, one JSON object each with
``FOREMAN_LOG_FORMAT=json``. One line per actor start and stop, and one per job
transition, read from the journal's committed events."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

import trio

from foreman.events.types import RecordedEvent

log = logging.getLogger("foreman")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        return json.dumps(line)


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
    """A line per committed job event: its job, type and what it says (not for
    ``JobPruned``: the janitor logs how many it pruned)."""
    async with committed:
        async for events in committed:
            for event in events:
                if event.type == "JobPruned":
                    continue
                data = json.loads(event.data)
                fields = {"job": event.stream, "event": event.type, "seq": event.seq, **data}
                fields.pop("request", None)
                fields.pop("result", None)
                log.info("job %s %s", event.stream, event.type, extra={"fields": fields})
