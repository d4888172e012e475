"""Ollama's wire format: request bodies, error bodies, JSON and NDJSON responses.

Shared by Foreman's Ollama-compatible front door and the simulator behind it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from foreman.events.values import readable

JSON_TYPE = "application/json; charset=utf-8"
NDJSON_TYPE = "application/x-ndjson"

M = TypeVar("M", bound=BaseModel)


class OllamaError(Exception):
    """An error answered as Ollama does: ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ConnectionCut(Exception):
    """Raised by a stream's body to cut the connection instead of finishing the response."""


class OllamaJSON(JSONResponse):
    media_type = JSON_TYPE


class NDJSONStream(StreamingResponse):
    """A streamed body that can end by cutting the connection (see :class:`ConnectionCut`).

    Hypercorn closes a connection whose response the app never finished, so
    the client sees its chunked body break off, as when the backend dies.
    """

    media_type = NDJSON_TYPE

    def __init__(self, lines: AsyncIterator[bytes]) -> None:
        super().__init__(lines)
        self._lines = lines

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            async for line in self._lines:
                await send({"type": "http.response.body", "body": line, "more_body": True})
        except ConnectionCut:
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class CutResponse(Response):
    """200 and its headers, then the connection is cut before any body.

    No ``content-length`` (Starlette would send ``0``, a complete empty body):
    the body is chunked and its end never comes.
    """

    def __init__(self) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = [(b"content-type", JSON_TYPE.encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})


def error_response(error: OllamaError) -> OllamaJSON:
    return OllamaJSON({"error": error.message}, status_code=error.status)


def routing_error_response(error: HTTPException) -> Response:
    """An unknown path or a wrong method, in plain text as Ollama's router (gin) says it
    (the simulator's way; Foreman's own app answers JSON: :mod:`foreman.api.errors`)."""
    status = error.status_code
    phrase = "page not found" if status == 404 else HTTPStatus(status).phrase.lower()
    return PlainTextResponse(f"{status} {phrase}", status_code=status)


def answer_errors_as_ollama(app: FastAPI) -> None:
    """Errors as Ollama gives them: ``{"error": ...}`` with its status, and unknown
    paths or wrong methods in plain text, as Ollama's router (gin) answers them: how the
    simulator mimics Ollama."""

    async def ollama_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, OllamaError)
        return error_response(error)

    async def routing_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        return routing_error_response(error)

    app.add_exception_handler(OllamaError, ollama_error)
    app.add_exception_handler(HTTPException, routing_error)


def ndjson_line(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def rfc3339(moment: datetime | None = None) -> str:
    """UTC with microseconds and ``Z``, e.g. ``2023-08-04T19:22:45.499127Z``."""
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Body(BaseModel):
    """A request body: unknown fields are ignored, as Go's JSON decoder ignores them."""

    model_config = ConfigDict(extra="ignore")


def decode_json(raw: bytes) -> Any:
    """The JSON in a request body, or the 400 Ollama would answer."""
    if not raw.strip():
        raise OllamaError(400, "missing request body")
    try:
        return json.loads(raw, parse_constant=_not_json)
    except RecursionError:
        raise OllamaError(400, TOO_DEEP) from None
    except ValueError as error:  # also bad UTF-8
        if "integer string conversion" in str(error):  # Python's own limit on digits
            raise OllamaError(400, TOO_MANY_DIGITS) from None
        raise OllamaError(400, f"the request body is not valid JSON: {error}") from None


TOO_DEEP = "the request body is nested too deeply"
TOO_MANY_DIGITS = (
    "the request body holds an integer of thousands of digits; integers fit in 64 bits"
)


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


def parse_body(raw: bytes, model: type[M]) -> M:
    """``raw`` as ``model``, or the 400 Ollama would answer.

    Bodies are decoded whatever their Content-Type, as Ollama does
    (``curl -d`` sends ``application/x-www-form-urlencoded``), which is why
    routes read the raw body instead of letting FastAPI validate it. A lone
    surrogate in a string becomes U+FFFD, as Go's JSON decoder makes it.
    """
    try:
        data = _as_go_decodes(decode_json(raw))
    except RecursionError:
        raise OllamaError(400, TOO_DEEP) from None
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise OllamaError(400, first_problem(error)) from None


def _as_go_decodes(value: Any) -> Any:
    if isinstance(value, str):
        return readable(value)
    if isinstance(value, list):
        return [_as_go_decodes(item) for item in value]
    if isinstance(value, dict):
        return {readable(key): _as_go_decodes(item) for key, item in value.items()}
    return value


def first_problem(error: ValidationError, *, within: str | None = None) -> str:
    """The first problem pydantic found, as ``where: what``; ``within`` names a field
    that stands for the whole body, left out of ``where``."""
    first = error.errors()[0]
    location = [str(part) for part in first["loc"]]
    if location[:1] == [within]:
        location = location[1:]
    where = ".".join(location)
    message = problem_message(first)
    return f"{where}: {message}" if where else message


def problem_message(problem: Mapping[str, Any]) -> str:
    """What one of pydantic's problems says, without the ``Value error, `` it puts
    before a validator's own message."""
    return str(problem["msg"]).removeprefix("Value error, ")
