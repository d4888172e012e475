"""The janitor: periodic housekeeping, off the path of any request.

Every ``interval`` seconds it prunes the jobs that finished more than ``ttl``
seconds ago: a ``JobPruned`` for each removes its projection row (the API
answers 410 for it afterwards), then its stored outputs are removed. Files (the
Batch API's inputs and outputs) stored more than ``ttl`` ago go the same way
(``FileDeleted``, ``expired``), except the input of a batch still running. Its
events stay: the log is append-only, and ``foreman events verify`` still
passes. Jobs are pruned ``batch`` at a time, each batch's appends
group-committed by the journal, and after each batch the janitor rests as
long as the batch took: a backlog of a million is worked off in many short
commits with the server's own work between them, never in one long
transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import trio

from foreman.actors.journal import JournalClient
from foreman.artifacts import ArtifactStore
from foreman.events.files import existing_files, files_stored_before
from foreman.events.jobs import existing_jobs, finished_before
from foreman.events.log import format_timestamp, wall_clock
from foreman.events.projection import IllegalTransition
from foreman.events.reader import Reader
from foreman.events.types import FILE_ID_PREFIX, FileDeleted, JobPruned, file_stream

logger = logging.getLogger(__name__)

PRUNE_BATCH = 250


class Janitor:
    def __init__(
        self,
        journal: JournalClient,
        reader: Reader,
        store: ArtifactStore,
        *,
        ttl: float,
        interval: float,
        batch: int = PRUNE_BATCH,
        clock: Callable[[], datetime] = wall_clock,
    ) -> None:
        self._journal = journal
        self._reader = reader
        self._store = store
        self.ttl = ttl
        self.interval = interval
        self.batch = batch
        self._clock = clock
        """Wall-clock time, which the log's timestamps are in (not Trio's clock)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Collect what a crash left behind, then sweep every ``interval``."""
        stored = await trio.to_thread.run_sync(self._store.jobs)
        kept = await self._reader.read(existing_jobs, stored)
        kept |= await self._reader.read(existing_files, stored)
        orphans = sorted(set(stored) - kept)
        await trio.to_thread.run_sync(self._remove_outputs, orphans)
        if orphans:
            logger.info(
                "janitor: removed the outputs of %d jobs no longer in the log", len(orphans)
            )
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            await self.sweep()

    async def sweep(self) -> int:
        """Prune every job that finished, and every file stored, before now - ttl;
        returns how many jobs."""
        cutoff = format_timestamp(self._clock() - timedelta(seconds=self.ttl))
        await self._prune_files(cutoff)
        pruned = 0
        while expired := await self._reader.read(finished_before, cutoff, self.batch):
            started = trio.current_time()
            done: list[str] = []
            async with trio.open_nursery() as nursery:
                for job_id in expired:
                    nursery.start_soon(self._prune, job_id, done)
            await trio.to_thread.run_sync(self._remove_outputs, done)
            pruned += len(done)
            if not done:
                break
            # Give the server as much time again before the next batch: a backlog is
            # worked off at half speed rather than by crowding out requests.
            await trio.sleep(trio.current_time() - started)
        if pruned:
            logger.info("janitor: pruned %d jobs finished before %s", pruned, cutoff)
        return pruned

    async def _prune_files(self, cutoff: str) -> None:
        while expired := await self._reader.read(files_stored_before, cutoff, self.batch):
            deleted = [FileDeleted(reason="expired")]
            for committed in [
                await self._journal.enqueue(file_stream(file.id), deleted) for file in expired
            ]:
                await committed.wait()
            await trio.to_thread.run_sync(
                self._remove_outputs, [file.id.removeprefix(FILE_ID_PREFIX) for file in expired]
            )
            logger.info("janitor: pruned %d files stored before %s", len(expired), cutoff)

    async def _prune(self, job_id: str, done: list[str]) -> None:
        try:
            await self._journal.append(job_id, [JobPruned()])
        except IllegalTransition as refused:
            # A webhook redelivery made it owe a notification again since it was read:
            # it waits for a later sweep.
            logger.info("janitor: %s", refused)
        else:
            done.append(job_id)

    def _remove_outputs(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            self._store.remove(job_id)
