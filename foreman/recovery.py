"""Crash recovery: the jobs a previous run left unfinished go back to the queue.

On start, after the journal has caught the projections up: an unfinished job
whose stream holds an event that cannot be read back is quarantined
(``JobQuarantined``: failed, with the reason, ADR-0032); a job left
``running`` was interrupted, so it gets ``JobRequeued(interrupted)`` (the
attempt counts; past ``max_attempts`` it fails instead); then every queued job
goes to the scheduler in its original order of arrival. Jobs are read a chunk
at a time through the Reader, so a deep queue is recovered without holding
every job's events in memory at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from foreman.actors import JournalClient, SchedulerClient
from foreman.events.jobs import TERMINAL_STATES, Job, JobsProjection, with_unreadable_events
from foreman.events.log import EventLog, unix_time
from foreman.events.reader import Reader
from foreman.events.types import JobFailed, JobQuarantined, JobRequeued, JobSubmitted

CHUNK = 1000

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Unfinished:
    job: Job
    submitted: JobSubmitted
    arrival: int
    """The seq of its JobSubmitted: its place in the queue."""


def unfinished_arrivals(log: EventLog) -> list[tuple[int, str]]:
    """``(seq of JobSubmitted, job id)`` of queued and running jobs, oldest first."""
    rows = log.conn.execute(
        "SELECT e.seq, j.id FROM jobs j JOIN events e ON e.stream = j.id AND e.version = 1 "
        "WHERE j.state IN ('queued', 'running') ORDER BY e.seq"
    )
    return [(seq, job_id) for seq, job_id in rows]


def unfinished_jobs(log: EventLog, arrivals: list[tuple[int, str]]) -> list[Unfinished]:
    """These jobs as they stand, with what they were submitted with, in this order."""
    jobs = JobsProjection().load(log.conn, [job_id for _, job_id in arrivals])
    found = []
    for first in log.events_at([seq for seq, _ in arrivals]):  # in arrival order
        assert isinstance(first.event, JobSubmitted)
        found.append(Unfinished(jobs[first.stream], first.event, first.seq))
    return found


async def recover(
    reader: Reader,
    journal: JournalClient,
    scheduler: SchedulerClient,
    *,
    max_attempts: int,
) -> int:
    """Requeue what a previous run left unfinished; returns how many were queued again."""
    for job in await reader.read(with_unreadable_events):
        if job.state not in TERMINAL_STATES:
            await quarantine(job, journal)
    arrivals = await reader.read(unfinished_arrivals)
    requeued = 0
    for start in range(0, len(arrivals), CHUNK):
        for unfinished in await reader.read(unfinished_jobs, arrivals[start : start + CHUNK]):
            job = unfinished.job
            if await _may_run_again(job, journal, max_attempts):
                waited = max(0.0, time.time() - unix_time(job.created_at))
                await scheduler.requeue(
                    job.id,
                    unfinished.submitted,
                    arrival=unfinished.arrival,
                    attempts=job.attempts,
                    waited=waited,
                )
                requeued += 1
    return requeued


async def quarantine(job: Job, journal: JournalClient) -> None:
    """Fail a job whose history cannot be read back, and tell the operator in one line."""
    assert job.unreadable is not None and job.error is not None
    reason = job.error.message
    await journal.append(job.id, [JobQuarantined(event_seq=job.unreadable, reason=reason)])
    logger.warning(
        "quarantined job %s: %s; it is failed and will not run (`foreman events verify` "
        "lists the event)",
        job.id,
        reason,
    )


async def _may_run_again(job: Job, journal: JournalClient, max_attempts: int) -> bool:
    """A job interrupted while running is requeued, or fails past its last attempt."""
    if job.state != "running":
        return True
    if job.attempts >= max_attempts:
        error = f"interrupted by a restart during attempt {job.attempts} of {max_attempts}"
        await journal.append(job.id, [JobFailed(error=error)])
        return False
    await journal.append(job.id, [JobRequeued(reason="interrupted")])
    return True
