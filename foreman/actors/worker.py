"""The worker: runs jobs on the backend one after another, and records what happened.

It keeps the backend fed: while one job runs, the next one the scheduler
gives it (same model only, see :mod:`foreman.actors.scheduler`) is already
sent and waits in the backend's own queue, so the GPU goes straight from one
to the next (ADR-0026). A job *starts* when the one before it has ended:
``JobStarted`` is recorded then, concurrently with the call (not before it),
and its ``job_timeout`` begins then.

For each job: ``JobStarted``, its answer relayed line by line to the waiting
caller (if any), then one of

- ``JobSucceeded`` with the final response, naming the outputs it makes
  (:mod:`foreman.artifacts`);
- ``JobFailed`` with the backend's status and message, when the backend
  answered with an error (final: retrying would get the same answer);
- ``JobAttemptFailed`` and ``JobRequeued(retry)`` when the backend could not
  be reached: the job goes back to the queue after an exponential backoff,
  until ``max_attempts``; then ``JobAttemptFailed`` and ``JobFailed``;
- ``JobCancelled`` when a cancel for the job reaches it through the
  scheduler (the caller hung up), or the caller stopped reading its answer:
  ``client_disconnected`` when it has gone, ``client_stalled`` when it could
  not take a line for ``stream_stall`` seconds (FOREMAN_STREAM_STALL; the GPU
  is not held for a caller that does not read). A job cancelled while still
  waiting behind another never started.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio
from pydantic import ValidationError

from foreman.actors._reply import Reply
from foreman.actors.journal import JournalClient
from foreman.artifacts import output_refs
from foreman.backend import Backend, BackendError, BackendLost, BackendUnreachable
from foreman.events.types import (
    Event,
    JobAttemptFailed,
    JobCancelled,
    JobFailed,
    JobRequeued,
    JobStarted,
    JobSucceeded,
    RecordedEvent,
)
from foreman.scheduling import QueuedJob

OUTCOME_WAIT = 0.005
"""Seconds the end of a job whose caller has its whole answer may wait to share a
commit: one user or script calling back to back then costs one commit a call, the
previous call's end going with the next call's submission (ADR-0050)."""


@dataclass(frozen=True, slots=True)
class AnswerLine:
    """One NDJSON line of the backend's answer, for the job's waiting caller."""

    data: bytes


@dataclass(frozen=True, slots=True)
class AnswerError:
    """The job failed: before its first line, the caller answers with this status;
    after it, the stream ends with Ollama's ``{"error": ...}`` line."""

    status: int
    message: str


Answer = AnswerLine | AnswerError
"""What a waiting caller receives on its job's answer channel, which closes when the
job has ended."""


@dataclass(frozen=True, slots=True)
class Work:
    """A job to run, as the scheduler hands it to a worker."""

    job: QueuedJob
    kind: str
    body: bytes
    """The backend request body (JSON), as bytes: a queued job costs little memory."""
    attempts: int
    """Attempts made so far."""
    answers: trio.MemorySendChannel[Answer] | None = None
    """Where a synchronous caller waits for the answer; None for async jobs."""
    spared: int = 0
    """Attempts lost to a host going down, which do not count against max_attempts."""
    logged: Reply[list[RecordedEvent]] | None = None
    """The commit of its ``JobSubmitted`` when it was sent before that was committed
    (ADR-0048): its caller is answered, and its start recorded, only once it is."""
    start_logged: bool = False
    """Its ``JobStarted`` is committed with its ``JobSubmitted``: it was sent at once to
    a worker with nothing at the backend."""

    def again(self, attempts: int, spared: int) -> Work:
        """The job as it queues again after a failed attempt: committed long since."""
        return dataclasses.replace(
            self, attempts=attempts, spared=spared, logged=None, start_logged=False
        )

    async def not_logged(self) -> NotLogged | None:
        """None once its ``JobSubmitted`` is committed (at once when that was before
        it was sent); the refusal when the log refused it."""
        if self.logged is not None:
            try:
                await self.logged.wait()
            except Exception as error:
                return NotLogged(f"the job could not be recorded: {error}")
        return None


class NotLogged(Exception):
    """A job sent before its ``JobSubmitted`` was committed, which the log refused: it
    is not a job, and nothing more of it is recorded."""


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop this job's backend call (the worker gets these on its stop channel)."""

    job_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Took:
    """What a call took at the backend, as Ollama reports it in its answer."""

    run: float
    """Seconds evaluating the prompt and generating."""
    load: float | None
    """Seconds loading the model; None when it was loaded already."""

    @classmethod
    def of(cls, answer: object) -> Took | None:
        """From an answer's ``*_duration`` fields (nanoseconds), when it has them."""
        if not isinstance(answer, dict):
            return None
        evaluation, prompt, load = (
            answer.get(name) for name in ("eval_duration", "prompt_eval_duration", "load_duration")
        )
        if not isinstance(evaluation, int):
            return None
        run = (evaluation + (prompt if isinstance(prompt, int) else 0)) / 1e9
        return cls(run, load / 1e9 if isinstance(load, int) and load > 0 else None)


class JobSource(Protocol):
    """Where a worker gets its jobs: the scheduler's client
    (:class:`~foreman.actors.scheduler.SchedulerClient`)."""

    async def next_job(self, host: str, stops: trio.MemorySendChannel[Stop]) -> Work:
        """The next job for a worker of ``host``; stops for it come on ``stops``."""
        ...

    async def done(self, job_id: str, took: Took | None = None) -> None:
        """The job's backend call ended: it left the GPU, after ``took`` (if known)."""
        ...

    async def retry(self, work: Work, delay: float) -> None:
        """Queue the job again, to run no sooner than ``delay`` seconds from now."""
        ...

    async def host_down(self, host: str, reason: str, *, model: str | None = None) -> bool:
        """``host`` stopped answering; True when another host that is up can run
        ``model``."""
        ...


UNREACHABLE_STATUS = 503
"""What a synchronous caller gets when every attempt found the backend unreachable."""
UNSTORABLE_STATUS = 502
"""What a synchronous caller gets when the backend's answer cannot be recorded."""
UNLOGGED_STATUS = 500
"""What a synchronous caller gets when its job's ``JobSubmitted`` was refused."""


FIRST_RETRY = 0.5
LONGEST_RETRY = 30.0


def exponential_backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt n: 0.5, 1, 2, 4, ... up to 30."""
    return min(LONGEST_RETRY, FIRST_RETRY * 2.0 ** (attempt - 1))


class Worker:
    def __init__(
        self,
        backend: Backend,
        journal: JournalClient,
        scheduler: JobSource,
        *,
        host: str = "default",
        max_attempts: int,
        backoff: Callable[[int], float] = exponential_backoff,
        job_timeout: float | None = None,
        stream_stall: float | None = None,
    ) -> None:
        self.host = host
        """The name of the backend host it runs jobs on (one worker per slot)."""
        self._backend = backend
        self._journal = journal
        self._scheduler = scheduler
        self.max_attempts = max_attempts
        self._backoff = backoff
        self.job_timeout = job_timeout
        """Seconds one attempt may take once started; None: no limit."""
        self.stream_stall = stream_stall
        """Seconds a caller may take to accept one line of its answer; None: no limit."""
        self._draining = trio.Event()
        self._waiting: trio.CancelScope | None = None
        self._calls: dict[str, _Call] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run jobs until :meth:`drain` is called and the jobs at the backend are done."""
        stops_send, stops = trio.open_memory_channel[Stop](16)
        async with (
            trio.open_nursery() as finishing,
            stops_send,
            stops,
            trio.open_nursery() as calls,
        ):
            calls.start_soon(self._route, stops)
            task_status.started()
            last: trio.Event | None = None  # set when the newest call has ended
            while (work := await self._next(stops_send)) is not None:
                ended = trio.Event()
                calls.start_soon(self._attempt, work, last, ended, finishing)
                before, last = last, ended
                if before is not None:  # one job at the backend and one behind it
                    await before.wait()
            if last is not None:
                await last.wait()
            calls.cancel_scope.cancel()

    def drain(self) -> None:
        """Take no further job; the ones at the backend may finish (shutdown's grace)."""
        self._draining.set()
        if self._waiting is not None:
            self._waiting.cancel()

    async def _next(self, stops: trio.MemorySendChannel[Stop]) -> Work | None:
        """The next job from the scheduler; None once draining."""
        if self._draining.is_set():
            return None
        with trio.CancelScope() as self._waiting:
            # No job while the log cannot record it: it would run with its outcome
            # held in memory only (ADR-0041). The ones already at the backend finish.
            await self._journal.status.writable()
            return await self._scheduler.next_job(self.host, stops)
        return None

    async def _route(self, stops: trio.MemoryReceiveChannel[Stop]) -> None:
        """Hand each stop to its job's call; one for a job already gone is stale."""
        async for stop in stops:
            call = self._calls.get(stop.job_id)
            if call is not None:
                call.stop(stop)

    async def _attempt(
        self,
        work: Work,
        before: trio.Event | None,
        ended: trio.Event,
        finishing: trio.Nursery,
    ) -> None:
        """Send the job to the backend now; it starts when ``before`` is set.
        Its outcome is recorded in the background: the next job is on its way."""
        job_id = work.job.job_id
        call = self._calls[job_id] = _Call(work)
        try:
            if work.start_logged or (work.job.batch and (before is None or before.is_set())):
                # started already, or a batch's line sent to an idle GPU (ADR-0037)
                await self._start(call)
                outcome = await call.run(self._backend, self.stream_stall)
            else:
                async with trio.open_nursery() as turn:
                    call.turn = turn.cancel_scope
                    turn.start_soon(self._take_turn, call, before)
                    outcome = await call.run(self._backend, self.stream_stall)
                    if isinstance(outcome, Stop) and not call.started:
                        turn.cancel_scope.cancel()  # cancelled while waiting: never started
            outcome = call.stopped_before_start or outcome
        except BaseException:
            if call.started:  # cancelled (shutdown after its grace): back to the queue
                with trio.CancelScope(shield=True):
                    await self._journal.append(job_id, [JobRequeued(reason="interrupted")])
            raise
        finally:
            del self._calls[job_id]
        # Before the call is said to have ended: once it has, a draining worker cancels
        # what is left of its attempt, and this must be no checkpoint away from handing
        # its outcome over to be recorded.
        outcome = await work.not_logged() or outcome  # nothing is recorded of a non-job
        await self._scheduler.done(job_id, Took.of(outcome))
        ended.set()
        await self._record(work, outcome, finishing)

    async def _record(self, work: Work, outcome: Outcome, finishing: trio.Nursery) -> None:
        """Record how the attempt went, in the background; a job the log refused
        (:class:`NotLogged`) is not a job: only its caller is told."""
        attempt = work.attempts + 1
        events: list[Event]
        failed: AnswerError | None = None
        if await self._elsewhere(work, outcome):  # the host went down; another runs it
            failure = JobAttemptFailed(attempt=attempt, error=str(outcome), retryable=True)
            spared = work.again(attempt, work.spared + 1)
            events = [failure, JobRequeued(reason="backend_down")]
            finishing.start_soon(self._retry, spared, events, 0.0)
            return
        if isinstance(outcome, BackendUnreachable):
            failure = JobAttemptFailed(attempt=attempt, error=str(outcome), retryable=True)
            if attempt - work.spared < self.max_attempts:
                retried = work.again(attempt, work.spared)
                events = [failure, JobRequeued(reason="retry")]
                finishing.start_soon(self._retry, retried, events, self._backoff(attempt))
                return
            final = f"the backend was unreachable {attempt} times: {outcome}"
            events = [failure, JobFailed(error=final)]
            failed = AnswerError(UNREACHABLE_STATUS, final)
        elif isinstance(outcome, BackendError):
            events = [JobFailed(error=outcome.message, status=outcome.status)]
            failed = AnswerError(outcome.status or 500, outcome.message)
        elif isinstance(outcome, Stop):
            events = [JobCancelled(reason=outcome.reason)]
        elif isinstance(outcome, NotLogged):
            await self._let_go(work, AnswerError(UNLOGGED_STATUS, str(outcome)))
            return
        else:
            finishing.start_soon(self._succeed, work, outcome)
            return
        finishing.start_soon(self._finish, work, events, failed)

    async def _elsewhere(self, work: Work, outcome: Outcome) -> bool:
        """Whether a call failed because its host went away (unreachable, or its
        connection broke off), which the scheduler then marks down, and another host
        that is up can run the job: then it runs there, the attempt not counted (up to
        ``max_attempts`` such attempts: hosts that keep dropping it cannot bounce a job
        for ever). A waiting caller whose answer had begun cannot be given another:
        its job fails."""
        lost = isinstance(outcome, BackendLost)
        if not (isinstance(outcome, BackendUnreachable) or lost):
            return False
        model = work.job.model
        elsewhere = await self._scheduler.host_down(self.host, str(outcome), model=model)
        spare = work.spared < self.max_attempts and not (lost and work.answers is not None)
        return elsewhere and spare

    async def _take_turn(self, call: _Call, before: trio.Event | None) -> None:
        """Once the job ahead has ended, this one has the GPU."""
        if before is not None:
            await before.wait()
        await self._start(call)

    async def _start(self, call: _Call) -> None:
        """The job has the GPU: it has started, and that is recorded (after its
        ``JobSubmitted``: one that was never recorded never started)."""
        call.start(self.job_timeout)
        if call.work.start_logged:
            return
        started = JobStarted(attempt=call.work.attempts + 1, backend=self.host)
        job = call.work.job
        with trio.CancelScope(shield=True):  # the job has started: that is recorded
            if await call.work.not_logged() is not None:
                return  # never a job: its caller is told so
            if job.batch:  # handed over only: it may wait to share a commit (ADR-0038)
                await self._journal.enqueue(job.job_id, [started], lazy=True)
            else:
                await self._journal.append(job.job_id, [started])

    async def _succeed(self, work: Work, result: dict[str, Any]) -> None:
        """Record the success, naming the outputs its response makes (ADR-0048; a
        batch's line has none of its own). An answer the log could not read back
        (ADR-0032) fails the job instead, saying so; the caller, if any, has its
        answer already."""
        try:
            succeeded = JobSucceeded(result=result)
        except ValidationError as error:
            why = f"the backend's answer cannot be stored: {error.errors()[0]['msg']}"
            await self._finish(work, [JobFailed(error=why)], AnswerError(UNSTORABLE_STATUS, why))
            return
        if not work.job.batch:
            refs = output_refs(work.kind, result)
            succeeded = succeeded.model_copy(update={"artifacts": refs})
        await self._finish(work, [succeeded])

    async def _finish(
        self, work: Work, events: list[Event], failed: AnswerError | None = None
    ) -> None:
        """Record the job's end, then tell its caller (if still there) and let it go.
        A caller with nothing more to hear (its answer whole, or it left) is let go as
        soon as the end is handed to the journal, where it may wait
        :data:`OUTCOME_WAIT` to share a commit with whatever comes next, such as that
        caller's next call (ADR-0050). Shielded: an outcome already produced is
        recorded even at shutdown."""
        job_id = work.job.job_id
        with trio.CancelScope(shield=True):
            if failed is None and work.answers is not None:
                end = await self._journal.enqueue(job_id, events, lazy=True, within=OUTCOME_WAIT)
                await self._let_go(work, None)
                await end.wait()
                return
            await self._journal.append(job_id, events, lazy=work.job.batch)
        await self._let_go(work, failed)

    @staticmethod
    async def _let_go(work: Work, failed: AnswerError | None) -> None:
        """Tell the job's caller (if still there) how it failed, if it did, and end its
        answer."""
        if work.answers is None:
            return
        async with work.answers:
            if failed is not None:
                with contextlib.suppress(trio.BrokenResourceError):
                    await work.answers.send(failed)

    async def _retry(self, work: Work, events: list[Event], delay: float) -> None:
        """Record the failed attempt; the job queues again, to run after ``delay``."""
        with trio.CancelScope(shield=True):
            await self._journal.append(work.job.job_id, events)
        await self._scheduler.retry(work, delay)


Outcome = dict[str, Any] | BackendUnreachable | BackendError | Stop | NotLogged


class _Call:
    """One attempt's backend call: stopped by a cancel, timed from its start."""

    def __init__(self, work: Work) -> None:
        self.work = work
        self.started = False
        self._stopped: Stop | None = None
        self._answered = False
        self.turn: trio.CancelScope | None = None
        """The wait for the GPU: a job cancelled before it ends never starts."""
        self._scope = trio.CancelScope()
        self._limit = trio.CancelScope()  # the job timeout, armed by start()
        self._timeout: float | None = None

    def start(self, timeout: float | None) -> None:
        self.started = True
        if timeout is not None:
            self._timeout = timeout
            self._limit.deadline = trio.current_time() + timeout

    def stop(self, stop: Stop) -> None:
        """Stop the call. One not started yet never starts, even when its answer has
        already come while it waited behind the running job (ADR-0026)."""
        self._stopped = stop
        self._scope.cancel()
        if self._answered and not self.started and self.turn is not None:
            self.turn.cancel()

    @property
    def stopped_before_start(self) -> Stop | None:
        return None if self.started else self._stopped

    async def run(self, backend: Backend, stream_stall: float | None) -> Outcome:
        """The call's outcome. Over the timeout it is BackendUnreachable (retryable)
        while nothing was answered yet, and a BackendError once the answer began."""
        relay = _Relay(self.work, stream_stall)
        try:
            outcome = await self._call(backend, relay)
        finally:
            self._answered = True
        # A stop that came as the answer ended (too late to cancel the call) still
        # means a call that had not started never does.
        return self.stopped_before_start or outcome

    async def _call(self, backend: Backend, relay: _Relay) -> Outcome:
        job_id = self.work.job.job_id
        with self._scope:
            with self._limit:
                try:
                    return await backend.generate(self.work.kind, self.work.body, relay)
                except (BackendUnreachable, BackendError) as error:
                    return error
                except trio.BrokenResourceError:  # the caller stopped listening
                    return Stop(job_id, "client_disconnected")
                except CallerStalled:
                    return Stop(job_id, "client_stalled")
                except NotLogged as error:
                    return error
            message = f"no answer within the job timeout ({self._timeout} s)"
            return BackendError(message, None) if relay.began else BackendUnreachable(message)
        assert self._stopped is not None  # only stop() cancels the scope
        return self._stopped


class CallerStalled(Exception):
    """The caller took no line of its answer for the whole stall limit."""


class _Relay:
    """Sends each line to the caller, if there is one, once the job's ``JobSubmitted``
    is committed, and remembers that it began; raises BrokenResourceError once the
    caller has gone, CallerStalled when a line waited for it over ``stall`` seconds,
    and NotLogged when the log refused the job."""

    def __init__(self, work: Work, stall: float | None) -> None:
        self._work = work
        self._answers = work.answers
        self._stall = math.inf if stall is None else stall
        self.began = False

    async def __call__(self, line: bytes) -> None:
        if not self.began and (refused := await self._work.not_logged()) is not None:
            raise refused
        self.began = True
        if self._answers is None:
            return
        answer = AnswerLine(line)
        with contextlib.suppress(trio.WouldBlock):
            self._answers.send_nowait(answer)  # a caller keeping up: no turn, no timer
            return
        with trio.move_on_after(self._stall):
            await self._answers.send(answer)
            return
        raise CallerStalled
