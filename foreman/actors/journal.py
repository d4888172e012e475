"""The journal: the event log's only writer.

Every other actor appends through a :class:`JournalClient`, which sends the
append over the journal's memory channel and waits for the committed events
(or the reason they were refused) in the :class:`~foreman.actors._reply.Reply`
that travels with the request. The journal
takes whatever appends are waiting, up to ``max_batch`` events, and commits
them in one transaction and one fsync (group commit): the more writers, the
bigger the batches, so throughput grows with load instead of collapsing.

A *lazy* append (a batch's line starting or ending, ADR-0038; an answered
caller's job ending, ADR-0050, within a few milliseconds) may wait up to
``linger`` seconds for company: the journal holds a commit made only of lazy
appends until then, or until an append that is not lazy rings its bell, and
commits them all together. Losing one in a crash only means a job runs again;
lazy appends do not even wake the journal.

A commit the storage refuses (the disk is full, the file cannot be written:
:mod:`foreman.events.faults`) does not stop the journal: it says so in its
:class:`JournalStatus`, waits, and tries the same appends again, 1 s later, then
twice as long each time up to 10 s, until they are written, in order. Their
writers wait meanwhile, so nothing acknowledged is lost, and the HTTP routes
refuse new work while the status shows the fault (ADR-0041). Any other failure
stops the journal, and Foreman with it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from foreman.actors._reply import Reply, deliver
from foreman.dbthread import DedicatedThread
from foreman.events.faults import storage_fault
from foreman.events.log import Append, AppendResult, Durability, EventLog, utc_now
from foreman.events.store import open_log
from foreman.events.types import Event, RecordedEvent
from foreman.events.writer_lock import sole_writer

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 4096
"""Events per transaction at most: bounds a commit's latency and the WAL's growth."""
DEFAULT_LINGER = 0.25
"""Seconds a commit of lazy appends only may wait for more."""
FIRST_RETRY = 1.0
LONGEST_RETRY = 10.0


def storage_retries() -> Iterator[float]:
    """Seconds to wait before each new attempt at a write the storage refused:
    1, 2, 4, 8, then 10 s for ever. Short enough that work resumes within seconds
    of the disk having room, long enough that a fault costs no CPU to speak of."""
    delay = FIRST_RETRY
    while True:
        yield delay
        delay = min(delay * 2, LONGEST_RETRY)


class JournalFailed(RuntimeError):
    """The journal stopped (a failure that is not the storage's, or shutdown) before
    committing the append."""


@dataclass(frozen=True, slots=True)
class StorageFault:
    """Why the log cannot be written now."""

    reason: str
    """What failed, for a person to act on (:func:`~foreman.events.faults.storage_fault`)."""
    since: str
    """When the first commit failed, as the log writes timestamps."""
    attempts: int
    """Commits failed since then."""
    retry_at: float
    """Trio time of the next attempt."""


class JournalStatus:
    """Whether the log can be written, as the journal last found it: anyone may read
    it (the HTTP routes refuse new work while it cannot be, the workers take no
    job); only the journal changes it."""

    def __init__(self) -> None:
        self._fault: StorageFault | None = None
        self._changed = trio.Event()

    @property
    def fault(self) -> StorageFault | None:
        """Why the last commit failed, until one succeeds; None while all is well."""
        return self._fault

    async def changed(self) -> None:
        """Return at the next change: a commit failed (again), or one went through."""
        await self._changed.wait()

    async def writable(self) -> None:
        """Return once the log can be written (at once while it can)."""
        while self._fault is not None:
            await self._changed.wait()

    def _set(self, fault: StorageFault | None) -> None:
        self._fault = fault
        self._changed.set()
        self._changed = trio.Event()


@dataclass(frozen=True, slots=True)
class _Request:
    append: Append
    reply: Reply[list[RecordedEvent]]
    lazy: bool
    within: float = math.inf
    """A lazy append's longest wait for company, if shorter than the journal's linger."""


@dataclass(frozen=True, slots=True)
class _Subscribe:
    events: trio.MemorySendChannel[list[RecordedEvent]]
    reply: Reply[None]


_Message = _Request | _Subscribe


class _Bell:
    """Wakes the journal from a linger: rung by every message but a lazy append."""

    def __init__(self) -> None:
        self._rung = trio.Event()

    def ring(self) -> None:
        self._rung.set()

    def reset(self) -> None:
        if self._rung.is_set():
            self._rung = trio.Event()

    async def wait(self) -> None:
        await self._rung.wait()


class JournalClient:
    """An actor's handle on the journal; cheap to copy with :meth:`clone`."""

    def __init__(
        self, requests: trio.MemorySendChannel[_Message], bell: _Bell, status: JournalStatus
    ) -> None:
        self._requests = requests
        self._bell = bell
        self.status = status
        """Whether the log can be written now."""

    def clone(self) -> JournalClient:
        return JournalClient(self._requests.clone(), self._bell, self.status)

    async def aclose(self) -> None:
        await self._requests.aclose()
        self._bell.ring()

    async def __aenter__(self) -> JournalClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def append(
        self,
        stream: str,
        events: Sequence[Event],
        expected_version: int | None = None,
        *,
        lazy: bool = False,
        within: float = math.inf,
    ) -> list[RecordedEvent]:
        """Append and wait until the events are durable (while the storage refuses
        them, until it takes them); raises when they are refused
        (:class:`~foreman.events.log.ConcurrencyError`,
        :class:`~foreman.events.projection.IllegalTransition`)."""
        committed = await self.enqueue(stream, events, expected_version, lazy=lazy, within=within)
        return await committed.wait()

    async def enqueue(
        self,
        stream: str,
        events: Sequence[Event],
        expected_version: int | None = None,
        *,
        lazy: bool = False,
        within: float = math.inf,
    ) -> Reply[list[RecordedEvent]]:
        """Hand an append to the journal without waiting for its commit: appends are
        committed in the order they are handed over. The reply says how it went.

        ``lazy``: the commit may wait up to the journal's linger (or ``within``
        seconds, if sooner) for other appends to share it; for events whose loss in a
        crash only means work done again."""
        request = _Request(Append(stream, events, expected_version), Reply(), lazy, within)
        try:  # one that may wait less than the linger rings: a longer linger has company
            await self._send(request, lazy=lazy and within >= math.inf)
        except trio.BrokenResourceError:
            raise JournalFailed("the journal has stopped: nothing was appended") from None
        return request.reply

    async def subscribe(self, buffer: int = 256) -> trio.MemoryReceiveChannel[list[RecordedEvent]]:
        """Every event committed from now on, a commit's events at a time, in order.

        A subscriber that falls ``buffer`` commits behind holds the journal up
        (backpressure); closing the channel ends the subscription.
        """
        send, receive = trio.open_memory_channel[list[RecordedEvent]](buffer)
        request = _Subscribe(send, Reply())
        try:
            await self._send(request)
        except trio.BrokenResourceError:
            raise JournalFailed("the journal has stopped") from None
        await request.reply.wait()
        return receive

    async def _send(self, message: _Message, *, lazy: bool = False) -> None:
        """Hand ``message`` over; ring unless it is a lazy append that fits in."""
        if lazy:
            with contextlib.suppress(trio.WouldBlock):
                self._requests.send_nowait(message)
                return
        self._bell.ring()
        await deliver(self._requests, message)


class Journal:
    def __init__(
        self,
        path: str | Path,
        *,
        durability: Durability = Durability.FULL,
        max_batch: int = DEFAULT_MAX_BATCH,
        linger: float = DEFAULT_LINGER,
        buffer: int = 1024,
        observe: Callable[[float, int], None] | None = None,
    ) -> None:
        self.path = path
        self._observe = observe
        """Told each commit's seconds and events (the metrics' journal histograms)."""
        self.durability = durability
        self.max_batch = max_batch
        self.linger = linger
        self._buffer = buffer
        self._status = JournalStatus()

    async def run(
        self, *, task_status: trio.TaskStatus[JournalClient] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Open the log (catching its projections up), report a client, then commit
        appends until every client is closed. The log is held as its only writer
        (:func:`~foreman.events.writer_lock.sole_writer`) until then."""
        thread = DedicatedThread("foreman-journal")
        try:
            with sole_writer(self.path):
                log = await thread.run(lambda: open_log(self.path, durability=self.durability))
                try:
                    send, receive = trio.open_memory_channel[_Message](self._buffer)
                    bell = _Bell()
                    task_status.started(JournalClient(send, bell, self._status))
                    with receive:
                        try:
                            await self._commit_loop(thread, log, receive, bell)
                        finally:
                            _turn_away(receive)
                finally:
                    with trio.CancelScope(shield=True):
                        await thread.run(log.close)
        finally:
            thread.close()

    async def _commit_loop(
        self,
        thread: DedicatedThread,
        log: EventLog,
        receive: trio.MemoryReceiveChannel[_Message],
        bell: _Bell,
    ) -> None:
        subscribers: list[trio.MemorySendChannel[list[RecordedEvent]]] = []
        try:
            async for first in receive:
                batch = _Batch(self.max_batch, subscribers)
                batch.take(first)
                batch.take_waiting(receive)
                if batch.lazy:
                    await batch.linger(receive, bell, min(self.linger, batch.within))
                if batch.requests:
                    committed = await self._commit(thread, log, batch.requests)
                    if committed:
                        await _publish(committed, subscribers)
        finally:
            for subscriber in subscribers:
                subscriber.close()

    async def _commit(
        self, thread: DedicatedThread, log: EventLog, batch: list[_Request]
    ) -> list[RecordedEvent]:
        began = time.perf_counter()
        try:
            results = await self._written(thread, log, [request.append for request in batch])
        except BaseException as error:
            for request in batch:
                request.reply.put(JournalFailed(f"the append was not committed: {error!r}"))
            raise
        committed: list[RecordedEvent] = []
        for request, result in zip(batch, results, strict=True):
            request.reply.put(result)
            if isinstance(result, list):
                committed += result
        if self._observe is not None:
            self._observe(time.perf_counter() - began, len(committed))
        return committed

    async def _written(
        self, thread: DedicatedThread, log: EventLog, appends: list[Append]
    ) -> list[AppendResult]:
        """Commit ``appends``, trying again for as long as the storage refuses them;
        raises a failure that is not the storage's."""
        path, delays = Path(self.path), storage_retries()
        while True:
            try:
                results = await thread.run(log.append_many, appends)
            except Exception as error:
                reason = await thread.run(storage_fault, error, path)
                if reason is None:
                    raise
                delay = next(delays)
                self._faulted(reason, trio.current_time() + delay)
                await trio.sleep(delay)
            else:
                self._cleared()
                return results

    def _faulted(self, reason: str, retry_at: float) -> None:
        """Say why the log cannot be written; one warning when that begins."""
        fault = self._status.fault
        if fault is None:
            logger.warning(
                "journal: the event log cannot be written, so Foreman takes no new work "
                "until it can (reads go on; trying again, at most every %g s): %s",
                LONGEST_RETRY,
                reason,
            )
            fault = StorageFault(reason, utc_now(), 0, retry_at)
        self._status._set(StorageFault(reason, fault.since, fault.attempts + 1, retry_at))

    def _cleared(self) -> None:
        fault = self._status.fault
        if fault is not None:
            logger.info(
                "journal: the event log can be written again after %d failed attempts "
                "since %s; taking work again",
                fault.attempts,
                fault.since,
            )
            self._status._set(None)


class _Batch:
    """The appends of one commit, up to ``max_batch`` events; subscriptions that
    arrive meanwhile join at once."""

    def __init__(
        self, max_batch: int, subscribers: list[trio.MemorySendChannel[list[RecordedEvent]]]
    ) -> None:
        self.requests: list[_Request] = []
        self._size = 0
        self._eager = False  # an append that is not lazy is in it
        self.within = math.inf
        """The shortest wait for company its lazy appends allow."""
        self._max = max_batch
        self._subscribers = subscribers

    @property
    def full(self) -> bool:
        return self._size >= self._max

    @property
    def lazy(self) -> bool:
        """Only lazy appends so far, and room for more: it may wait for company."""
        return bool(self.requests) and not (self._eager or self.full)

    def take(self, message: _Message) -> None:
        if isinstance(message, _Subscribe):
            self._subscribers.append(message.events)
            message.reply.put(None)
        else:
            self.requests.append(message)
            self._size += len(message.append.events)
            self._eager |= not message.lazy
            if message.lazy:
                self.within = min(self.within, message.within)

    def take_waiting(self, receive: trio.MemoryReceiveChannel[_Message]) -> None:
        """Whatever is waiting already, until full."""
        while not self.full:
            try:
                self.take(receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return

    async def linger(
        self, receive: trio.MemoryReceiveChannel[_Message], bell: _Bell, seconds: float
    ) -> None:
        """Wait ``seconds``, or until the bell rings, then take what has arrived."""
        bell.reset()
        try:
            with trio.move_on_after(seconds):
                await bell.wait()
        except BaseException:
            for request in self.requests:
                request.reply.put(JournalFailed("the journal stopped before committing"))
            raise
        self.take_waiting(receive)


async def _publish(
    events: list[RecordedEvent], subscribers: list[trio.MemorySendChannel[list[RecordedEvent]]]
) -> None:
    """Hand the commit to each subscriber, waiting only for one whose buffer is full:
    four subscribers yielding once each held the next commit back four turns of
    Trio's loop."""
    for subscriber in list(subscribers):
        try:
            await deliver(subscriber, events)
        except trio.BrokenResourceError:  # the subscriber closed its end
            subscribers.remove(subscriber)


def _turn_away(receive: trio.MemoryReceiveChannel[_Message]) -> None:
    """Tell the writers still queued that the journal stopped before their append."""
    while True:
        try:
            message = receive.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return
        if isinstance(message, _Subscribe):
            message.reply.put(JournalFailed("the journal has stopped"))
        else:
            message.reply.put(JournalFailed("the journal has stopped: nothing was appended"))
