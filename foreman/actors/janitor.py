"""The janitor: periodic housekeeping, off the path of any request.

Every ``interval`` seconds it prunes the jobs that finished more than ``ttl``
seconds ago: a ``JobPruned`` for each removes its projection row (the API
answers 404 for it afterwards). Its events stay: the log is append-only, and
``foreman events verify`` still passes. Jobs are pruned ``batch`` at a time,
each batch's appends group-committed by the journal, so a backlog of a million
is worked off in many short commits with the server's own appends between
them, never in one long transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import trio

from foreman.actors.journal import JournalClient
from foreman.events.jobs import finished_before
from foreman.events.log import format_timestamp
from foreman.events.reader import Reader
from foreman.events.types import JobPruned
from foreman.logs import log

PRUNE_BATCH = 1000


def wall_clock() -> datetime:
    return datetime.now(UTC)


class Janitor:
    def __init__(
        self,
        journal: JournalClient,
        reader: Reader,
        *,
        ttl: float,
        interval: float,
        batch: int = PRUNE_BATCH,
        clock: Callable[[], datetime] = wall_clock,
    ) -> None:
        self._journal = journal
        self._reader = reader
        self.ttl = ttl
        self.interval = interval
        self.batch = batch
        self._clock = clock
        """Wall-clock time, which the log's timestamps are in (not Trio's clock)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            await self.sweep()

    async def sweep(self) -> int:
        """Prune every job that finished before now - ttl; returns how many."""
        cutoff = format_timestamp(self._clock() - timedelta(seconds=self.ttl))
        pruned = 0
        while expired := await self._reader.read(finished_before, cutoff, self.batch):
            async with trio.open_nursery() as nursery:
                for job_id in expired:
                    nursery.start_soon(self._journal.append, job_id, [JobPruned()])
            pruned += len(expired)
        if pruned:
            log.info("janitor: pruned %d jobs finished before %s", pruned, cutoff)
        return pruned
