"""A batch's output and error files, from how its lines' jobs ended.

Every input line goes to exactly one of the two files, once: a line whose job
succeeded to the output file with the endpoint's usual answer; every other line
(its job failed, was cancelled, or never ran because the batch was cancelled or
expired first) to the error file. Lines keep the input's order; clients match
them by ``custom_id``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from foreman.batching.lines import InputLine
from foreman.events.log import unix_time
from foreman.openai_protocol import chat_completion, completion, embedding_list, from_native_error

NOT_RUN = {
    "cancelled": ("batch_cancelled", "The batch was cancelled before this request ran."),
    "expired": (
        "batch_expired",
        "This request could not be executed before the completion window expired.",
    ),
}
CANCELLED_BY = {
    "batch_cancelled": NOT_RUN["cancelled"],
    "batch_expired": NOT_RUN["expired"],
    "model_not_found": ("model_not_found", "No backend host has this request's model."),
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one line's job ended."""

    job_id: str
    state: str
    finished_at: str | None
    result: dict[str, Any] | None = None
    """The native answer, when it succeeded."""
    error: tuple[str, int | None] | None = None
    """Message and status, when it failed."""
    cancel_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Files:
    output: bytes
    errors: bytes
    completed: int
    failed: int


def files(
    batch_id: str,
    endpoint: str,
    lines: list[InputLine],
    outcomes: Mapping[int, Outcome],
    end: str,
) -> Files:
    """The output and error files (JSONL) of a batch that ends as ``end``."""
    output: list[bytes] = []
    errors: list[bytes] = []
    for line in lines:
        outcome = outcomes.get(line.line)
        if outcome is not None and outcome.state == "succeeded" and outcome.result is not None:
            body = _answer(endpoint, line, outcome)
            output.append(_line(outcome.job_id, line, {"status_code": 200, "body": body}, None))
        else:
            errors.append(_error_line(batch_id, line, outcome, end))
    return Files(b"".join(output), b"".join(errors), len(output), len(errors))


def _answer(endpoint: str, line: InputLine, outcome: Outcome) -> dict[str, Any]:
    result = outcome.result or {}
    created = int(unix_time(outcome.finished_at)) if outcome.finished_at else 0
    if endpoint == "/v1/chat/completions":
        return chat_completion(result, id=f"chatcmpl-{outcome.job_id}", created=created)
    if endpoint == "/v1/completions":
        return completion(result, id=f"cmpl-{outcome.job_id}", created=created)
    model = line.body.get("model")
    return embedding_list(result, model=model if isinstance(model, str) else "")


def _error_line(batch_id: str, line: InputLine, outcome: Outcome | None, end: str) -> bytes:
    if outcome is None:  # it never became a job: the batch ended first
        code, message = NOT_RUN.get(end, ("batch_failed", "This request was not run."))
        line_id = f"{batch_id.removeprefix('batch_')}-{line.line}"
        return _line(line_id, line, None, {"code": code, "message": message})
    if outcome.state == "failed" and outcome.error is not None:
        message, status = outcome.error
        status = status or 500
        body = from_native_error(status, message).body()
        return _line(outcome.job_id, line, {"status_code": status, "body": body}, None)
    reason = outcome.cancel_reason or outcome.state
    code, message = CANCELLED_BY.get(
        reason, (reason, f"The request was {outcome.state}: {reason}.")
    )
    return _line(outcome.job_id, line, None, {"code": code, "message": message})


def _line(
    job_id: str, line: InputLine, response: dict[str, Any] | None, error: dict[str, str] | None
) -> bytes:
    if response is not None:
        response = {
            "status_code": response["status_code"],
            "request_id": job_id,
            "body": response["body"],
        }
    value = {
        "id": f"batch_req_{job_id}",
        "custom_id": line.custom_id,
        "response": response,
        "error": error,
    }
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
