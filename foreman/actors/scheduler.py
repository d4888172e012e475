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

from dataclasses import dataclass
from typing import Any

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
    request: dict[str, Any]
    attempts: int
    """Attempts made so far."""
    output: trio.MemorySendChannel[Output] | None = None
    """Where a synchronous caller waits for the answer; None for async jobs."""
    admitted: bool = False
    """It holds a place :class:`Admit` reserved for it."""


@dataclass(frozen=True, slots=True)
class Cancel:
    job_id: str
    reason: str


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


Message = Work | Ready | Done | Cancel | Admit | Release


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
        self._reserved = 0
        self._ready: list[Ready] = []
        self._at_backend: dict[str, _AtBackend] = {}

    async def run(
        self,
        inbox: trio.MemoryReceiveChannel[Message],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        async with inbox:
            async for message in inbox:
                match message:
                    case Work():
                        self._queue.push(message.job)
                        self._work[message.job.job_id] = message
                        if message.admitted:
                            self._reserved -= 1
                    case Ready():
                        self._ready.append(message)
                    case Done():
                        del self._at_backend[message.job_id]
                    case Cancel():
                        await self._cancel(message)
                    case Admit():
                        admitted = self._queued() + self._reserved < self.max_queue
                        if admitted:
                            self._reserved += 1
                        message.reply.put(admitted)
                    case Release():
                        self._reserved -= 1
                if self._ready and self._queue:
                    self._dispatch()

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
            ready.reply.put(self._work.pop(job.job_id))
        self._ready = waiting

    def _queued(self) -> int:
        """Jobs not started yet: in the queue, or waiting behind another at the backend."""
        workers_busy = len({id(job.control) for job in self._at_backend.values()})
        return len(self._queue) + len(self._at_backend) - workers_busy

    def _next_for(self, ready: Ready, now: float) -> QueuedJob | None:
        """The job for this worker now: the rule's pick, unless the worker's
        backend is busy and the pick would swap its model."""
        busy = [a.model_key for a in self._at_backend.values() if a.control is ready.control]
        if not busy:
            return self._queue.peek(ready.loaded, now)
        job = self._queue.peek(busy[-1], now)
        return job if job is not None and job.model_key == busy[-1] else None

    async def _cancel(self, cancel: Cancel) -> None:
        if self._queue.remove(cancel.job_id) is not None:
            await self._cancel_queued(self._work.pop(cancel.job_id), cancel.reason)
        elif cancel.job_id in self._at_backend:
            await self._at_backend[cancel.job_id].control.send(cancel)

    async def _cancel_queued(self, work: Work, reason: str) -> None:
        await self._journal.append(work.job.job_id, [JobCancelled(reason=reason)])
        if work.output is not None:
            await work.output.aclose()
