"""The scheduler: owns the queue of jobs waiting for the GPU, hands the next one out.

Its inbox takes :class:`Work` (a job to queue: just submitted, recovered, or
back for a retry), :class:`Ready` (a worker asking for its next job, naming
the model the backend has loaded) and :class:`Cancel`. It answers a worker only
when it has a job, and picks that job at that moment, so the drain-by-model
choice always sees the current queue and the model loaded now
(:mod:`foreman.scheduling`). A cancelled job still queued never runs: the
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


Message = Work | Ready | Cancel


class Scheduler:
    def __init__(self, journal: JournalClient, max_wait: float) -> None:
        self._journal = journal
        self.max_wait = max_wait

    async def run(
        self,
        inbox: trio.MemoryReceiveChannel[Message],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        queue = JobQueue(self.max_wait)
        waiting_work: dict[str, Work] = {}
        idle_workers: deque[Ready] = deque()
        running: dict[str, trio.MemorySendChannel[Cancel]] = {}
        task_status.started()
        async with inbox:
            async for message in inbox:
                if isinstance(message, Work):
                    queue.push(message.job)
                    waiting_work[message.job.job_id] = message
                elif isinstance(message, Ready):
                    # The worker is done with the job it had.
                    running = {job: c for job, c in running.items() if c is not message.control}
                    idle_workers.append(message)
                elif queue.remove(message.job_id) is not None:
                    await self._cancel_queued(waiting_work.pop(message.job_id), message.reason)
                elif message.job_id in running:
                    await running[message.job_id].send(message)
                while idle_workers and queue:
                    ready = idle_workers.popleft()
                    job = queue.pick(ready.loaded, trio.current_time())
                    assert job is not None  # the queue is not empty
                    running[job.job_id] = ready.control
                    ready.reply.put(waiting_work.pop(job.job_id))

    async def _cancel_queued(self, work: Work, reason: str) -> None:
        await self._journal.append(work.job.job_id, [JobCancelled(reason=reason)])
        if work.output is not None:
            await work.output.aclose()
