"""The scheduler: owns the queue of jobs waiting for the GPU, hands the next one out.

Everything else talks to it through a :class:`SchedulerClient`, which
:meth:`Scheduler.run` reports once started: the front doors and recovery
``submit``, ``requeue``, ``cancel`` and ask a job's ``position``; a worker asks
for its ``next_job``, says when a call is ``done``, and queues a ``retry``.
The messages behind those calls are private to this module.

It answers a worker only when it has a job, and picks that job at that
moment, so the drain-by-model choice always sees the current queue and the
model loaded now (:mod:`foreman.scheduling`).

A worker keeps one job waiting at the backend behind the one running, so the
GPU goes from one to the next without waiting for Foreman (ADR-0026). While a
worker's call is in flight, it is given only a job the rule would pick next
*and* that needs no model swap: a swap waits until the backend is free, so a
job for the loaded model arriving meanwhile still goes first.

``submit`` keeps the queue within ``max_queue``: it reserves a place before the
job is committed, so a job refused as :class:`QueueFull` leaves no trace. A
cancelled job still queued never runs: the scheduler records ``JobCancelled``;
one already at the backend is the worker's to stop, so the stop goes on to it.
"""

from __future__ import annotations

import heapq
import json
import math
from dataclasses import dataclass
from typing import Literal

import trio

from foreman.actors._reply import Reply
from foreman.actors.journal import JournalClient
from foreman.actors.worker import Answer, Stop, Work
from foreman.events.types import JobCancelled, JobSubmitted
from foreman.ids import new_ulid
from foreman.scheduling import JobQueue, QueuedJob

INBOX = 1024
"""Requests the scheduler's inbox holds before its clients wait."""

CancelOutcome = Literal["cancelled", "stopping", "not_found"]
"""``cancelled``: it was queued and ``JobCancelled`` is committed; ``stopping``: it
is at the backend and its worker stops it; ``not_found``: neither (finished)."""


class QueueFull(Exception):
    """FOREMAN_MAX_QUEUE jobs wait already: the job was not submitted."""


@dataclass(frozen=True, slots=True)
class Queued:
    """A submitted job: ``JobSubmitted`` is committed and the job is in the queue."""

    job_id: str
    created_at: str
    """When ``JobSubmitted`` was recorded."""
    position: int | None
    """Jobs that run before it (None: it already left the queue)."""


class SchedulerClient:
    """A handle on the scheduler, as :class:`~foreman.actors.journal.JournalClient` is
    on the journal; cheap to copy with :meth:`clone`."""

    def __init__(self, requests: trio.MemorySendChannel[_Message], journal: JournalClient) -> None:
        self._requests = requests
        self._journal = journal

    def clone(self) -> SchedulerClient:
        return SchedulerClient(self._requests.clone(), self._journal.clone())

    async def submit(
        self,
        submitted: JobSubmitted,
        *,
        body: bytes | None = None,
        answers: trio.MemorySendChannel[Answer] | None = None,
    ) -> Queued:
        """Admit a new job (raises :class:`QueueFull` beyond ``max_queue``), commit its
        ``JobSubmitted``, and queue it. ``body``: the backend request as the caller
        sent it (default: the request, encoded); ``answers``: where a waiting caller
        takes the answer."""
        admitted: Reply[bool] = Reply()
        await self._requests.send(_Admit(admitted))
        if not await admitted.wait():
            raise QueueFull
        job_id = new_ulid()
        with trio.CancelScope(shield=True):  # the place is taken, or given back
            try:
                (event,) = await self._journal.append(job_id, [submitted], expected_version=0)
            except BaseException:
                await self._requests.send(_Release())
                raise
            queued = QueuedJob.of(job_id, event.seq, submitted, trio.current_time())
            request = json.dumps(submitted.request).encode() if body is None else body
            position: Reply[int | None] = Reply()
            work = Work(queued, submitted.kind, request, attempts=0, answers=answers)
            await self._requests.send(_Queue(work, admitted=True, position=position))
        return Queued(job_id, event.recorded_at, await position.wait())

    async def requeue(
        self, job_id: str, submitted: JobSubmitted, *, arrival: int, attempts: int, waited: float
    ) -> None:
        """Queue a job the log holds as queued (recovery), in its place of ``arrival``
        (the seq of its ``JobSubmitted``), as if it had waited ``waited`` seconds."""
        queued = QueuedJob.of(job_id, arrival, submitted, trio.current_time() - waited)
        body = json.dumps(submitted.request).encode()
        await self._requests.send(_Queue(Work(queued, submitted.kind, body, attempts)))

    async def cancel(self, job_id: str, reason: str) -> CancelOutcome:
        outcome: Reply[CancelOutcome] = Reply()
        await self._requests.send(_Cancel(job_id, reason, outcome))
        return await outcome.wait()

    async def cancel_soon(self, job_id: str, reason: str) -> None:
        """Hand a cancel over without waiting for its outcome: for a caller leaving."""
        await self._requests.send(_Cancel(job_id, reason, None))

    async def position(self, job_id: str) -> int | None:
        """How many jobs run before this queued one (None: it is not queued)."""
        reply: Reply[int | None] = Reply()
        await self._requests.send(_Position(job_id, reply))
        return await reply.wait()

    async def next_job(self, loaded: str | None, stops: trio.MemorySendChannel[Stop]) -> Work:
        """A worker's next job, for a backend that has ``loaded``; waits until there
        is one. Stops for the jobs it is given come on ``stops``."""
        reply: Reply[Work] = Reply()
        await self._requests.send(_Ready(loaded, reply, stops))
        return await reply.wait()

    async def done(self, job_id: str) -> None:
        """The worker's backend call for this job ended: the job left the GPU."""
        await self._requests.send(_Done(job_id))

    async def retry(self, work: Work, delay: float) -> None:
        """Queue a job again after a failed attempt, to run ``delay`` seconds from now.
        The scheduler holds it meanwhile, so a cancel still finds it."""
        await self._requests.send(_Queue(work, not_before=trio.current_time() + delay))


@dataclass(frozen=True, slots=True)
class _Queue:
    """A job to queue: just submitted, recovered, or back for a retry."""

    work: Work
    admitted: bool = False
    """It holds a place :class:`_Admit` reserved for it."""
    not_before: float = -math.inf
    """Trio time before which it may not run: a retry's backoff."""
    position: Reply[int | None] | None = None
    """Where to answer its queue position once it is queued."""


@dataclass(frozen=True, slots=True)
class _Cancel:
    job_id: str
    reason: str
    outcome: Reply[CancelOutcome] | None


@dataclass(frozen=True, slots=True)
class _Position:
    job_id: str
    reply: Reply[int | None]


@dataclass(frozen=True, slots=True)
class _Ready:
    """A worker asks for its next job."""

    loaded: str | None
    """The model key the backend has loaded, as far as the worker knows."""
    reply: Reply[Work]
    stops: trio.MemorySendChannel[Stop]


@dataclass(frozen=True, slots=True)
class _Done:
    job_id: str


@dataclass(frozen=True, slots=True)
class _Admit:
    """May one more job queue? True reserves its place (``max_queue``) until its
    :class:`_Queue` comes, or a :class:`_Release` gives the place back."""

    reply: Reply[bool]


@dataclass(frozen=True, slots=True)
class _Release:
    """An admitted job will not come after all."""


_Message = _Queue | _Ready | _Done | _Cancel | _Position | _Admit | _Release


@dataclass(frozen=True, slots=True)
class _AtBackend:
    """A job a worker has sent to the backend."""

    stops: trio.MemorySendChannel[Stop]
    model_key: str


class Scheduler:
    def __init__(self, journal: JournalClient, max_wait: float, max_queue: int) -> None:
        self._journal = journal
        self.max_queue = max_queue
        self._queue = JobQueue(max_wait)
        self._work: dict[str, Work] = {}
        self._delayed: dict[str, Work] = {}
        self._due: list[tuple[float, str]] = []  # heap of (not_before, job) for _delayed
        self._reserved = 0
        self._ready: list[_Ready] = []
        self._at_backend: dict[str, _AtBackend] = {}  # in the order they were sent
        self._loaded: str | None = None

    async def run(
        self, *, task_status: trio.TaskStatus[SchedulerClient] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Report a client, then serve requests until every client is closed."""
        send, inbox = trio.open_memory_channel[_Message](INBOX)
        task_status.started(SchedulerClient(send, self._journal))
        async with inbox:
            while True:
                message: _Message | None = None
                with trio.move_on_at(self._due[0][0] if self._due else math.inf):
                    try:
                        message = await inbox.receive()
                    except trio.EndOfChannel:
                        return
                if message is not None:  # else: a delayed job is due
                    await self._handle(message)
                self._release_due()
                if self._ready and self._queue:
                    self._dispatch()

    async def _handle(self, message: _Message) -> None:
        match message:
            case _Queue(work=work):
                job_id = work.job.job_id
                if message.admitted:
                    self._reserved -= 1
                if message.not_before > trio.current_time():
                    self._delayed[job_id] = work
                    heapq.heappush(self._due, (message.not_before, job_id))
                else:
                    self._enqueue(work)
                if message.position is not None:
                    message.position.put(self._position(job_id))
            case _Ready():
                self._loaded = self._loaded if message.loaded is None else message.loaded
                self._ready.append(message)
            case _Done():
                del self._at_backend[message.job_id]
            case _Cancel():
                await self._cancel(message)
            case _Position():
                message.reply.put(self._position(message.job_id))
            case _Admit():
                admitted = self._queued() + self._reserved < self.max_queue
                if admitted:
                    self._reserved += 1
                message.reply.put(admitted)
            case _Release():
                self._reserved -= 1

    def _enqueue(self, work: Work) -> None:
        self._queue.push(work.job)
        self._work[work.job.job_id] = work

    def _release_due(self) -> None:
        """Queue the delayed jobs whose time has come."""
        now = trio.current_time()
        while self._due and self._due[0][0] <= now:
            _, job_id = heapq.heappop(self._due)
            work = self._delayed.pop(job_id, None)  # None: cancelled meanwhile
            if work is not None:
                self._enqueue(work)

    def _dispatch(self) -> None:
        now = trio.current_time()
        waiting = []
        for ready in self._ready:
            job = self._next_for(ready, now)
            if job is None:
                waiting.append(ready)
                continue
            self._queue.remove(job.job_id)
            self._at_backend[job.job_id] = _AtBackend(ready.stops, job.model_key)
            self._loaded = job.model_key
            ready.reply.put(self._work.pop(job.job_id))
        self._ready = waiting

    def _queued(self) -> int:
        """Jobs not started yet: in the queue, or waiting behind another at the backend."""
        workers_busy = len({id(job.stops) for job in self._at_backend.values()})
        return len(self._queue) + len(self._delayed) + len(self._at_backend) - workers_busy

    def _next_for(self, ready: _Ready, now: float) -> QueuedJob | None:
        """The job for this worker now: the rule's pick, unless the worker's
        backend is busy and the pick would swap its model."""
        busy = [a.model_key for a in self._at_backend.values() if a.stops is ready.stops]
        if not busy:
            return self._queue.peek(ready.loaded, now)
        job = self._queue.peek(busy[-1], now)
        return job if job is not None and job.model_key == busy[-1] else None

    def _position(self, job_id: str) -> int | None:
        """Jobs that run before ``job_id``: those at the backend, then the queue's order."""
        if job_id in self._at_backend:
            return list(self._at_backend).index(job_id)  # behind the running one
        work = self._work.get(job_id) or self._delayed.get(job_id)
        if work is None:
            return None
        return len(self._at_backend) + self._queue.position(work.job, self._loaded)

    async def _cancel(self, cancel: _Cancel) -> None:
        outcome: CancelOutcome = "not_found"
        if self._queue.remove(cancel.job_id) is not None:
            await self._cancel_queued(self._work.pop(cancel.job_id), cancel.reason)
            outcome = "cancelled"
        elif cancel.job_id in self._delayed:
            await self._cancel_queued(self._delayed.pop(cancel.job_id), cancel.reason)
            outcome = "cancelled"
        elif cancel.job_id in self._at_backend:
            await self._at_backend[cancel.job_id].stops.send(Stop(cancel.job_id, cancel.reason))
            outcome = "stopping"
        if cancel.outcome is not None:
            cancel.outcome.put(outcome)

    async def _cancel_queued(self, work: Work, reason: str) -> None:
        await self._journal.append(work.job.job_id, [JobCancelled(reason=reason)])
        if work.answers is not None:
            await work.answers.aclose()
