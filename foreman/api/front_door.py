"""What the Ollama and OpenAI front doors share: running a caller's request as a
durable job and relaying its answer, and passing a call straight to a backend.

A generation call becomes a job: it waits in the scheduler's queue once its
``JobSubmitted`` is committed, or, when nothing waits and a worker is free, is sent
at once while it commits (ADR-0048); its answer (Ollama's native lines) is relayed
as the worker receives it, never before its ``JobSubmitted`` is committed. A caller
that hangs up cancels its job. Each dialect turns the native answer, and a
:class:`Refused`, into its own shape.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import outcome
import trio
from starlette.requests import Request

from foreman.actors import (
    Answer,
    AnswerError,
    AnswerLine,
    ModelNotFound,
    QueueFull,
    SchedulerClient,
    TenantQueueFull,
)
from foreman.api.bound import Bound, Busy
from foreman.api.fleet import host_for, merged
from foreman.api.rates import QUEUED_RETRY_AFTER, over_queue
from foreman.backend import Backend, BackendUnreachable
from foreman.events.types import JobSubmitted
from foreman.ollama_protocol import JSON_TYPE, ConnectionCut
from foreman.scheduling import model_name

T = TypeVar("T")

ANSWER_BUFFER = 64
"""Lines the worker may run ahead of a slow caller before it waits for it."""
BUSY = "server busy, please try again.  maximum pending requests exceeded"
"""Ollama's own answer when its queue is full (FOREMAN_MAX_QUEUE here)."""
RETRY_AFTER_SECONDS = 1
FLEET_WIDE = frozenset({"/api/tags", "/api/ps"})
"""Paths answered for the whole fleet, from every host's answer."""


@dataclass(frozen=True, slots=True)
class FrontDoor:
    """What the front doors' routes talk to: the scheduler and the backend hosts."""

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


class Refused(Exception):
    """The call is answered with an error (``status``; ``retry_after`` in seconds adds
    Retry-After)."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


@dataclass(frozen=True, slots=True)
class Started:
    """A job whose answer has begun: its first line, and the channel of the rest."""

    job_id: str
    first: AnswerLine
    answers: trio.MemoryReceiveChannel[Answer]


async def start_job(
    door: FrontDoor, submitted: JobSubmitted, body: bytes, request: Request
) -> Started:
    """Queue the job and wait for its answer to begin; raises :class:`Refused` when it
    cannot be queued, failed before answering, or was cancelled (499: the caller hung
    up, or FOREMAN_MAX_WAIT passed with no host up that can run it: 503)."""
    send, answers = trio.open_memory_channel[Answer](ANSWER_BUFFER)
    try:
        job_id = await door.scheduler.submit_waiting(submitted, body, send)
    except TenantQueueFull as full:
        raise Refused(429, over_queue(full), retry_after=QUEUED_RETRY_AFTER) from None
    except QueueFull:
        raise Refused(503, BUSY, retry_after=RETRY_AFTER_SECONDS) from None
    except ModelNotFound:  # as Ollama answers it
        raise Refused(404, f"model '{submitted.model}' not found") from None
    first = await _first_answer(door, job_id, submitted.model, answers, request)
    if isinstance(first, AnswerError):
        raise Refused(first.status, first.message)
    if first is None:  # cancelled: Ollama's answer to a request it gave up on
        raise Refused(499, "request canceled")
    return Started(job_id, first, answers)


class _NoBackendUp(Exception):
    pass


async def _first_answer(
    door: FrontDoor,
    job_id: str,
    model: str,
    answers: trio.MemoryReceiveChannel[Answer],
    request: Request,
) -> Answer | None:
    """The job's first answer; None when it ended without one, or when the caller hung
    up (then the job is cancelled, and nobody reads the answer). FOREMAN_MAX_WAIT
    after it was queued (and each one after), when no host that is up can run the
    job, the job is cancelled (``no_backend_up``) and the caller told 503."""
    try:
        first = await unless_disconnected(
            request, partial(_first_while_a_host_can, door, job_id, model_name(model), answers)
        )
    except _NoBackendUp:
        message = f"no backend that has model '{model}' is up: try again"
        raise Refused(503, message, retry_after=RETRY_AFTER_SECONDS) from None
    if isinstance(first, trio.EndOfChannel):
        return None
    if first is None:  # the caller hung up first: its job must not run, or must stop
        await answers.aclose()
        await door.scheduler.cancel_soon(job_id, "client_disconnected")
    return first


async def _first_while_a_host_can(
    door: FrontDoor, job_id: str, model: str, answers: trio.MemoryReceiveChannel[Answer]
) -> Answer | trio.EndOfChannel:
    while True:
        with trio.move_on_after(door.max_wait):
            try:
                return await answers.receive()
            except trio.EndOfChannel as ended:
                return ended
        hosts = await door.scheduler.hosts()
        able = any(h.takes_work and h.can_run(model) for h in hosts)
        if not able and await door.scheduler.cancel(job_id, "no_backend_up") == "cancelled":
            raise _NoBackendUp


async def answer_lines(door: FrontDoor, started: Started) -> AsyncIterator[bytes | AnswerError]:
    """The job's native lines as they come, the first included; a failure after the
    first ends them with its :class:`AnswerError`. A hang-up (this generator
    cancelled) cancels the job. A job stopped before its last line (cancelled, or its
    caller stalled: FOREMAN_STREAM_STALL) raises ConnectionCut: the caller's
    response must break off, not look whole."""
    finished = stopped = False
    try:
        last = started.first.data
        yield last
        async for answer in started.answers:
            if isinstance(answer, AnswerError):
                yield answer
                break
            last = answer.data
            yield last
        else:
            stopped = not _is_done(last)
        finished = True
        if stopped:
            raise ConnectionCut
    finally:
        started.answers.close()  # not aclose(): a checkpoint, where a hang-up lands
        if not finished:
            with trio.CancelScope(shield=True):
                await door.scheduler.cancel_soon(started.job_id, "client_disconnected")


def _is_done(line: bytes) -> bool:
    """Whether ``line`` is an answer's last (``"done": true``)."""
    try:
        return json.loads(line).get("done") is True
    except (ValueError, AttributeError):
        return False


Answered = tuple[int, bytes, str | None]
"""A backend's answer: status, body, media type."""


async def call_backend(
    door: FrontDoor,
    request: Request,
    method: str,
    path: str,
    body: bytes | None = None,
    model: str | None = None,
) -> Answered | None:
    """A call straight to the backend host that has ``model`` (the fleet-wide paths
    to every host, their answers merged): at most FOREMAN_MAX_PASSTHROUGH at once
    (then 503 at once), each within FOREMAN_PASSTHROUGH_TIMEOUT, stopped when its
    caller hangs up (then None: nobody to answer)."""
    try:
        with door.passthrough.slot():
            with trio.fail_after(door.passthrough_timeout):
                return await unless_disconnected(
                    request, lambda: _to_fleet(door, method, path, body, model)
                )
    except Busy:
        raise Refused(503, BUSY, retry_after=RETRY_AFTER_SECONDS) from None
    except trio.TooSlowError:
        limit = door.passthrough_timeout
        raise Refused(504, f"the backend did not answer within {limit:g} s") from None
    except BackendUnreachable as error:
        raise Refused(502, f"the backend is unreachable: {error}") from None


async def _to_fleet(
    door: FrontDoor, method: str, path: str, body: bytes | None, model: str | None
) -> Answered:
    if path not in FLEET_WIDE:
        host = host_for(await door.scheduler.hosts(), model)
        return await door.backends[host].forward(method, path, body)
    answers: dict[str, Answered | BackendUnreachable] = {}

    async def ask(name: str, backend: Backend) -> None:
        try:
            answers[name] = await backend.forward(method, path, body)
        except BackendUnreachable as error:
            answers[name] = error

    async with trio.open_nursery() as nursery:
        for name, backend in door.backends.items():
            nursery.start_soon(ask, name, backend)
    ok = {name: a[1] for name, a in answers.items() if not isinstance(a, Exception) and a[0] == 200}
    if ok:
        return 200, merged(ok, where=path == "/api/ps"), JSON_TYPE
    first = answers[next(iter(door.backends))]
    if isinstance(first, BackendUnreachable):
        raise first
    return first


async def unless_disconnected(request: Request, call: Callable[[], Awaitable[T]]) -> T | None:
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
        while (await request.receive())["type"] != "http.disconnect":
            pass
        nursery.cancel_scope.cancel()
    return result[0].unwrap() if result else None
