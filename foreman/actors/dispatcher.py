"""The webhook dispatcher: delivers the outbox the deliveries projection keeps (ADR-0031).

It follows the journal's commits. When a commit may have made deliveries
pending, it reads them from the projection (through the Reader) and queues
each in its job's *lane*, behind that job's earlier notifications. A job's
notifications go out one at a time, in order, while ``concurrency`` senders
work different jobs' lanes at once.

Every attempt's outcome is handed to the journal before the lane moves on,
so a lane's records are committed in the order of its attempts; the lane does
not wait for the commit, so a job's next notification is not held up by the
disk. A failed attempt waits out its backoff on Trio's clock, in one timer
heap rather than a task per lane: a receiver down for an hour with thousands
of jobs costs a heap entry each. On start every pending delivery is queued
again; one that had failed waits until its ``retry_at``. A crash between an
answer and its record means the notification is sent again: delivery is at
least once, and receivers deduplicate by ``webhook-id``.

Only commits of jobs with a webhook (and redelivery requests) lead to a read:
the dispatcher keeps the set of unfinished jobs that have one.

The dispatcher's state is :class:`~foreman.webhooks.lanes.Lanes` (each job's
lane, and whether it waits for its time, is ready, or is with a sender) and what it
knows of the log (``_hooked``, ``_seen``, ``_jobs``); its tasks only move lanes
between those places. Its channels are the journal's (bounded): it follows the
commits without ever waiting, and hands each outcome over.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import cast

import trio

from foreman.actors._reply import Reply
from foreman.actors.journal import JournalClient
from foreman.events.deliveries import Delivery, makes_pending
from foreman.events.log import format_timestamp, wall_clock
from foreman.events.projection import IllegalTransition
from foreman.events.queries import JobRecord, unfinished_with_webhooks
from foreman.events.reader import Reader
from foreman.events.types import (
    Event,
    JobSubmitted,
    RecordedEvent,
    WebhookAbandoned,
    WebhookAttemptFailed,
    WebhookDelivered,
    delivery_stream,
)
from foreman.webhooks import (
    Attempt,
    Lanes,
    RetryPolicy,
    Sender,
    job_as_of,
    pending_with_jobs,
    render,
)

logger = logging.getLogger(__name__)

FINAL_EVENTS = frozenset({"JobSucceeded", "JobFailed", "JobCancelled", "JobQuarantined"})
JOBS_HELD = 256
"""Jobs read ahead for the payloads of deliveries not sent yet, at most: a delivery
beyond them reads its job when its turn comes."""


class Dispatcher:
    def __init__(
        self,
        journal: JournalClient,
        reader: Reader,
        sender: Sender,
        *,
        policy: RetryPolicy,
        concurrency: int,
        base_url: str,
        random: Callable[[], float] = random.random,
        clock: Callable[[], datetime] = wall_clock,
    ) -> None:
        self._journal = journal
        self._reader = reader
        self._sender = sender
        self.policy = policy
        self.concurrency = concurrency
        self.base_url = base_url
        self._random = random
        self._clock = clock
        """Wall-clock time, which ``retry_at`` is in (the waits themselves are Trio's)."""
        self._lanes = Lanes(self._due)
        """Each job's pending notifications, and whether each lane waits for its time,
        is ready, or is with a sender."""
        self._ready = trio.Semaphore(0)
        """As many as the ready lanes: a sender takes one to take a lane."""
        self._lanes_changed = trio.Event()
        self._jobs: dict[str, JobRecord] = {}
        """Payloads' jobs read with the deliveries that need them, until sent."""
        self._hooked: set[str] = set()
        """The unfinished jobs with a webhook, kept from the commits the dispatcher sees."""
        self._seen = 0
        """The log's head when the projection was last read for pending deliveries."""
        self._wanted = 0
        self._commits_waiting = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Queue every pending delivery, report ready, then deliver until cancelled."""
        commits = await self._journal.subscribe()
        self._hooked.update(await self._reader.read(unfinished_with_webhooks))
        await self._load()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._follow, commits)
            nursery.start_soon(self._load_on_commits)
            nursery.start_soon(self._release_on_time)
            for _ in range(self.concurrency):
                nursery.start_soon(self._send_ready)
            task_status.started()

    async def _follow(self, commits: trio.MemoryReceiveChannel[list[RecordedEvent]]) -> None:
        """Note each commit that may have made a delivery pending; never waits, so the
        journal is never held up by the dispatcher."""
        async with commits:
            async for events in commits:
                owes = [event for event in events if self._owes(event)]
                if owes and owes[-1].seq > self._seen:
                    self._wanted = max(self._wanted, owes[-1].seq)
                    self._commits_waiting.set()

    def _owes(self, event: RecordedEvent) -> bool:
        """Whether ``event`` may have made a delivery pending: an event of a job with a
        webhook, or a redelivery. Jobs without one (all of ``/api/chat``'s) cost no read."""
        if event.type == "JobSubmitted":
            if cast(JobSubmitted, event.event).state_webhook_url is None:
                return False
            self._hooked.add(event.stream)
        elif event.stream in self._hooked:
            if event.type in FINAL_EVENTS:
                self._hooked.discard(event.stream)
        elif event.type != "WebhookRedeliveryRequested":
            return False
        return makes_pending(event)

    async def _load_on_commits(self) -> None:
        while True:
            await self._commits_waiting.wait()
            self._commits_waiting = trio.Event()
            if self._wanted > self._seen:
                await self._load()

    async def _load(self) -> None:
        """Queue what became pending since the last read. A delivery is returned once:
        it became pending after ``_seen``, and the read moves ``_seen`` to its snapshot."""
        room = JOBS_HELD - len(self._jobs)
        self._seen, pending, jobs = await self._reader.read(pending_with_jobs, self._seen, room)
        self._jobs.update(jobs)
        for delivery in pending:
            self._lanes.add(delivery)
        self._release()

    def _due(self, head: Delivery) -> float:
        """When a lane whose head is ``head`` may go, on Trio's clock: at once, or when
        its ``retry_at`` (wall-clock time) comes."""
        if head.retry_at is None:
            return -math.inf
        wait = (datetime.fromisoformat(head.retry_at) - self._clock()).total_seconds()
        return trio.current_time() + wait

    def _release(self) -> None:
        """Hand the lanes whose time has come to the senders."""
        for _ in range(self._lanes.release(trio.current_time())):
            self._ready.release()
        self._lanes_changed.set()

    async def _release_on_time(self) -> None:
        """Release each waiting lane when its time comes (one timer for all of them)."""
        while True:
            self._lanes_changed = trio.Event()
            due = self._lanes.next_due
            with trio.move_on_at(math.inf if due is None else due):
                await self._lanes_changed.wait()
            self._release()

    async def _send_ready(self) -> None:
        while True:
            await self._ready.acquire()
            await self._attempt(self._lanes.take())

    async def _attempt(self, delivery: Delivery) -> None:
        """Try the lane's head once, and record how it went before moving on."""
        job_id = delivery.job_id
        record = self._jobs.pop(delivery.id, None)
        if record is None:
            record = await self._reader.read(job_as_of, job_id, delivery.seq)
        body = render(delivery, record, self.base_url)
        attempt = await self._sender.send(delivery.url, delivery.id, body)
        event, wait = self._outcome(delivery, attempt)
        recorded = await self._journal.enqueue(delivery_stream(job_id), [event])
        self._nursery.start_soon(_confirm, recorded, delivery)
        if isinstance(event, WebhookAttemptFailed):
            retried = delivery._replace(attempts=event.attempt, retry_at=event.retry_at)
            self._lanes.retry(retried, trio.current_time() + wait)
        else:
            if isinstance(event, WebhookAbandoned):
                logger.warning(
                    "webhook %s for job %s abandoned at attempt %d: %s",
                    delivery.type,
                    job_id,
                    event.attempt,
                    event.error,
                )
            self._lanes.done(job_id)
        self._release()

    def _outcome(self, delivery: Delivery, attempt: Attempt) -> tuple[Event, float]:
        """The event recording ``attempt``, and the wait before the next one."""
        number = delivery.attempts + 1
        if attempt.error is None:
            assert attempt.status is not None
            return WebhookDelivered(delivery=delivery.id, attempt=number, status=attempt.status), 0
        if not attempt.retryable or number > self.policy.max_retries:
            abandoned = WebhookAbandoned(
                delivery=delivery.id, attempt=number, error=attempt.error, status=attempt.status
            )
            return abandoned, 0
        wait = self.policy.delay(number, attempt.retry_after, self._random())
        retry_at = format_timestamp(self._clock() + timedelta(seconds=wait))
        failed = WebhookAttemptFailed(
            delivery=delivery.id,
            attempt=number,
            error=attempt.error,
            status=attempt.status,
            retry_at=retry_at,
        )
        return failed, wait


async def _confirm(recorded: Reply[list[RecordedEvent]], delivery: Delivery) -> None:
    """Wait for an outcome's commit. One the log refuses (it knows better: it is the
    truth) is logged; the delivery is not tried again until a restart reads it."""
    try:
        await recorded.wait()
    except IllegalTransition as refused:
        logger.warning("webhook delivery %s: %s", delivery.id, refused)
