"""Log lines: readable by default; with FOREMAN_LOG_FORMAT=json, one JSON object each."""

from __future__ import annotations

import json
import logging

import pytest
import trio

from foreman.events.log import EventLog
from foreman.events.types import BatchLine, RecordedEvent, WebhookDelivered, delivery_stream
from foreman.ids import new_ulid
from foreman.logs import JsonFormatter, log_transitions
from tests import factories


def test_a_job_event_as_a_json_line_says_what_happened_without_the_payloads(
    log: EventLog,
) -> None:
    job_id = new_ulid()
    submitted, started = log.append(job_id, [factories.submitted(), factories.started()])
    lines = []
    for event in (submitted, started):
        record = logging.makeLogRecord(
            {"msg": "job %s %s", "args": (job_id, event.type), "job_event": event}
        )
        lines.append(json.loads(JsonFormatter().format(record)))
    first, second = lines
    assert first["message"] == f"job {job_id} JobSubmitted"
    assert (first["job"], first["event"], first["seq"]) == (job_id, "JobSubmitted", submitted.seq)
    assert first["model"] == "llama3" and "request" not in first
    assert (second["event"], second["attempt"]) == ("JobStarted", 1)


def test_a_delivery_event_as_a_json_line_names_its_job(log: EventLog) -> None:
    job_id = new_ulid()
    (submitted,) = log.append(
        job_id, [factories.submitted().model_copy(update={"state_webhook_url": "http://h/"})]
    )
    delivered = WebhookDelivered(delivery=submitted.id, attempt=1, status=204)
    (event,) = log.append(delivery_stream(job_id), [delivered])
    record = logging.makeLogRecord({"msg": "delivery", "job_event": event})
    line = json.loads(JsonFormatter().format(record))
    assert (line["job"], line["event"], line["delivery"], line["status"]) == (
        job_id,
        "WebhookDelivered",
        submitted.id,
        204,
    )


def test_other_lines_are_plain_json_messages() -> None:
    record = logging.makeLogRecord(
        {"msg": "journal: started on %s", "args": ("x.db",), "levelname": "INFO"}
    )
    line = json.loads(JsonFormatter().format(record))
    assert (line["message"], line["level"]) == ("journal: started on x.db", "info")


async def test_a_jobs_end_is_at_info_its_start_and_a_batchs_lines_at_debug(
    log: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    line = BatchLine(batch_id="batch_1", line=1, custom_id="a")
    one_line = factories.submitted().model_copy(update={"origin": "batch", "batch": line})
    line_id, job_id = new_ulid(), new_ulid()
    committed = [
        *log.append(line_id, [one_line, factories.started(), factories.succeeded()]),
        *log.append(job_id, [factories.submitted(), factories.started(), factories.succeeded()]),
    ]
    send, receive = trio.open_memory_channel[list[RecordedEvent]](1)
    with caplog.at_level(logging.DEBUG, logger="foreman.transitions"):
        async with send:
            await send.send(committed)
        await log_transitions(receive)
    levels = [(record.levelname, *record.getMessage().split()[1:3]) for record in caplog.records]
    assert levels == [
        *(("DEBUG", line_id, type_) for type_ in ("JobSubmitted", "JobStarted", "JobSucceeded")),
        ("DEBUG", job_id, "JobSubmitted"),
        ("DEBUG", job_id, "JobStarted"),
        ("INFO", job_id, "JobSucceeded"),
    ]
