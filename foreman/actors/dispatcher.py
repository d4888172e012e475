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

A lane is in exactly one place at a time: the ready channel, the timer heap,
or a sender's hands.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
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
from foreman.webhooks import Attempt, RetryPolicy, Sender, job_as_of, pending_with_jobs, render

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
        self._lanes: dict[str, list[Delivery]] = {}
        # Unbounded, yet bounded by the lanes: a job's id is in it at most once.
        self._ready_send, self._ready = trio.open_memory_channel[str](math.inf)
        self._timers: list[tuple[float, int, str]] = []
        self._timer_order = itertools.count()
        self._timers_changed = trio.Event()
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
            nursery.start_soon(self._wake_timers)
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
            lane = self._lanes.get(delivery.job_id)
            if lane is None:
                self._lanes[delivery.job_id] = [delivery]
                self._schedule(delivery)
            else:  # behind the head, which may be on its way already
                bisect.insort(lane, delivery, lo=1, key=lambda d: d.seq)

    def _schedule(self, head: Delivery) -> None:
        """Make a lane ready now, or when its head's ``retry_at`` comes."""
        wait = 0.0
        if head.retry_at is not None:
            wait = (datetime.fromisoformat(head.retry_at) - self._clock()).total_seconds()
        if wait > 0:
            self._at(trio.current_time() + wait, head.job_id)
        else:
            self._ready_send.send_nowait(head.job_id)

    def _at(self, due: float, job_id: str) -> None:
        heapq.heappush(self._timers, (due, next(self._timer_order), job_id))
        self._timers_changed.set()

    async def _wake_timers(self) -> None:
        while True:
            self._timers_changed = trio.Event()
            with trio.move_on_at(self._timers[0][0] if self._timers else math.inf):
                await self._timers_changed.wait()
            now = trio.current_time()
            while self._timers and self._timers[0][0] <= now:
                _, _, job_id = heapq.heappop(self._timers)
                self._ready_send.send_nowait(job_id)

    async def _send_ready(self) -> None:
        async for job_id in self._ready:
            await self._attempt(job_id)

    async def _attempt(self, job_id: str) -> None:
        """Try the lane's head once, and record how it went before moving on."""
        lane = self._lanes[job_id]
        delivery = lane[0]
        record = self._jobs.pop(delivery.id, None)
        if record is None:
            record = await self._reader.read(job_as_of, job_id, delivery.seq)
        body = render(delivery, record, self.base_url)
        attempt = await self._sender.send(delivery.url, delivery.id, body)
        event, wait = self._outcome(delivery, attempt)
        recorded = await self._journal.enqueue(delivery_stream(job_id), [event])
        self._nursery.start_soon(_confirm, recorded, delivery)
        if isinstance(event, WebhookAttemptFailed):
            lane[0] = delivery._replace(attempts=event.attempt, retry_at=event.retry_at)
            self._at(trio.current_time() + wait, job_id)
            return
        if isinstance(event, WebhookAbandoned):
            logger.warning(
                "webhook %s for job %s abandoned at attempt %d: %s",
                delivery.type,
                job_id,
                event.attempt,
                event.error,
            )
        self._next(job_id)

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

    def _next(self, job_id: str) -> None:
        """The head is done: the lane goes on with its next delivery, or closes."""
        lane = self._lanes[job_id]
        lane.pop(0)
        if lane:
            self._schedule(lane[0])
        else:
            del self._lanes[job_id]


async def _confirm(recorded: Reply[list[RecordedEvent]], delivery: Delivery) -> None:
    """Wait for an outcome's commit. One the log refuses (it knows better: it is the
    truth) is logged; the delivery is not tried again until a restart reads it."""
    try:
        await recorded.wait()
    except IllegalTransition as refused:
        logger.warning("webhook delivery %s: %s", delivery.id, refused)
