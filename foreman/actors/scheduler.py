"""The scheduler: owns the queue of jobs waiting for the GPU, hands the next one out.

Its inbox takes :class:`Work` (a job to queue: just submitted, recovered, or
back for a retry), :class:`Ready` (a worker asking for its next job, naming
the model the backend has loaded) and :class:`Cancel`. It answers a worker only
when it has a job, and picks that job at that moment, so the drain-by-model
choice always sees the current queue and the model loaded now
(:mod:`foreman.scheduling`). :class:`Admit` keeps the queue within
``max_queue``. A cancelled job still queued never runs: the
scheduler records ``JobCancelled``; one already running is the worker's to stop,
so the cancel goes on to it.
"""

from __future__ import annotations

from collections import deque
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
class Admit:
    """May one more job queue? True reserves its place (``max_queue``) until its
    :class:`Work` comes, or a :class:`Release` gives the place back."""

    reply: Reply[bool]


@dataclass(frozen=True, slots=True)
class Release:
    """An admitted job will not come after all."""


Message = Work | Ready | Cancel | Admit | Release


class Scheduler:
    def __init__(self, journal: JournalClient, max_wait: float, max_queue: int) -> None:
        self._journal = journal
        self.max_queue = max_queue
        self._queue = JobQueue(max_wait)
        self._work: dict[str, Work] = {}
        self._reserved = 0
        self._idle_workers: deque[Ready] = deque()
        self._running: dict[str, trio.MemorySendChannel[Cancel]] = {}

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
                        self._running = {  # the worker is done with the job it had
                            job: control
                            for job, control in self._running.items()
                            if control is not message.control
                        }
                        self._idle_workers.append(message)
                    case Cancel():
                        await self._cancel(message)
                    case Admit():
                        admitted = len(self._queue) + self._reserved < self.max_queue
                        if admitted:
                            self._reserved += 1
                        message.reply.put(admitted)
                    case Release():
                        self._reserved -= 1
                self._dispatch()

    def _dispatch(self) -> None:
        while self._idle_workers and self._queue:
            ready = self._idle_workers.popleft()
            job = self._queue.pick(ready.loaded, trio.current_time())
            assert job is not None  # the queue is not empty
            self._running[job.job_id] = ready.control
            ready.reply.put(self._work.pop(job.job_id))

    async def _cancel(self, cancel: Cancel) -> None:
        if self._queue.remove(cancel.job_id) is not None:
            await self._cancel_queued(self._work.pop(cancel.job_id), cancel.reason)
        elif cancel.job_id in self._running:
            await self._running[cancel.job_id].send(cancel)

    async def _cancel_queued(self, work: Work, reason: str) -> None:
        await self._journal.append(work.job.job_id, [JobCancelled(reason=reason)])
        if work.output is not None:
            await work.output.aclose()
