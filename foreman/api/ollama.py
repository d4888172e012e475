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
from functools import partial
from typing import TypeVar

import outcome
import trio
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from foreman.actors import (
    Answer,
    AnswerError,
    AnswerLine,
    ModelNotFound,
    QueueFull,
    SchedulerClient,
)
from foreman.api.bound import Bound, Busy
from foreman.api.fleet import host_for, merged
from foreman.backend import Backend, BackendUnreachable
from foreman.events.types import JobKind, JobSubmitted
from foreman.events.values import storable_object
from foreman.ollama_protocol import (
    JSON_TYPE,
    ConnectionCut,
    NDJSONStream,
    OllamaError,
    OllamaJSON,
    decode_json,
    first_problem,
)
from foreman.scheduling import model_name

T = TypeVar("T")

ERROR_TEXT_LIMIT = 512
"""Characters of a backend's non-JSON error answer quoted in Foreman's JSON one."""
ANSWER_BUFFER = 64
"""Lines the worker may run ahead of a slow caller before it waits for it."""
BUSY = "server busy, please try again.  maximum pending requests exceeded"
"""Ollama's own answer when its queue is full (FOREMAN_MAX_QUEUE here)."""
RETRY_AFTER_SECONDS = 1
FLEET_WIDE = frozenset({"/api/tags", "/api/ps"})
"""Paths answered for the whole fleet, from every host's answer."""


@dataclass(frozen=True, slots=True)
class OllamaApi:
    """What the front door's routes talk to: the scheduler and the backend hosts."""

    scheduler: SchedulerClient
    backends: dict[str, Backend]
    """Each host's client, by name, in the order configured."""
    passthrough: Bound
    """FOREMAN_MAX_PASSTHROUGH: pass-through calls in flight at once."""
    passthrough_timeout: float
    """FOREMAN_PASSTHROUGH_TIMEOUT: the longest one pass-through call may take."""
    max_wait: float = 60.0
    """FOREMAN_MAX_WAIT: how long a waiting caller's job may wait for a host that can
    run it before the caller is told 503."""


class NoBackendUp(Exception):
    """No host that is up can run the job's model: its waiting caller gets 503."""


def ollama_routes(api: OllamaApi) -> APIRouter:
    router = APIRouter()

    @router.post("/api/chat")
    async def chat(request: Request) -> Response:
        return await _run_job(api, "chat", request)

    @router.post("/api/generate")
    async def generate(request: Request) -> Response:
        return await _run_job(api, "generate", request)

    for path in ("/api/embed", "/api/embeddings", "/api/show"):
        router.add_api_route(path, _forward(api, "POST", path), methods=["POST"])
    for path in ("/api/tags", "/api/ps", "/api/version", "/"):
        router.add_api_route(path, _forward(api, "GET", path), methods=["GET", "HEAD"])
    return router


async def _run_job(api: OllamaApi, kind: JobKind, request: Request) -> Response:
    raw = await request.body()  # its size and deadline: foreman.api.guard
    body = decode_json(raw)
    submitted = _submission(kind, body)
    send, answers = trio.open_memory_channel[Answer](ANSWER_BUFFER)
    try:
        job_id = (await api.scheduler.submit(submitted, body=raw, answers=send)).job_id
    except QueueFull:
        return _busy()
    except ModelNotFound:  # as Ollama answers it
        return OllamaJSON({"error": f"model '{submitted.model}' not found"}, status_code=404)
    try:
        first = await _first_answer(api, job_id, submitted.model, answers, request)
    except NoBackendUp:
        return _unavailable(f"no backend that has model '{submitted.model}' is up: try again")
    if isinstance(first, AnswerError):
        return OllamaJSON({"error": first.message}, status_code=first.status)
    if first is None:  # cancelled: Ollama's answer to a request it gave up on
        return OllamaJSON({"error": "request canceled"}, status_code=499)
    if body.get("stream", True) is False:
        return Response(first.data, media_type=JSON_TYPE)
    return NDJSONStream(_stream(api, job_id, first, answers))


def _submission(kind: JobKind, body: object) -> JobSubmitted:
    """The job a request body becomes, or the 400 naming what the log could not hold."""
    if not isinstance(body, dict):
        raise OllamaError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OllamaError(400, "model is required")
    options = body.get("options")
    if options is not None and not isinstance(options, dict):
        raise OllamaError(400, "options must be a JSON object")
    try:
        return JobSubmitted(kind=kind, model=model, request=body, origin="sync")
    except ValidationError as error:
        raise OllamaError(400, first_problem(error, within="request")) from None


async def _first_answer(
    api: OllamaApi,
    job_id: str,
    model: str,
    answers: trio.MemoryReceiveChannel[Answer],
    request: Request,
) -> Answer | None:
    """The job's first answer; None when it ended without one, or when the caller hung
    up (then the job is cancelled, and nobody reads the answer). Raises NoBackendUp
    when, FOREMAN_MAX_WAIT after it was queued (and each one after), no host that is
    up can run the job: the job is cancelled (``no_backend_up``)."""
    first = await _unless_disconnected(
        request, partial(_first_while_a_host_can, api, job_id, model_name(model), answers)
    )
    if isinstance(first, trio.EndOfChannel):
        return None
    if first is None:  # the caller hung up first: its job must not run, or must stop
        await answers.aclose()
        await api.scheduler.cancel_soon(job_id, "client_disconnected")
    return first


async def _first_while_a_host_can(
    api: OllamaApi, job_id: str, model: str, answers: trio.MemoryReceiveChannel[Answer]
) -> Answer | trio.EndOfChannel:
    while True:
        with trio.move_on_after(api.max_wait):
            return await _next_answer(answers)
        hosts = await api.scheduler.hosts()
        able = any(h.takes_work and h.can_run(model) for h in hosts)
        if not able and await api.scheduler.cancel(job_id, "no_backend_up") == "cancelled":
            raise NoBackendUp


async def _next_answer(
    answers: trio.MemoryReceiveChannel[Answer],
) -> Answer | trio.EndOfChannel:
    try:
        return await answers.receive()
    except trio.EndOfChannel as ended:
        return ended


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _stream(
    api: OllamaApi, job_id: str, first: AnswerLine, answers: trio.MemoryReceiveChannel[Answer]
) -> AsyncIterator[bytes]:
    """The job's lines as they come; a failure after the first ends the stream with
    Ollama's ``{"error": ...}`` line. A hang-up (this generator cancelled) cancels
    the job. A job stopped before its last line (cancelled, or its caller stalled:
    FOREMAN_STREAM_STALL) cuts the connection: the caller's chunked body breaks off."""
    finished = stopped = False
    try:
        last = first.data
        yield last
        async for answer in answers:
            if isinstance(answer, AnswerError):
                yield json.dumps({"error": answer.message}).encode() + b"\n"
                break
            last = answer.data
            yield last
        else:
            stopped = not _is_done(last)
        finished = True
        if stopped:  # the answer must not look whole
            raise ConnectionCut
    finally:
        answers.close()  # not aclose(): a checkpoint, where a hang-up's cancellation lands
        if not finished:
            with trio.CancelScope(shield=True):
                await api.scheduler.cancel_soon(job_id, "client_disconnected")


def _forward(api: OllamaApi, method: str, path: str) -> Callable[[Request], Awaitable[Response]]:
    """A route passing ``path`` straight to the backend (ADR-0013 for embeddings):
    at most FOREMAN_MAX_PASSTHROUGH at once (then 503 at once), each within
    FOREMAN_PASSTHROUGH_TIMEOUT, and stopped when its caller hangs up."""

    async def forward(request: Request) -> Response:
        try:
            with api.passthrough.slot():
                return await _pass_through(api, method, path, request)
        except Busy:
            return _busy()

    return forward


def _busy() -> Response:
    """Ollama's 503 for a full queue."""
    return _unavailable(BUSY)


def _unavailable(message: str) -> Response:
    """503, with when to try again."""
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return OllamaJSON({"error": message}, status_code=503, headers=headers)


async def _pass_through(api: OllamaApi, method: str, path: str, request: Request) -> Response:
    body, model = _checked(await request.body()) if method == "POST" else (None, None)
    try:
        with trio.fail_after(api.passthrough_timeout):
            answer = await _unless_disconnected(
                request, lambda: _forward_to_fleet(api, method, path, body, model)
            )
    except trio.TooSlowError:
        limit = api.passthrough_timeout
        raise OllamaError(504, f"the backend did not answer within {limit:g} s") from None
    except BackendUnreachable as error:
        raise OllamaError(502, f"the backend is unreachable: {error}") from None
    if answer is None:  # nobody to answer
        return Response(status_code=499)
    status, content, media_type = answer
    if request.method == "HEAD":
        content = b""
    elif status >= 400 and not (media_type or "").startswith("application/json"):
        text = content[:ERROR_TEXT_LIMIT].decode(errors="replace").strip()
        return OllamaJSON({"error": f"the backend answered {status}: {text}"}, status_code=status)
    return Response(content, status_code=status, media_type=media_type)


async def _forward_to_fleet(
    api: OllamaApi, method: str, path: str, body: bytes | None, model: str | None
) -> tuple[int, bytes, str | None]:
    """A direct call to the host it is for (:mod:`foreman.api.fleet`); ``/api/tags``
    and ``/api/ps`` to every host at once, their answers merged."""
    if path not in FLEET_WIDE:
        host = host_for(await api.scheduler.hosts(), model)
        return await api.backends[host].forward(method, path, body)
    answers: dict[str, tuple[int, bytes, str | None] | BackendUnreachable] = {}

    async def ask(name: str, backend: Backend) -> None:
        try:
            answers[name] = await backend.forward(method, path, body)
        except BackendUnreachable as error:
            answers[name] = error

    async with trio.open_nursery() as nursery:
        for name, backend in api.backends.items():
            nursery.start_soon(ask, name, backend)
    ok = {name: a[1] for name, a in answers.items() if not isinstance(a, Exception) and a[0] == 200}
    if ok:
        return 200, merged(ok, where=path == "/api/ps"), JSON_TYPE
    first = answers[next(iter(api.backends))]
    if isinstance(first, BackendUnreachable):
        raise first
    return first


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


async def _unless_disconnected(request: Request, call: Callable[[], Awaitable[T]]) -> T | None:
    """``call()``'s result, or None when the caller hung up first: then the call is
    stopped, and frees what it held at the backend."""
    result: list[outcome.Outcome[T]] = []
    async with trio.open_nursery() as nursery:

        async def run() -> None:
            try:  # not outcome.acapture: a cancellation must stay one
                result.append(outcome.Value(await call()))
            except Exception as error:
                result.append(outcome.Error(error))
            nursery.cancel_scope.cancel()

        nursery.start_soon(run)
        await _until_disconnected(request)
        nursery.cancel_scope.cancel()
    return result[0].unwrap() if result else None


def _is_done(line: bytes) -> bool:
    """Whether ``line`` is an answer's last (``"done": true``)."""
    try:
        return json.loads(line).get("done") is True
    except (ValueError, AttributeError):
        return False
