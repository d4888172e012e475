"""Ollama's API as the simulator answers it (see /work/shared/reference/ollama-api.md).

Each route parses its body, checks the model (404 ``model '<name>' not
found`` for one not configured), lets an armed fault act (``_admit``), and
then answers from the simulated GPU.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import Any

import outcome
import trio
from fastapi import APIRouter, Request
from starlette.responses import PlainTextResponse, Response

from foreman.ollama_protocol import (
    ConnectionCut,
    CutResponse,
    NDJSONStream,
    OllamaError,
    OllamaJSON,
    ndjson_line,
    parse_body,
    rfc3339,
)
from foreman.simulator.backend import Finished, Job, LoadKey, Stall, count_tokens, embedding
from foreman.simulator.config import SimModel
from foreman.simulator.faults import Answered, AnswerFault, DropFault, StallFault, StatusFault
from foreman.simulator.schemas import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    ShowRequest,
)
from foreman.simulator.state import Simulator

KEEP_ALIVE = timedelta(minutes=5)
"""Ollama's default keep-alive, shown in ``/api/ps`` (the simulator never unloads on its own)."""
MODIFIED_AT = "2024-06-01T12:00:00Z"

Shape = Callable[[str, dict[str, Any]], dict[str, Any]]
"""Builds a chunk from its text and its ``done`` fields: chat and generate differ."""


class _Dropped(Exception):
    def __init__(self, error: str | None) -> None:
        super().__init__(error)
        self.error = error


def ollama_routes(sim: Simulator) -> APIRouter:
    router = APIRouter()
    _info_routes(router, sim)
    _generation_routes(router, sim)
    _embedding_routes(router, sim)
    return router


def _info_routes(router: APIRouter, sim: Simulator) -> None:
    @router.api_route("/", methods=["GET", "HEAD"])
    async def root() -> Response:
        await _admit(sim, "/", None)
        return PlainTextResponse("Ollama is running")

    @router.get("/api/version")
    async def version() -> Response:
        await _admit(sim, "/api/version", None)
        return OllamaJSON({"version": sim.config.version})

    @router.get("/api/tags")
    async def tags_route() -> Response:
        return await tags(sim)

    @router.get("/api/ps")
    async def ps() -> Response:
        await _admit(sim, "/api/ps", None)
        resident = sim.gpu.resident
        if resident is None:
            return OllamaJSON({"models": []})
        expires = datetime.fromtimestamp(resident.last_used, UTC) + KEEP_ALIVE
        entry = _listing(resident.model) | {
            "expires_at": rfc3339(expires),
            "size_vram": resident.model.size,
            "context_length": resident.key.num_ctx,
        }
        del entry["modified_at"]
        return OllamaJSON({"models": [entry]})

    @router.post("/api/show")
    async def show_route(request: Request) -> Response:
        return await show(sim, await request.body())


def _generation_routes(router: APIRouter, sim: Simulator) -> None:
    @router.post("/api/chat")
    async def chat_route(request: Request) -> Response:
        return await chat(sim, request, await request.body())

    @router.post("/api/generate")
    async def generate_route(request: Request) -> Response:
        return await generate(sim, request, await request.body())


def _embedding_routes(router: APIRouter, sim: Simulator) -> None:
    @router.post("/api/embed")
    async def embed_route(request: Request) -> Response:
        return await embed(sim, await request.body())

    @router.post("/api/embeddings")
    async def embeddings(request: Request) -> Response:
        body = parse_body(await request.body(), EmbeddingsRequest)
        if not body.model:
            raise OllamaError(400, "model is required")
        model = _lookup(sim, body.model)
        await _admit(sim, "/api/embeddings", body.model)
        vector = embedding(model.name, body.prompt, model.embedding_length) if body.prompt else []
        return OllamaJSON({"embedding": vector})


# The handlers the OpenAI-compatible routes share (foreman.simulator.openai), as Ollama's
# /v1 middleware hands its translated request to the native handler: each takes the
# native body, raises OllamaError for an error answer, and returns the native answer.


async def tags(sim: Simulator) -> Response:
    await _admit(sim, "/api/tags", None)
    return OllamaJSON({"models": [_listing(model) for model in sim.config.models]})


async def show(sim: Simulator, raw: bytes) -> Response:
    body = parse_body(raw, ShowRequest)
    name = body.model or body.name
    if not name:
        raise OllamaError(400, "model is required")
    model = _lookup(sim, name)
    await _admit(sim, "/api/show", name)
    return OllamaJSON(_show(model))


async def chat(sim: Simulator, request: Request, raw: bytes) -> Response:
    """``/api/chat``; ``request`` is watched for the caller hanging up."""
    received = time.perf_counter_ns()
    body = parse_body(raw, ChatRequest)
    if not body.model:
        raise OllamaError(400, "model is required")
    model = _lookup(sim, body.model)
    fault = await _admit(sim, "/api/chat", body.model)
    _require_completion(model, body.model, "chat")
    key = LoadKey.of(model, body.options or {})

    def shape(text: str, done: dict[str, Any]) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        return {"model": body.model, "created_at": rfc3339(), "message": message} | done

    if not body.messages:
        return await _load_only(sim, model, key, shape)
    prompt = json.dumps([[m.role, m.content] for m in body.messages])
    job = Job("/api/chat", model, key, prompt, body.num_predict, received)
    return await _answer(sim, request, job, fault, shape, stream=body.stream is not False)


async def generate(sim: Simulator, request: Request, raw: bytes) -> Response:
    """``/api/generate``; ``request`` is watched for the caller hanging up."""
    received = time.perf_counter_ns()
    body = parse_body(raw, GenerateRequest)
    model = _lookup(sim, body.model)
    fault = await _admit(sim, "/api/generate", body.model)
    _require_completion(model, body.model, "generate")
    key = LoadKey.of(model, body.options or {})

    def shape(text: str, done: dict[str, Any]) -> dict[str, Any]:
        return {"model": body.model, "created_at": rfc3339(), "response": text} | done

    if not body.prompt:
        return await _load_only(sim, model, key, shape)
    prompt = f"{body.system}\0{body.prompt}"
    job = Job("/api/generate", model, key, prompt, body.num_predict, received)
    return await _answer(sim, request, job, fault, shape, stream=body.stream is not False)


async def embed(sim: Simulator, raw: bytes) -> Response:
    received = time.perf_counter_ns()
    body = parse_body(raw, EmbedRequest)
    model = _lookup(sim, body.model)
    await _admit(sim, "/api/embed", body.model)
    inputs = [body.input] if isinstance(body.input, str) else body.input or []
    inputs = [text for text in inputs if text]
    if not inputs:
        return OllamaJSON({"model": body.model, "embeddings": []})
    dimensions = min(body.dimensions or model.embedding_length, model.embedding_length)
    return OllamaJSON(
        {
            "model": body.model,
            "embeddings": [embedding(model.name, text, dimensions) for text in inputs],
            "total_duration": time.perf_counter_ns() - received,
            "load_duration": 0,
            "prompt_eval_count": sum(map(count_tokens, inputs)),
        }
    )


async def _admit(sim: Simulator, path: str, model: str | None) -> DropFault | StallFault | None:
    """Let the request's fault, if any, act now; returns one that acts later, mid-generation."""
    fault = sim.faults.take(path, model)
    if isinstance(fault, StatusFault):
        raise OllamaError(fault.status, fault.error)
    if isinstance(fault, AnswerFault):
        raise Answered(fault)
    if isinstance(fault, StallFault) and fault.before_answering:
        await trio.sleep(fault.seconds)
        return None
    return fault


def _lookup(sim: Simulator, name: str) -> SimModel:
    model = sim.config.find(name) if name else None
    if model is None:
        raise OllamaError(404, f"model '{name}' not found")
    return model


def _require_completion(model: SimModel, name: str, what: str) -> None:
    if model.is_embedding_model:
        raise OllamaError(400, f'"{name}" does not support {what}')


async def _load_only(sim: Simulator, model: SimModel, key: LoadKey, shape: Shape) -> Response:
    """An empty prompt (or no messages) just loads the model: one object, even when streaming."""
    async with sim.gpu.session(model, key):
        pass
    return OllamaJSON(shape("", {"done": True, "done_reason": "load"}))


def _done(finished: Finished) -> dict[str, Any]:
    return {
        "done": True,
        "done_reason": finished.done_reason,
        "total_duration": finished.total_duration,
        "load_duration": finished.load_duration,
        "prompt_eval_count": finished.prompt_eval_count,
        "prompt_eval_duration": finished.prompt_eval_duration,
        "eval_count": finished.eval_count,
        "eval_duration": finished.eval_duration,
    }


async def _faulty_output(
    sim: Simulator, job: Job, fault: DropFault | StallFault | None
) -> AsyncGenerator[str | Finished, None]:
    """The GPU's tokens and end, with a drop or stall after ``fault.after_tokens`` tokens
    (before the end at the latest); a stall is the GPU's, holding it."""
    stall = Stall(fault.after_tokens or 0, fault.seconds) if isinstance(fault, StallFault) else None
    drop = fault if isinstance(fault, DropFault) else None
    produced = 0
    async with aclosing(sim.gpu.generate(job, stall)) as output:
        async for item in output:
            if drop is not None and produced >= (drop.after_tokens or 0):
                raise _Dropped(drop.error)
            produced += isinstance(item, str)
            yield item


async def _answer(
    sim: Simulator,
    request: Request,
    job: Job,
    fault: DropFault | StallFault | None,
    shape: Shape,
    *,
    stream: bool,
) -> Response:
    """The generation's answer; dropped, as Ollama drops it, if the client hangs up
    first (a stream: by Starlette's own watch for the disconnect)."""
    if stream:
        return NDJSONStream(_stream(sim, job, fault, shape))
    answer: outcome.Outcome[Response] | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_on_disconnect, request, nursery.cancel_scope)
        answer = await outcome.acapture(_complete, sim, job, fault, shape)
        nursery.cancel_scope.cancel()
    return Response(status_code=499) if answer is None else answer.unwrap()  # 499: nobody reads


async def _cancel_on_disconnect(request: Request, scope: trio.CancelScope) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def _complete(
    sim: Simulator, job: Job, fault: DropFault | StallFault | None, shape: Shape
) -> Response:
    text: list[str] = []
    try:
        async with aclosing(_faulty_output(sim, job, fault)) as output:
            async for item in output:
                if isinstance(item, str):
                    text.append(item)
                else:
                    return OllamaJSON(shape("".join(text), _done(item)))
    except _Dropped as dropped:
        if dropped.error is None:
            return CutResponse()
        raise OllamaError(500, dropped.error) from None
    raise AssertionError("a generation always ends with Finished")


async def _stream(
    sim: Simulator, job: Job, fault: DropFault | StallFault | None, shape: Shape
) -> AsyncIterator[bytes]:
    try:
        async with aclosing(_faulty_output(sim, job, fault)) as output:
            async for item in output:
                if isinstance(item, str):
                    yield ndjson_line(shape(item, {"done": False}))
                else:
                    yield ndjson_line(shape("", _done(item)))
    except _Dropped as dropped:
        if dropped.error is None:
            raise ConnectionCut from None
        yield ndjson_line({"error": dropped.error})


def _details(model: SimModel) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": model.family,
        "families": [model.family],
        "parameter_size": model.parameter_size,
        "quantization_level": "F16" if model.is_embedding_model else "Q4_K_M",
    }


def _listing(model: SimModel) -> dict[str, Any]:
    """A model as ``/api/tags`` lists it (``/api/ps`` adds to it)."""
    return {
        "name": model.name,
        "model": model.name,
        "modified_at": MODIFIED_AT,
        "size": model.size,
        "digest": model.digest,
        "details": _details(model),
    }


def _show(model: SimModel) -> dict[str, Any]:
    family = model.family
    return {
        "modelfile": (
            '# Modelfile generated by "ollama show"\n'
            "# To build a new Modelfile based on this, replace FROM with:\n"
            f"# FROM {model.name}\n\n"
            f"FROM {model.name}\n"
            'TEMPLATE "{{ .Prompt }}"\n'
        ),
        "parameters": f'{"stop":<30} "<|end|>"',
        "template": "{{ .Prompt }}",
        "details": _details(model),
        "model_info": {
            "general.architecture": family,
            "general.parameter_count": int(float(model.parameter_size[:-1]) * 1e9),
            f"{family}.context_length": 8192,
            f"{family}.embedding_length": model.embedding_length,
        },
        "capabilities": ["embedding"] if model.is_embedding_model else ["completion"],
        "modified_at": MODIFIED_AT,
    }
