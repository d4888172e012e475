"""Crash recovery: the jobs a previous run left unfinished go back to the queue.

On start, after the journal has caught the projections up: a job left
``running`` was interrupted, so it gets ``JobRequeued(interrupted)`` (the
attempt counts; past ``max_attempts`` it fails instead); then every queued job
goes to the scheduler in its original order of arrival.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import trio

from foreman.actors.journal import JournalClient
from foreman.actors.scheduler import Message, Work
from foreman.events.jobs import Job, JobsProjection
from foreman.events.log import EventLog
from foreman.events.types import JobFailed, JobRequeued, JobSubmitted
from foreman.scheduling import QueuedJob


@dataclass(frozen=True, slots=True)
class Unfinished:
    job: Job
    submitted: JobSubmitted
    arrival: int
    """The seq of its JobSubmitted: its place in the queue."""


def unfinished_jobs(path: str | Path) -> list[Unfinished]:
    """Queued and running jobs, oldest first (a blocking read, for a worker thread)."""
    log = EventLog.open(path, read_only=True)
    try:
        with log.snapshot():
            ids = [
                row[0]
                for row in log.conn.execute(
                    "SELECT id FROM jobs WHERE state IN ('queued', 'running')"
                )
            ]
            jobs = JobsProjection().load(log.conn, ids)
            found = []
            for job_id, job in jobs.items():
                first = log.read_stream(job_id)[0]
                assert isinstance(first.event, JobSubmitted)
                found.append(Unfinished(job, first.event, first.seq))
    finally:
        log.close()
    return sorted(found, key=lambda unfinished: unfinished.arrival)


async def recover(
    path: str | Path,
    journal: JournalClient,
    scheduler: trio.MemorySendChannel[Message],
    *,
    max_attempts: int,
) -> list[str]:
    """Requeue what a previous run left unfinished; returns the ids queued again."""
    requeued = []
    for unfinished in await trio.to_thread.run_sync(unfinished_jobs, path):
        job = unfinished.job
        if job.state == "running":
            if job.attempts >= max_attempts:
                error = f"interrupted by a restart during attempt {job.attempts} of {max_attempts}"
                await journal.append(job.id, [JobFailed(error=error)])
                continue
            await journal.append(job.id, [JobRequeued(reason="interrupted")])
        await scheduler.send(_work(unfinished))
        requeued.append(job.id)
    return requeued


def _work(unfinished: Unfinished) -> Work:
    job, submitted = unfinished.job, unfinished.submitted
    waited = max(0.0, time.time() - _epoch(job.created_at))
    queued = QueuedJob.of(job.id, unfinished.arrival, submitted, trio.current_time() - waited)
    return Work(queued, submitted.kind, submitted.request, attempts=job.attempts)


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()
