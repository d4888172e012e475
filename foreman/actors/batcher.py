"""The batcher: sees each batch of the OpenAI Batch API through, from its input file
to its output files.

A batch is a stream of its own (ADR-0037). Created (``validating``), its lines
become jobs, all together, at batch priority (below every other job,
:data:`~foreman.scheduling.BATCH_PRIORITY`), and then it is ``in_progress``
(``BatchStarted``). Its request counts are its lines' jobs by state. Once none
is left to run, it is finalised: ``BatchFinalizing``, then the output and error
files are written with the artifacts (:mod:`foreman.batching.results`) and
``BatchEnded`` names them.

Cancelling withdraws the lines still queued (``JobCancelled``,
``batch_cancelled``); those at a backend finish. When the completion window
passes, the same happens with ``batch_expired``, and the batch ends
``expired`` with the lines that finished kept. Everything the batcher does is
derived again from the log when Foreman starts, so a batch resumes after a crash
at whatever step it was: lines not yet jobs are submitted, a cancel or an expiry
withdraws what recovery queued again, a finalisation is redone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import trio

from foreman.actors._reply import Reply
from foreman.actors.journal import (
    FIRST_RETRY,
    LONGEST_RETRY,
    JournalClient,
    storage_retries,
)
from foreman.actors.scheduler import SchedulerClient
from foreman.artifacts import ArtifactStore, new_file_id
from foreman.batching import lines as batch_lines
from foreman.batching.lines import Checked
from foreman.batching.results import Outcome, files
from foreman.events.batches import (
    Batch,
    batch,
    expiry,
    line_jobs,
    lines_left,
    unended_batches,
    unfinished_lines,
)
from foreman.events.files import StoredFile, stored_file
from foreman.events.log import EventLog, wall_clock
from foreman.events.queries import submission, success
from foreman.events.reader import Reader
from foreman.events.types import (
    JOB_ENDS,
    BatchCancelling,
    BatchCreated,
    BatchEnd,
    BatchEnded,
    BatchFinalizing,
    BatchProblem,
    BatchStarted,
    FilePurpose,
    FileStored,
    RecordedEvent,
    batch_stream,
    file_stream,
)
from foreman.scheduling import model_name

logger = logging.getLogger(__name__)

CHECK_EVERY = 0.5
"""Seconds between two looks at the running batches' counts, at most one per period:
many lines ending at once cost one look."""
JSONL = "application/jsonl"
RESULTS_AT_ONCE = 10_000
"""Results read in one query (SQLite takes at most 32,766 parameters)."""


class BatchNotFound(LookupError):
    pass


class CannotCancel(ValueError):
    """The batch is finalizing or has ended."""


@dataclass(frozen=True, slots=True)
class _Create:
    batch_id: str
    created: BatchCreated
    input_file: StoredFile
    reply: Reply[None]


@dataclass(frozen=True, slots=True)
class _Cancel:
    batch_id: str
    reply: Reply[None]


_Message = _Create | _Cancel


class BatcherClient:
    def __init__(self, requests: trio.MemorySendChannel[_Message]) -> None:
        self._requests = requests

    async def create(self, batch_id: str, created: BatchCreated, input_file: StoredFile) -> None:
        """Record the batch (``BatchCreated``) and start it; returns once recorded. An
        input whose lines are for another endpoint makes a ``failed`` batch."""
        reply: Reply[None] = Reply()
        await self._requests.send(_Create(batch_id, created, input_file, reply))
        await reply.wait()

    async def cancel(self, batch_id: str) -> None:
        """Cancel a batch (``BatchCancelling``); raises :class:`BatchNotFound`, or
        :class:`CannotCancel` once it is finalizing or has ended."""
        reply: Reply[None] = Reply()
        await self._requests.send(_Cancel(batch_id, reply))
        await reply.wait()


@dataclass(slots=True)
class _Run:
    """A batch not ended yet, as the batcher sees it through."""

    id: str
    endpoint: str
    input_file: StoredFile | None
    expires_at: datetime
    tenant: str | None
    """Whose batch it is: its lines and output files are the tenant's too."""
    submitting: bool = False
    cancelling: bool = False
    expired: bool = False
    finalizing: bool = False

    @property
    def end(self) -> BatchEnd:
        return "cancelled" if self.cancelling else "expired" if self.expired else "completed"


class Batcher:
    def __init__(
        self,
        journal: JournalClient,
        reader: Reader,
        scheduler: SchedulerClient,
        store: ArtifactStore,
        *,
        clock: Callable[[], datetime] = wall_clock,
        check_every: float = CHECK_EVERY,
    ) -> None:
        self._journal = journal
        self._reader = reader
        self._scheduler = scheduler
        self._store = store
        self._clock = clock
        self._check_every = check_every
        self._runs: dict[str, _Run] = {}
        self._changed = trio.Event()

    async def run(
        self, *, task_status: trio.TaskStatus[BatcherClient] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Take up the batches the log holds unended, report a client, then serve it
        until every client is closed."""
        commits = await self._journal.subscribe()
        send, inbox = trio.open_memory_channel[_Message](64)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow, commits)
            unended = await self._reader.read(unended_batches)
            for found in unended:
                await self._take_up(nursery, found)
            self._changed.set()  # a look once taken up: lines may have ended meanwhile
            logger.info("batcher: started, %d batches taken up", len(unended))
            nursery.start_soon(self._watch, nursery)
            task_status.started(BatcherClient(send))
            async with inbox:
                async for message in inbox:
                    await self._handle(nursery, message)
            nursery.cancel_scope.cancel()

    async def _take_up(self, nursery: trio.Nursery, found: Batch) -> None:
        """Carry on with a batch the log holds unended (at start)."""
        input_file = await self._reader.read(stored_file, found.input_file_id)
        expires_at = datetime.fromisoformat(found.expires_at)
        run = _Run(found.id, found.endpoint, input_file, expires_at, found.tenant)
        run.cancelling = found.status == "cancelling"
        run.expired = found.end == "expired"
        self._runs[run.id] = run
        if found.end is not None:  # it was finalizing
            run.finalizing = True
            nursery.start_soon(self._finalize, run, run.end)
        elif found.status == "validating":  # before any worker runs a line of it
            lines = await self._input_lines(run)
            if lines is None:
                await self._fail(run, "the input file is gone: it cannot be read")
                return
            run.submitting = True
            nursery.start_soon(self._submit, run, lines)
        elif run.cancelling:  # what recovery queued again must not run
            await self._withdraw(run, "batch_cancelled")

    async def _handle(self, nursery: trio.Nursery, message: _Message) -> None:
        match message:
            case _Create():
                await self._create(nursery, message)
            case _Cancel():
                await self._cancel(nursery, message)

    async def _create(self, nursery: trio.Nursery, create: _Create) -> None:
        stream = batch_stream(create.batch_id)
        try:
            (recorded,) = await self._journal.append(stream, [create.created], expected_version=0)
        except Exception as error:
            create.reply.put(error)
            return
        endpoint = create.input_file.endpoint
        if endpoint != create.created.endpoint:
            message = f"the input file's requests are for {endpoint}, not {create.created.endpoint}"
            problem = BatchProblem(code="mismatched_endpoint", message=message, param="endpoint")
            await self._journal.append(stream, [BatchEnded(status="failed", errors=(problem,))])
            create.reply.put(None)
            return
        expires_at = datetime.fromisoformat(expiry(recorded.recorded_at, create.created.window))
        run = _Run(
            create.batch_id,
            endpoint,
            create.input_file,
            expires_at,
            create.created.tenant,
            submitting=True,
        )
        self._runs[run.id] = run
        nursery.start_soon(self._submit, run)
        create.reply.put(None)

    async def _cancel(self, nursery: trio.Nursery, cancel: _Cancel) -> None:
        run = self._runs.get(cancel.batch_id)
        if run is None:
            found = await self._reader.read(batch, cancel.batch_id)
            cancel.reply.put(BatchNotFound() if found is None else CannotCancel(found.status))
            return
        if run.finalizing:
            cancel.reply.put(CannotCancel("finalizing"))
            return
        if not run.cancelling:
            await self._journal.append(batch_stream(run.id), [BatchCancelling()])
            run.cancelling = True
            nursery.start_soon(self._withdraw, run, "batch_cancelled")
        cancel.reply.put(None)

    async def _submit(self, run: _Run, lines: list[batch_lines.InputLine] | None = None) -> None:
        """Make jobs of the ``lines`` (default: the input file's) that are not jobs yet,
        then record ``BatchStarted``. A batch cancelled or expired meanwhile has the
        lines just made withdrawn."""
        if lines is None:
            lines = await self._input_lines(run)
        if lines is None:
            await self._fail(run, "the input file is gone: it cannot be read")
            return
        done = {job.batch_line for job in await self._reader.read(line_jobs, run.id)}
        todo = [line for line in lines if line.line not in done]
        jobs = [batch_lines.job_for(line, run.id, run.tenant) for line in todo]
        ids = await self._scheduler.submit_lines(jobs)
        hosts = await self._scheduler.hosts()
        nowhere = [
            job_id
            for job_id, job in zip(ids, jobs, strict=True)
            if not any(host.can_run(model_name(job.model)) for host in hosts)
        ]
        if nowhere:
            await self._scheduler.withdraw(nowhere, "model_not_found")
        run.submitting = False
        if run.cancelling or run.expired:
            await self._withdraw(run, "batch_cancelled" if run.cancelling else "batch_expired")
        else:
            await self._journal.append(batch_stream(run.id), [BatchStarted()])
        self._changed.set()

    async def _withdraw(self, run: _Run, reason: str) -> None:
        """Cancel the batch's lines still queued; the running ones finish."""
        unfinished = await self._reader.read(unfinished_lines, run.id)
        withdrawn = await self._scheduler.withdraw(unfinished, reason)
        logger.info("batch %s: %d queued lines withdrawn (%s)", run.id, withdrawn, reason)
        self._changed.set()

    async def _follow(self, commits: trio.MemoryReceiveChannel[list[RecordedEvent]]) -> None:
        """A commit that ends jobs may have ended a batch's last line: look again (not
        while no batch runs: a sync call's end wakes nothing)."""
        async for commit in commits:
            if self._runs and any(event.type in JOB_ENDS for event in commit):
                self._changed.set()

    async def _watch(self, nursery: trio.Nursery) -> None:
        """Expire the batches whose window passed; finalise those with no line left to
        run. Looks after a change, or when the next window ends."""
        while True:
            with trio.move_on_at(self._next_expiry()):
                await self._changed.wait()
            self._changed = trio.Event()
            now = self._clock()
            for run in list(self._runs.values()):
                if run.finalizing:
                    continue
                if now >= run.expires_at and not (run.expired or run.cancelling):
                    run.expired = True  # lines still being made are withdrawn once made
                    if not run.submitting:
                        nursery.start_soon(self._withdraw, run, "batch_expired")
                    continue
                if run.submitting:
                    continue
                if not await self._reader.read(lines_left, run.id):
                    run.finalizing = True
                    nursery.start_soon(self._finalize, run, run.end)
            await trio.sleep(self._check_every)

    def _next_expiry(self) -> float:
        waiting = [r.expires_at for r in self._runs.values() if not (r.expired or r.cancelling)]
        if not waiting:
            return float("inf")
        return trio.current_time() + max(0.0, (min(waiting) - self._clock()).total_seconds())

    async def _finalize(self, run: _Run, end: BatchEnd) -> None:
        """Write the output and error files, then record how the batch ended."""
        stream = batch_stream(run.id)
        found = await self._reader.read(batch, run.id)
        assert found is not None
        if found.end is None:
            await self._journal.append(stream, [BatchFinalizing(end=end)])
        outcomes = await self._reader.read(_outcomes, run.id)
        lines = await self._input_lines(run)
        if lines is None:  # removed behind Foreman's back: the lines that became jobs
            logger.warning("batch %s: its input file is gone; writing its jobs' lines", run.id)
            lines = await self._reader.read(_lines_of_jobs, run.id, run.endpoint)
        written = files(run.id, run.endpoint, lines, outcomes, end)
        output_id = await self._store_file(run, "output", written.output)
        error_id = await self._store_file(run, "error", written.errors)
        ended = BatchEnded(
            status=end,
            output_file_id=output_id,
            error_file_id=error_id,
            completed=written.completed,
            failed=written.failed,
        )
        await self._journal.append(stream, [ended])
        del self._runs[run.id]
        logger.info(
            "batch %s %s: %d completed, %d failed", run.id, end, written.completed, written.failed
        )

    async def _store_file(self, run: _Run, which: str, data: bytes) -> str | None:
        """Store one of a batch's files (none when it would be empty); its id. While the
        disk refuses it (full, read-only), try again and again: the batch stays
        ``finalizing`` meanwhile, and its results are in the log, so none is lost
        (ADR-0041)."""
        if not data:
            return None
        name = f"{run.id}_{which}.jsonl"
        delays = storage_retries()
        while True:
            try:
                return await store_file(
                    self._journal,
                    self._store,
                    data,
                    filename=name,
                    purpose="batch_output",
                    tenant=run.tenant,
                )
            except OSError as error:
                delay = next(delays)
                if delay == FIRST_RETRY:
                    logger.warning(
                        "batch %s: its %s file cannot be stored (%s); it stays finalizing, "
                        "trying again, at most every %g s",
                        run.id,
                        which,
                        error.strerror or error,
                        LONGEST_RETRY,
                    )
                await trio.sleep(delay)

    async def _input_lines(self, run: _Run) -> list[batch_lines.InputLine] | None:
        """The lines of the batch's input file; None when the file is gone."""
        stored = run.input_file
        if stored is None:
            return None
        path = self._store.file_path(stored.id, stored.sha256)
        try:
            data = await trio.to_thread.run_sync(path.read_bytes)
        except OSError:
            return None
        return batch_lines.read(data)

    async def _fail(self, run: _Run, why: str) -> None:
        """End a batch that cannot run (``failed``), its lines made so far withdrawn."""
        await self._scheduler.withdraw(
            await self._reader.read(unfinished_lines, run.id), "batch_failed"
        )
        problem = BatchProblem(code="missing_input_file", message=why, param="input_file_id")
        await self._journal.append(
            batch_stream(run.id), [BatchEnded(status="failed", errors=(problem,))]
        )
        del self._runs[run.id]
        logger.warning("batch %s failed: %s", run.id, why)


async def store_file(
    journal: JournalClient,
    store: ArtifactStore,
    data: bytes,
    *,
    filename: str,
    purpose: FilePurpose,
    tenant: str | None,
    checked: Checked | None = None,
) -> str:
    """Keep ``data`` as a file: its bytes with the artifacts, then ``FileStored`` (a batch
    input's ``checked`` lines and endpoint with it). Its id. Raises ValidationError for
    a name the log cannot hold."""
    file_id = new_file_id()
    ref = await trio.to_thread.run_sync(store.put_file, file_id, "file.jsonl", JSONL, data)
    stored = FileStored(
        filename=filename,
        purpose=purpose,
        bytes=ref.size,
        sha256=ref.sha256,
        requests=checked.requests if checked else None,
        endpoint=checked.endpoint if checked else None,
        tenant=tenant,
    )
    await journal.append(file_stream(file_id), [stored], expected_version=0)
    return file_id


def _outcomes(log: EventLog, batch_id: str) -> dict[int, Outcome]:
    """How each of the batch's lines that became a job ended, by line."""
    jobs = line_jobs(log, batch_id)
    seqs = [job.result_seq for job in jobs if job.result_seq is not None]
    results = {}
    for start in range(0, len(seqs), RESULTS_AT_ONCE):
        for recorded in log.events_at(seqs[start : start + RESULTS_AT_ONCE]):
            succeeded = success(recorded)
            results[recorded.seq] = succeeded.result if succeeded else None
    return {
        job.batch_line or 0: Outcome(
            job.id,
            job.state,
            job.finished_at,
            results.get(job.result_seq) if job.result_seq is not None else None,
            (job.error.message, job.error.status) if job.error is not None else None,
            job.cancel_reason,
        )
        for job in jobs
    }


def _lines_of_jobs(log: EventLog, batch_id: str, endpoint: str) -> list[batch_lines.InputLine]:
    """The lines of a batch that became jobs, as their ``JobSubmitted`` tell them."""
    lines = []
    for job in line_jobs(log, batch_id):
        submitted = submission(log, job.id)
        if submitted.batch is not None:
            line = submitted.batch
            body = {"model": submitted.model}
            lines.append(batch_lines.InputLine(line.line, line.custom_id, endpoint, body))
    return lines
