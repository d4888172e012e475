"""The scheduler: owns the queue of jobs waiting for the GPU, hands the next one out.

Its inbox takes :class:`Work` (a job to queue: just submitted, recovered, or
back for a retry), :class:`Ready` (a worker asking for its next job, naming
the model the backend has loaded), :class:`Done` (a worker's backend call
ended) and :class:`Cancel`. It answers a worker only when it has a job, and
picks that job at that moment, so the drain-by-model choice always sees the
current queue and the model loaded now (:mod:`foreman.scheduling`).

A worker keeps one job waiting at the backend behind the one running, so the
GPU goes from one to the next without waiting for Foreman (ADR-0026). While a
worker's call is in flight, it is given only a job the rule would pick next
*and* that needs no model swap: a swap waits until the backend is free, so a
job for the loaded model arriving meanwhile still goes first.

:class:`Admit` keeps the queue within ``max_queue``. A cancelled job still
queued never runs: the scheduler records ``JobCancelled``; one already at the
backend is the worker's to stop, so the cancel goes on to it.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Literal

import trio

from foreman.actors.journal import JournalClient
from foreman.actors.reply import Reply
from foreman.events.types import JobCancelled
from foreman.scheduling import JobQueue, QueuedJob


@dataclass(frozen=True, slots=True)
class Line:
    """One NDJSON line of the backend's answer, for the job's waiting caller."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Failed:
    """The job failed before its answer began: the caller answers with this status."""

    status: int
    message: str


Output = Line | Failed


@dataclass(frozen=True, slots=True)
class Work:
    """A queued job and what a worker needs to run it."""

    job: QueuedJob
    kind: str
    body: bytes
    """The backend request body (JSON), as bytes: a queued job costs little memory."""
    attempts: int
    """Attempts made so far."""
    output: trio.MemorySendChannel[Output] | None = None
    """Where a synchronous caller waits for the answer; None for async jobs."""
    admitted: bool = False
    """It holds a place :class:`Admit` reserved for it."""
    not_before: float = -math.inf
    """Trio time before which it may not run: a retry's backoff. The scheduler holds
    it meanwhile, so a cancel still finds it."""
    position: Reply[int | None] | None = None
    """Where to answer its queue position once it is queued (saves a Position)."""


CancelOutcome = Literal["cancelled", "stopping", "not_found"]
"""``cancelled``: it was queued and ``JobCancelled`` is committed; ``stopping``: it
is at the backend and its worker stops it; ``not_found``: neither (finished)."""


@dataclass(frozen=True, slots=True)
class Cancel:
    job_id: str
    reason: str
    outcome: Reply[CancelOutcome] | None = None


@dataclass(frozen=True, slots=True)
class Position:
    """How many jobs run before this queued one (None: it is not queued)."""

    job_id: str
    reply: Reply[int | None]


@dataclass(frozen=True, slots=True)
class Ready:
    loaded: str | None
    """The model key the backend has loaded, as far as the worker knows."""
    reply: Reply[Work]
    control: trio.MemorySendChannel[Cancel]
    """Where the worker takes cancels for the job it is given."""


@dataclass(frozen=True, slots=True)
class Done:
    """The worker's backend call for this job ended: the job left the GPU."""

    job_id: str


@dataclass(frozen=True, slots=True)
class Admit:
    """May one more job queue? True reserves its place (``max_queue``) until its
    :class:`Work` comes, or a :class:`Release` gives the place back."""

    reply: Reply[bool]


@dataclass(frozen=True, slots=True)
class Release:
    """An admitted job will not come after all."""


Message = Work | Ready | Done | Cancel | Position | Admit | Release


@dataclass(frozen=True, slots=True)
class _AtBackend:
    """A job a worker has sent to the backend."""

    control: trio.MemorySendChannel[Cancel]
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
        self._ready: list[Ready] = []
        self._at_backend: dict[str, _AtBackend] = {}  # in the order they were sent
        self._loaded: str | None = None

    async def run(
        self,
        inbox: trio.MemoryReceiveChannel[Message],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        async with inbox:
            while True:
                message: Message | None = None
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

    async def _handle(self, message: Message) -> None:
        match message:
            case Work():
                if message.admitted:
                    self._reserved -= 1
                if message.not_before > trio.current_time():
                    self._delayed[message.job.job_id] = message
                    heapq.heappush(self._due, (message.not_before, message.job.job_id))
                else:
                    self._enqueue(message)
                if message.position is not None:
                    message.position.put(self._position(message.job.job_id))
            case Ready():
                self._loaded = self._loaded if message.loaded is None else message.loaded
                self._ready.append(message)
            case Done():
                del self._at_backend[message.job_id]
            case Cancel():
                await self._cancel(message)
            case Position():
                message.reply.put(self._position(message.job_id))
            case Admit():
                admitted = self._queued() + self._reserved < self.max_queue
                if admitted:
                    self._reserved += 1
                message.reply.put(admitted)
            case Release():
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
            self._at_backend[job.job_id] = _AtBackend(ready.control, job.model_key)
            self._loaded = job.model_key
            ready.reply.put(self._work.pop(job.job_id))
        self._ready = waiting

    def _queued(self) -> int:
        """Jobs not started yet: in the queue, or waiting behind another at the backend."""
        workers_busy = len({id(job.control) for job in self._at_backend.values()})
        return len(self._queue) + len(self._delayed) + len(self._at_backend) - workers_busy

    def _next_for(self, ready: Ready, now: float) -> QueuedJob | None:
        """The job for this worker now: the rule's pick, unless the worker's
        backend is busy and the pick would swap its model."""
        busy = [a.model_key for a in self._at_backend.values() if a.control is ready.control]
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

    async def _cancel(self, cancel: Cancel) -> None:
        outcome: CancelOutcome = "not_found"
        if self._queue.remove(cancel.job_id) is not None:
            await self._cancel_queued(self._work.pop(cancel.job_id), cancel.reason)
            outcome = "cancelled"
        elif cancel.job_id in self._delayed:
            await self._cancel_queued(self._delayed.pop(cancel.job_id), cancel.reason)
            outcome = "cancelled"
        elif cancel.job_id in self._at_backend:
            await self._at_backend[cancel.job_id].control.send(cancel)
            outcome = "stopping"
        if cancel.outcome is not None:
            cancel.outcome.put(outcome)

    async def _cancel_queued(self, work: Work, reason: str) -> None:
        await self._journal.append(work.job.job_id, [JobCancelled(reason=reason)])
        if work.output is not None:
            await work.output.aclose()
