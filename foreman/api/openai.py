"""Foreman's OpenAI-compatible front door: ``/v1/...`` as Ollama serves it.

Chat and completions become durable jobs on the same queue as ``/api/chat`` and
``/api/generate`` (:mod:`foreman.api.front_door`): the request is translated to
the native one the job records and runs (:mod:`foreman.openai_protocol`, as
Ollama's own middleware does), and the native answer is translated back, as
one JSON answer or as server-sent events ending with ``data: [DONE]``. An
answer's ``id`` names its job (``chatcmpl-<job id>``). Embeddings and the model
list go straight to the backends. Errors have OpenAI's shape.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from fastapi import APIRouter, Request, params
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response

from foreman.actors import AnswerError
from foreman.api.auth import principal_of
from foreman.api.front_door import (
    Answered,
    FrontDoor,
    Refused,
    Started,
    answer_lines,
    call_backend,
    start_job,
)
from foreman.events.types import JobKind, JobSubmitted
from foreman.events.values import storable_object
from foreman.ollama_protocol import NDJSONStream, first_problem
from foreman.openai_protocol import (
    ChatStream,
    CompletionStream,
    OpenAIError,
    chat_completion,
    chat_request,
    completion,
    completion_request,
    decode_body,
    embedding_list,
    embedding_request,
    from_native_error,
    include_usage,
    model_list,
    model_object,
    native_error_message,
)

Translate = Callable[[object], dict[str, Any]]


class EventStream(NDJSONStream):
    """Server-sent events, cut off like an NDJSON stream when the job stops early."""

    media_type = "text/event-stream"


def openai_routes(door: FrontDoor, writes: params.Depends) -> APIRouter:
    """``writes``: the dependency of a route that appends (:mod:`foreman.api.writable`)."""
    router = APIRouter()

    @router.post("/v1/chat/completions", dependencies=[writes])
    async def chat_completions(request: Request) -> Response:
        return await _run_job(door, request, "chat", chat_request)

    @router.post("/v1/completions", dependencies=[writes])
    async def completions(request: Request) -> Response:
        return await _run_job(door, request, "generate", completion_request)

    @router.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        body = decode_body(await request.body())
        native = embedding_request(body)
        _check_storable(native)
        content = await _direct(door, request, "POST", "/api/embed", native)
        assert isinstance(body, dict)  # embedding_request refuses anything else
        fmt = body.get("encoding_format")
        answer = embedding_list(
            content, model=native["model"], encoding_format=fmt if isinstance(fmt, str) else None
        )
        return JSONResponse(answer)

    @router.get("/v1/models")
    async def models(request: Request) -> Response:
        return JSONResponse(model_list(await _direct(door, request, "GET", "/api/tags")))

    @router.get("/v1/models/{model:path}")
    async def model(request: Request, model: str) -> Response:
        show = await _direct(door, request, "POST", "/api/show", {"model": model})
        return JSONResponse(model_object(model, show))

    return router


def refused(error: Refused) -> Response:
    """A refusal as Ollama's ``/v1`` answers it."""
    body = from_native_error(error.status, error.message).body()
    return JSONResponse(body, status_code=error.status, headers=error.headers)


async def _run_job(
    door: FrontDoor, request: Request, kind: JobKind, translate: Translate
) -> Response:
    body = decode_body(await request.body())  # its size and deadline: foreman.api.guard
    native = translate(body)
    try:
        submitted = JobSubmitted(
            kind=kind,
            model=native["model"],
            request=native,
            origin="sync",
            tenant=principal_of(request).tenant,
        )
    except ValidationError as error:
        raise OpenAIError(400, first_problem(error, within="request")) from None
    try:
        started = await start_job(door, submitted, json.dumps(native).encode(), request)
    except Refused as error:
        return refused(error)
    prefix = "chatcmpl" if kind == "chat" else "cmpl"
    answer_id, created = f"{prefix}-{started.job_id}", int(time.time())
    if native.get("stream") is not True:
        answer = _decoded(started.first.data)
        shape = chat_completion if kind == "chat" else completion
        return JSONResponse(shape(answer, id=answer_id, created=created))
    stream_type = ChatStream if kind == "chat" else CompletionStream
    stream = stream_type(id=answer_id, created=created, include_usage=include_usage(body))
    return EventStream(_events(door, started, stream))


async def _events(
    door: FrontDoor, started: Started, stream: ChatStream | CompletionStream
) -> AsyncIterator[bytes]:
    """The job's native lines as server-sent events; a failure after the first ends
    the stream with an error event."""
    async for line in answer_lines(door, started):  # an AnswerError is the last
        if isinstance(line, AnswerError):
            yield stream.events({"error": line.message})
        else:
            yield stream.events(_decoded(line))


def _decoded(line: bytes) -> Mapping[str, Any]:
    """One native answer line (the worker only relays lines that parse)."""
    value = json.loads(line)
    return value if isinstance(value, dict) else {}


def _check_storable(native: dict[str, Any]) -> None:
    """A direct call's request is held to the limits a job's request is (ADR-0032)."""
    try:
        storable_object(native)
    except ValueError as error:
        raise OpenAIError(400, str(error)) from None


async def _direct(
    door: FrontDoor,
    request: Request,
    method: str,
    path: str,
    native: Mapping[str, Any] | None = None,
) -> Mapping[str, Any]:
    """A native call straight to the backend (the host that has the model), its JSON
    answer; an error answer is raised as OpenAI's."""
    body = None if native is None else json.dumps(native).encode()
    model = native.get("model") if native is not None else None
    try:
        answered: Answered | None = await call_backend(
            door, request, method, path, body, model if isinstance(model, str) else None
        )
    except Refused as error:
        raise from_native_error(error.status, error.message) from None
    if answered is None:  # the caller hung up: nobody to answer
        raise OpenAIError(499, "request canceled")
    status, content, _ = answered
    if status != 200:
        raise from_native_error(status, native_error_message(content))
    return _decoded(content)
