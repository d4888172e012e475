"""Foreman's Ollama-compatible front door.

``/api/chat`` and ``/api/generate`` become durable jobs: ``JobSubmitted`` is
committed first, then the job waits in the scheduler's queue, and the answer
is relayed as the worker receives it, streamed or not, as Ollama would give
it. A caller that hangs up cancels its job. Embeddings go straight to the
backend, concurrently (ADR-0013); the other endpoints pass through.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import trio
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from foreman.actors.journal import JournalClient
from foreman.actors.reply import Reply
from foreman.actors.scheduler import (
    Admit,
    Cancel,
    Failed,
    Line,
    Message,
    Output,
    Release,
    Work,
)
from foreman.events.types import JobKind, JobSubmitted
from foreman.ids import new_ulid
from foreman.scheduling import QueuedJob
from foreman.upstream import Unavailable, Upstream
from foreman.wire import JSON_TYPE, NDJSON_TYPE, OllamaError, OllamaJSON, decode_json

OUTPUT_BUFFER = 64
"""Lines the worker may run ahead of a slow caller before it waits for it."""
BUSY = "server busy, please try again.  maximum pending requests exceeded"
"""Ollama's own answer when its queue is full (FOREMAN_MAX_QUEUE here)."""
RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True, slots=True)
class Gateway:
    """What the front door's routes talk to: actors' channels and the backend."""

    journal: JournalClient
    scheduler: trio.MemorySendChannel[Message]
    upstream: Upstream
    max_body: int


def ollama_routes(gateway: Gateway) -> APIRouter:
    router = APIRouter()

    @router.post("/api/chat")
    async def chat(request: Request) -> Response:
        return await _run_job(gateway, "chat", request)

    @router.post("/api/generate")
    async def generate(request: Request) -> Response:
        return await _run_job(gateway, "generate", request)

    for path in ("/api/embed", "/api/embeddings", "/api/show"):
        router.add_api_route(path, _forward(gateway, "POST", path), methods=["POST"])
    for path in ("/api/tags", "/api/ps", "/api/version", "/"):
        router.add_api_route(path, _forward(gateway, "GET", path), methods=["GET", "HEAD"])
    return router


async def _run_job(gateway: Gateway, kind: JobKind, request: Request) -> Response:
    raw = await request.body()  # its size and deadline: foreman.api.guard
    body = decode_json(raw)
    if not isinstance(body, dict):
        raise OllamaError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OllamaError(400, "model is required")
    options = body.get("options")
    if options is not None and not isinstance(options, dict):
        raise OllamaError(400, "options must be a JSON object")

    admitted: Reply[bool] = Reply()
    await gateway.scheduler.send(Admit(admitted))
    if not await admitted.wait():
        return OllamaJSON(
            {"error": BUSY}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        )
    job_id = new_ulid()
    submitted = JobSubmitted(kind=kind, model=model, request=body, origin="sync")
    try:
        (event,) = await gateway.journal.append(job_id, [submitted], expected_version=0)
    except BaseException:
        with trio.CancelScope(shield=True):
            await gateway.scheduler.send(Release())
        raise
    send, output = trio.open_memory_channel[Output](OUTPUT_BUFFER)
    queued = QueuedJob.of(job_id, event.seq, submitted, trio.current_time())
    work = Work(queued, kind, raw, attempts=0, output=send, admitted=True)
    await gateway.scheduler.send(work)

    first = await _first_output(gateway, job_id, output, request)
    if isinstance(first, Failed):
        return OllamaJSON({"error": first.message}, status_code=first.status)
    if first is None:  # cancelled: Ollama's answer to a request it gave up on
        return OllamaJSON({"error": "request canceled"}, status_code=499)
    if body.get("stream", True) is False:
        return Response(first.data, media_type=JSON_TYPE)
    return StreamingResponse(_stream(gateway, job_id, first, output), media_type=NDJSON_TYPE)


async def _first_output(
    gateway: Gateway,
    job_id: str,
    output: trio.MemoryReceiveChannel[Output],
    request: Request,
) -> Output | None:
    """The job's first output; None when it ended without one, or when the caller hung
    up (then the job is cancelled, and nobody reads the answer)."""
    first: list[Output | None] = []
    async with trio.open_nursery() as nursery:

        async def wait_for_output() -> None:
            try:
                first.append(await output.receive())
            except trio.EndOfChannel:
                first.append(None)
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait_for_output)
        await _until_disconnected(request)
        nursery.cancel_scope.cancel()
    if first:
        return first[0]
    # The caller hung up first: its job must not run, or must stop running.
    await output.aclose()
    await gateway.scheduler.send(Cancel(job_id, "client_disconnected"))
    return None


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _stream(
    gateway: Gateway, job_id: str, first: Line, output: trio.MemoryReceiveChannel[Output]
) -> AsyncIterator[bytes]:
    """The job's lines as they come; a failure after the first ends the stream with
    Ollama's ``{"error": ...}`` line. A hang-up (this generator cancelled) cancels
    the job."""
    finished = False
    try:
        yield first.data
        async for message in output:
            if isinstance(message, Failed):
                yield json.dumps({"error": message.message}).encode() + b"\n"
                break
            yield message.data
        finished = True
    finally:
        output.close()  # not aclose(): a checkpoint, where a hang-up's cancellation lands
        if not finished:
            with trio.CancelScope(shield=True):
                await gateway.scheduler.send(Cancel(job_id, "client_disconnected"))


def _forward(gateway: Gateway, method: str, path: str) -> Callable[[Request], Awaitable[Response]]:
    """A route passing ``path`` straight to the backend (ADR-0013 for embeddings)."""

    async def forward(request: Request) -> Response:
        body = await request.body() if method == "POST" else None
        try:
            status, content, media_type = await gateway.upstream.forward(method, path, body)
        except Unavailable as error:
            raise OllamaError(502, f"the backend is unreachable: {error}") from None
        if request.method == "HEAD":
            content = b""
        return Response(content, status_code=status, media_type=media_type)

    return forward
