"""Foreman's Ollama-compatible front door.

``/api/chat`` and ``/api/generate`` become durable jobs
(:mod:`foreman.api.front_door`), answered streamed or not, as Ollama would give
them. Embeddings go straight to the backend, concurrently (ADR-0013); the other
endpoints pass through.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import APIRouter, Request, params
from pydantic import ValidationError
from starlette.responses import Response

from foreman.actors import AnswerError
from foreman.api.auth import principal_of
from foreman.api.front_door import (
    FrontDoor,
    Refused,
    Started,
    answer_lines,
    call_backend,
    start_job,
)
from foreman.events.types import JobKind, JobSubmitted
from foreman.events.values import storable_object
from foreman.ollama_protocol import (
    JSON_TYPE,
    NDJSONStream,
    OllamaError,
    OllamaJSON,
    decode_json,
    first_problem,
)

ERROR_TEXT_LIMIT = 512
"""Characters of a backend's non-JSON error answer quoted in Foreman's JSON one."""


def ollama_routes(door: FrontDoor, writes: params.Depends) -> APIRouter:
    """``writes``: the dependency of a route that appends (:mod:`foreman.api.writable`)."""
    router = APIRouter()

    @router.post("/api/chat", dependencies=[writes])
    async def chat(request: Request) -> Response:
        return await _run_job(door, "chat", request)

    @router.post("/api/generate", dependencies=[writes])
    async def generate(request: Request) -> Response:
        return await _run_job(door, "generate", request)

    for path in ("/api/embed", "/api/embeddings", "/api/show"):
        router.add_api_route(path, _forward(door, "POST", path), methods=["POST"])
    for path in ("/api/tags", "/api/ps", "/api/version", "/"):
        router.add_api_route(path, _forward(door, "GET", path), methods=["GET", "HEAD"])
    return router


def refused(error: Refused) -> Response:
    """A refusal as Ollama answers it: ``{"error": ...}``."""
    return OllamaJSON({"error": error.message}, status_code=error.status, headers=error.headers)


async def _run_job(door: FrontDoor, kind: JobKind, request: Request) -> Response:
    raw = await request.body()  # its size and deadline: foreman.api.guard
    body = decode_json(raw)
    submitted = _submission(kind, body, principal_of(request).tenant)
    try:
        started = await start_job(door, submitted, raw, request)
    except Refused as error:
        return refused(error)
    if body.get("stream", True) is False:
        return Response(started.first.data, media_type=JSON_TYPE)
    return NDJSONStream(_stream(door, started))


def _submission(kind: JobKind, body: object, tenant: str | None) -> JobSubmitted:
    """The job ``tenant``'s request body becomes, or the 400 naming what the log could
    not hold."""
    if not isinstance(body, dict):
        raise OllamaError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OllamaError(400, "model is required")
    options = body.get("options")
    if options is not None and not isinstance(options, dict):
        raise OllamaError(400, "options must be a JSON object")
    try:
        return JobSubmitted(kind=kind, model=model, request=body, origin="sync", tenant=tenant)
    except ValidationError as error:
        raise OllamaError(400, first_problem(error, within="request")) from None


async def _stream(door: FrontDoor, started: Started) -> AsyncIterator[bytes]:
    """The job's lines; a failure after the first ends the stream with Ollama's
    ``{"error": ...}`` line."""
    async for line in answer_lines(door, started):
        if isinstance(line, AnswerError):
            yield json.dumps({"error": line.message}).encode() + b"\n"
        else:
            yield line


def _forward(door: FrontDoor, method: str, path: str) -> Callable[[Request], Awaitable[Response]]:
    """A route passing ``path`` straight to the backend (ADR-0013 for embeddings)."""

    async def forward(request: Request) -> Response:
        body, model = _checked(await request.body()) if method == "POST" else (None, None)
        try:
            answer = await call_backend(door, request, method, path, body, model)
        except Refused as error:
            return refused(error)
        if answer is None:  # nobody to answer
            return Response(status_code=499)
        status, content, media_type = answer
        if request.method == "HEAD":
            content = b""
        elif status >= 400 and not (media_type or "").startswith("application/json"):
            text = content[:ERROR_TEXT_LIMIT].decode(errors="replace").strip()
            message = f"the backend answered {status}: {text}"
            return OllamaJSON({"error": message}, status_code=status)
        return Response(content, status_code=status, media_type=media_type)

    return forward


def _checked(raw: bytes) -> tuple[bytes, str | None]:
    """A pass-through body, held to the limits a job's request is held to (ADR-0032),
    so a value is refused alike on ``/api/embed`` and in ``POST /jobs``; sent on as is,
    with the model it names, if any."""
    body = decode_json(raw)
    if not isinstance(body, dict):
        raise OllamaError(400, "the request body must be a JSON object")
    try:
        storable_object(body)
    except ValueError as error:
        raise OllamaError(400, str(error)) from None
    model = body.get("model") or body.get("name")  # /api/show takes either
    return raw, model if isinstance(model, str) and model else None
