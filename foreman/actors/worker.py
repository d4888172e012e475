"""The worker: runs one job at a time on the backend, and records what happened.

For each job the scheduler hands it: ``JobStarted``, then the backend call,
its answer relayed line by line to the waiting caller (if any), then one of

- ``JobSucceeded`` with the final response;
- ``JobFailed`` with the backend's status and message, when the backend
  answered with an error (final: retrying would get the same answer);
- ``JobAttemptFailed`` and ``JobRequeued(retry)`` when the backend could not
  be reached: the job goes back to the queue after an exponential backoff,
  until ``max_attempts``; then ``JobAttemptFailed`` and ``JobFailed``;
- ``JobCancelled`` when a cancel for the job reaches it through the
  scheduler (the caller hung up), or the caller stopped reading its answer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import trio

from foreman.actors.journal import JournalClient
from foreman.actors.reply import Reply
from foreman.actors.scheduler import Cancel, Failed, Line, Message, Output, Ready, Work
from foreman.events.types import (
    Event,
    JobAttemptFailed,
    JobCancelled,
    JobFailed,
    JobRequeued,
    JobStarted,
    JobSucceeded,
)
from foreman.upstream import BackendError, Unavailable, Upstream

UNAVAILABLE_STATUS = 503
"""What a synchronous caller gets when every attempt found the backend unreachable."""


FIRST_RETRY = 0.5
LONGEST_RETRY = 30.0


def exponential_backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt n: 0.5, 1, 2, 4, ... up to 30."""
    return min(LONGEST_RETRY, FIRST_RETRY * 2.0 ** (attempt - 1))


class Worker:
    def __init__(
        self,
        upstream: Upstream,
        journal: JournalClient,
        scheduler: trio.MemorySendChannel[Message],
        *,
        max_attempts: int,
        backoff: Callable[[int], float] = exponential_backoff,
        job_timeout: float | None = None,
        loaded: str | None = None,
    ) -> None:
        self._upstream = upstream
        self._journal = journal
        self._scheduler = scheduler
        self.max_attempts = max_attempts
        self._backoff = backoff
        self.job_timeout = job_timeout
        """Seconds one attempt may take; None: no limit."""
        self.loaded = loaded
        """The model key the backend has loaded: the last one this worker ran."""
        self._draining = trio.Event()
        self._waiting: trio.CancelScope | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run jobs until :meth:`drain` is called and the job at hand is done."""
        control_send, control = trio.open_memory_channel[Cancel](16)
        async with (
            trio.open_nursery() as finishing,
            control_send,
            control,
            trio.open_nursery() as retries,
        ):
            task_status.started()
            while not self._draining.is_set():
                reply: Reply[Work] = Reply()
                await self._scheduler.send(Ready(self.loaded, reply, control_send))
                with trio.CancelScope() as waiting:
                    self._waiting = waiting
                    work = await reply.wait()
                self._waiting = None
                if waiting.cancelled_caught:
                    break
                await self._run(work, control, retries, finishing)
            retries.cancel_scope.cancel()  # a job waiting to retry stays queued in the log

    def drain(self) -> None:
        """Take no further job; the one running may finish (shutdown's grace period)."""
        self._draining.set()
        if self._waiting is not None:
            self._waiting.cancel()

    async def _run(
        self,
        work: Work,
        control: trio.MemoryReceiveChannel[Cancel],
        retries: trio.Nursery,
        finishing: trio.Nursery,
    ) -> None:
        """Run one attempt. Its outcome is recorded in the background: the backend is
        free, so the next job is fetched meanwhile and its JobStarted shares the commit."""
        job_id = work.job.job_id
        attempt = work.attempts + 1
        await self._journal.append(
            job_id, [JobStarted(attempt=attempt, backend=self._upstream.base_url)]
        )
        self.loaded = work.job.model_key
        called = False
        try:
            outcome = await self._call(work, control)
            called = True
        finally:
            if not called:  # cancelled (shutdown after its grace): back to the queue
                with trio.CancelScope(shield=True):
                    await self._journal.append(job_id, [JobRequeued(reason="interrupted")])
        if isinstance(outcome, Unavailable):
            failure = JobAttemptFailed(attempt=attempt, error=str(outcome), retryable=True)
            if attempt < self.max_attempts:
                await self._journal.append(job_id, [failure, JobRequeued(reason="retry")])
                retried = dataclasses.replace(work, attempts=attempt)
                retries.start_soon(self._requeue_later, retried, self._backoff(attempt))
                return
            final = f"the backend was unreachable {attempt} times: {outcome}"
            finishing.start_soon(
                self._finish,
                work,
                [failure, JobFailed(error=final)],
                Failed(UNAVAILABLE_STATUS, final),
            )
        elif isinstance(outcome, BackendError):
            failed = Failed(outcome.status or 500, outcome.message)
            events: list[Event] = [JobFailed(error=outcome.message, status=outcome.status)]
            finishing.start_soon(self._finish, work, events, failed)
        elif isinstance(outcome, Cancel):
            cancelled: list[Event] = [JobCancelled(reason=outcome.reason)]
            finishing.start_soon(self._finish, work, cancelled)
        else:
            succeeded: list[Event] = [JobSucceeded(result=outcome)]
            finishing.start_soon(self._finish, work, succeeded)

    async def _call(
        self, work: Work, control: trio.MemoryReceiveChannel[Cancel]
    ) -> dict[str, Any] | Unavailable | BackendError | Cancel:
        """The backend call's outcome; a cancel for this job stops it where it is.

        An attempt over ``job_timeout`` is Unavailable (retryable) while nothing
        was answered yet, and a BackendError once the answer began."""
        cancels: list[Cancel] = []
        relay = _Relay(work.output)
        with trio.CancelScope() as call:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch, work.job.job_id, control, call, cancels)
                try:
                    with trio.fail_after(self.job_timeout or math.inf):
                        return await self._upstream.generate(work.kind, work.request, relay)
                except (Unavailable, BackendError) as error:
                    return error
                except trio.TooSlowError:
                    message = f"no answer within the job timeout ({self.job_timeout} s)"
                    return BackendError(message, None) if relay.began else Unavailable(message)
                except trio.BrokenResourceError:  # the caller stopped listening
                    return Cancel(work.job.job_id, "client_disconnected")
                finally:
                    nursery.cancel_scope.cancel()
        return cancels[0]

    async def _finish(self, work: Work, events: list[Event], failed: Failed | None = None) -> None:
        """Record the job's end, then tell its caller (if still there) and let it go.
        Shielded: an outcome already produced is recorded even at shutdown."""
        with trio.CancelScope(shield=True):
            await self._journal.append(work.job.job_id, events)
        if work.output is None:
            return
        async with work.output:
            if failed is not None:
                with contextlib.suppress(trio.BrokenResourceError):
                    await work.output.send(failed)

    async def _requeue_later(self, work: Work, delay: float) -> None:
        await trio.sleep(delay)
        await self._scheduler.send(work)


async def _watch(
    job_id: str,
    control: trio.MemoryReceiveChannel[Cancel],
    call: trio.CancelScope,
    cancels: list[Cancel],
) -> None:
    """Cancel ``call`` when a cancel for ``job_id`` comes; older ones are stale."""
    async for cancel in control:
        if cancel.job_id == job_id:
            cancels.append(cancel)
            call.cancel()
            return


class _Relay:
    """Sends each line to the caller, if there is one, and remembers that it began;
    raises BrokenResourceError once the caller has gone."""

    def __init__(self, output: trio.MemorySendChannel[Output] | None) -> None:
        self._output = output
        self.began = False

    async def __call__(self, line: bytes) -> None:
        self.began = True
        if self._output is not None:
            await self._output.send(Line(line))
