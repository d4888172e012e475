"""Ollama's OpenAI-compatible API (``/v1``) as the simulator answers it.

As Ollama's middleware does, each route translates the request to the native body
(:mod:`foreman.openai_protocol`), hands it to the native handler
(:mod:`foreman.simulator.api`: the same model checks, faults and simulated GPU as
``/api/...``) and translates the native answer or error back: JSON, or server-sent
events when streaming. A fault armed for ``/api/chat`` therefore acts on
``/v1/chat/completions`` too, since one handler serves both, as in Ollama.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from foreman.ollama_protocol import NDJSONStream, OllamaError, OllamaJSON
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
    new_id,
)
from foreman.simulator import api
from foreman.simulator.state import Simulator


class EventStream(NDJSONStream):
    """Server-sent events that, like the native stream they translate, can end by
    cutting the connection."""

    media_type = "text/event-stream"


def openai_routes(sim: Simulator) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = decode_body(await request.body())
        native = chat_request(body)
        answer = await _native(api.chat(sim, request, _encode(native)))
        answer_id, created = new_id("chatcmpl"), int(time.time())
        if native["stream"]:
            usage = include_usage(body)
            return _events(answer, ChatStream(id=answer_id, created=created, include_usage=usage))
        return _translated(
            answer, lambda done: chat_completion(done, id=answer_id, created=created)
        )

    @router.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = decode_body(await request.body())
        native = completion_request(body)
        answer = await _native(api.generate(sim, request, _encode(native)))
        answer_id, created = new_id("cmpl"), int(time.time())
        if native["stream"]:
            usage = include_usage(body)
            return _events(
                answer, CompletionStream(id=answer_id, created=created, include_usage=usage)
            )
        return _translated(answer, lambda done: completion(done, id=answer_id, created=created))

    @router.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        body = decode_body(await request.body())
        native = embedding_request(body)
        answer = await _native(api.embed(sim, _encode(native)))
        encoding_format = body.get("encoding_format") if isinstance(body, dict) else None
        return _translated(
            answer,
            lambda done: embedding_list(
                done, model=native["model"], encoding_format=encoding_format
            ),
        )

    @router.get("/v1/models")
    async def models() -> Response:
        return _translated(await _native(api.tags(sim)), model_list)

    @router.get("/v1/models/{model}")
    async def model(model: str) -> Response:
        answer = await _native(api.show(sim, _encode({"name": model})))
        return _translated(answer, lambda shown: model_object(model, shown))

    return router


def answer_errors_as_openai(app: FastAPI) -> None:
    """Errors of the ``/v1`` routes in OpenAI's shape, ``{"error": {"message", ...}}``."""

    async def openai_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, OpenAIError)
        return JSONResponse(error.body(), status_code=error.status)

    app.add_exception_handler(OpenAIError, openai_error)


def _encode(native: Mapping[str, Any]) -> bytes:
    return json.dumps(native).encode()


async def _native(answer: Awaitable[Response]) -> Response:
    """The native handler's answer; its error, as Ollama's middleware passes it on."""
    try:
        return await answer
    except OllamaError as error:
        raise from_native_error(error.status, error.message) from None


def _translated(
    answer: Response, translate: Callable[[dict[str, Any]], dict[str, Any]]
) -> Response:
    if not isinstance(answer, OllamaJSON):
        return answer  # a cut connection, or a caller that hung up
    return JSONResponse(translate(json.loads(bytes(answer.body))))


def _events(answer: Response, stream: ChatStream | CompletionStream) -> Response:
    """A native answer as server-sent events: a stream line by line, or one object (an
    empty prompt only loads the model, and Ollama answers one object even then)."""
    if isinstance(answer, StreamingResponse):
        return EventStream(_relay(answer.body_iterator, stream))
    if isinstance(answer, OllamaJSON):
        return EventStream(_relay(_one(bytes(answer.body)), stream))
    return answer


async def _one(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def _relay(
    lines: AsyncIterable[str | bytes | memoryview], stream: ChatStream | CompletionStream
) -> AsyncIterator[bytes]:
    async for chunk in lines:
        data = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
        for line in data.splitlines():
            if line.strip():
                yield stream.events(json.loads(line))
