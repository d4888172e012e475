"""A Batch API input file: JSONL, one request per line, read and checked.

Each line is ``{"custom_id", "method": "POST", "url", "body"}``; ``url`` is one
of :data:`~foreman.events.types.BATCH_ENDPOINTS`, the same on every line, and
``body`` is what that endpoint takes, translated to the native request the
line's job will send (:mod:`foreman.openai_protocol`). A file is refused whole,
naming each bad line and why, so nothing is found wrong once the batch runs.
Unlike OpenAI's service, a file may mix models: Foreman drains them by model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from pydantic import ValidationError

from foreman.events.types import BATCH_ENDPOINTS, BatchEndpoint, BatchLine, JobKind, JobSubmitted
from foreman.openai_protocol import (
    OpenAIError,
    chat_request,
    completion_request,
    embedding_request,
)

MAX_REQUESTS = 50_000
"""Lines in one input file at most (OpenAI's limit)."""
MAX_BYTES = 200 * 1024 * 1024
"""An input file's size at most (OpenAI's limit)."""
MAX_PROBLEMS = 50
"""Bad lines named in a refusal; the count of the rest follows."""

KINDS: dict[str, JobKind] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "generate",
    "/v1/embeddings": "embed",
}
_TRANSLATE = {
    "/v1/chat/completions": chat_request,
    "/v1/completions": completion_request,
    "/v1/embeddings": embedding_request,
}


@dataclass(frozen=True, slots=True)
class InputLine:
    line: int
    """Its line number in the file, from 1."""
    custom_id: str
    url: str
    body: dict[str, Any]
    """The OpenAI request, as written."""


@dataclass(frozen=True, slots=True)
class Problem:
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


class BadLine(ValueError):
    """One line cannot be a request of the batch; the message says why."""


class BadInput(ValueError):
    """The file cannot be a batch's input; ``problems`` says where and why."""

    def __init__(self, problems: list[Problem], more: int = 0) -> None:
        self.problems = problems
        self.more = more
        named = "; ".join(map(str, problems))
        super().__init__(named + (f"; and {more} more bad lines" if more else ""))


@dataclass(frozen=True, slots=True)
class Checked:
    requests: int
    endpoint: BatchEndpoint


def check(data: bytes) -> Checked:
    """What a valid input holds; raises :class:`BadInput` naming its bad lines."""
    if len(data) > MAX_BYTES:
        raise BadInput([Problem(None, f"the file is over {MAX_BYTES:,} bytes")])
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    endpoint: str | None = None
    count = bad = 0
    for number, raw in _lines(data):
        count += 1
        try:
            line = _parse(number, raw)
            if line.custom_id in seen:
                raise BadLine(
                    f"custom_id {line.custom_id!r} is used on line {seen[line.custom_id]} too"
                )
            seen[line.custom_id] = number
            endpoint = endpoint or line.url
            if line.url != endpoint:
                raise BadLine(f"url {line.url!r} differs from the file's first, {endpoint!r}")
            job_for(line, "batch_check", None)
        except BadLine as error:
            bad += 1
            if len(problems) < MAX_PROBLEMS:
                problems.append(Problem(number, str(error)))
    if count > MAX_REQUESTS:
        problems.insert(
            0, Problem(None, f"{count:,} requests; a batch takes {MAX_REQUESTS:,} at most")
        )
    if not count:
        problems.append(Problem(None, "the file holds no requests"))
    if problems:
        raise BadInput(problems, more=bad - min(bad, MAX_PROBLEMS))
    assert endpoint is not None
    return Checked(count, cast(BatchEndpoint, endpoint))


def read(data: bytes) -> list[InputLine]:
    """The lines of a file :func:`check` passed."""
    return [_parse(number, raw) for number, raw in _lines(data)]


def job_for(line: InputLine, batch_id: str, tenant: str | None) -> JobSubmitted:
    """The job a line of ``tenant``'s batch runs as; :class:`BadLine` when it cannot be one."""
    try:
        native = _TRANSLATE[line.url](line.body)
    except OpenAIError as error:
        raise BadLine(f"body: {error.message}") from None
    try:
        return JobSubmitted(
            kind=KINDS[line.url],
            model=native["model"],
            request=native,
            origin="batch",
            batch=BatchLine(batch_id=batch_id, line=line.line, custom_id=line.custom_id),
            tenant=tenant,
        )
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise BadLine(f"{where}: {first['msg']}".removeprefix(": ")) from None


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines and their numbers (a final newline, or blank lines, are fine)."""
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if raw.strip():
            yield number, raw


def _parse(number: int, raw: bytes) -> InputLine:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise BadLine(f"not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise BadLine("not a JSON object")
    custom_id, method, url, body = (value.get(k) for k in ("custom_id", "method", "url", "body"))
    if not isinstance(custom_id, str) or not custom_id:
        raise BadLine("custom_id must be a non-empty string")
    if method != "POST":
        raise BadLine(f'method must be "POST", not {method!r}')
    if url not in BATCH_ENDPOINTS:
        raise BadLine(f"url must be one of {', '.join(BATCH_ENDPOINTS)}, not {url!r}")
    if not isinstance(body, dict):
        raise BadLine("body must be a JSON object")
    return InputLine(number, custom_id, url, body)
