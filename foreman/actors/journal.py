"""The journal: the event log's only writer.

Every other actor appends through a :class:`JournalClient`, which sends the
append over the journal's memory channel and waits for the committed events
(or the reason they were refused) in the :class:`~foreman.actors._reply.Reply`
that travels with the request. The journal
takes whatever appends are waiting, up to ``max_batch`` events, and commits
them in one transaction and one fsync (group commit): the more writers, the
bigger the batches, so throughput grows with load instead of collapsing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from foreman.actors._reply import Reply
from foreman.dbthread import DedicatedThread
from foreman.events.log import Append, Durability, EventLog
from foreman.events.store import open_log
from foreman.events.types import Event, RecordedEvent

DEFAULT_MAX_BATCH = 4096
"""Events per transaction at most: bounds a commit's latency and the WAL's growth."""


class JournalFailed(RuntimeError):
    """The journal could not commit (a storage failure): it stops, and so does Foreman."""


@dataclass(frozen=True, slots=True)
class _Request:
    append: Append
    reply: Reply[list[RecordedEvent]]


@dataclass(frozen=True, slots=True)
class _Subscribe:
    events: trio.MemorySendChannel[list[RecordedEvent]]
    reply: Reply[None]


_Message = _Request | _Subscribe


class JournalClient:
    """An actor's handle on the journal; cheap to copy with :meth:`clone`."""

    def __init__(self, requests: trio.MemorySendChannel[_Message]) -> None:
        self._requests = requests

    def clone(self) -> JournalClient:
        return JournalClient(self._requests.clone())

    async def aclose(self) -> None:
        await self._requests.aclose()

    async def __aenter__(self) -> JournalClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def append(
        self, stream: str, events: Sequence[Event], expected_version: int | None = None
    ) -> list[RecordedEvent]:
        """Append and wait until the events are durable; raises when they are refused
        (:class:`~foreman.events.log.ConcurrencyError`,
        :class:`~foreman.events.projection.IllegalTransition`)."""
        committed = await self.enqueue(stream, events, expected_version)
        return await committed.wait()

    async def enqueue(
        self, stream: str, events: Sequence[Event], expected_version: int | None = None
    ) -> Reply[list[RecordedEvent]]:
        """Hand an append to the journal without waiting for its commit: appends are
        committed in the order they are handed over. The reply says how it went."""
        request = _Request(Append(stream, events, expected_version), Reply())
        try:
            await self._requests.send(request)
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
            await self._requests.send(request)
        except trio.BrokenResourceError:
            raise JournalFailed("the journal has stopped") from None
        await request.reply.wait()
        return receive


class Journal:
    def __init__(
        self,
        path: str | Path,
        *,
        durability: Durability = Durability.FULL,
        max_batch: int = DEFAULT_MAX_BATCH,
        buffer: int = 1024,
    ) -> None:
        self.path = path
        self.durability = durability
        self.max_batch = max_batch
        self._buffer = buffer

    async def run(
        self, *, task_status: trio.TaskStatus[JournalClient] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Open the log (catching its projections up), report a client, then commit
        appends until every client is closed."""
        thread = DedicatedThread("foreman-journal")
        try:
            log = await thread.run(lambda: open_log(self.path, durability=self.durability))
            try:
                send, receive = trio.open_memory_channel[_Message](self._buffer)
                task_status.started(JournalClient(send))
                with receive:
                    try:
                        await self._commit_loop(thread, log, receive)
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
    ) -> None:
        subscribers: list[trio.MemorySendChannel[list[RecordedEvent]]] = []
        try:
            async for first in receive:
                batch = self._take_batch(first, receive, subscribers)
                if batch:
                    committed = await self._commit(thread, log, batch)
                    if committed:
                        await _publish(committed, subscribers)
        finally:
            for subscriber in subscribers:
                subscriber.close()

    def _take_batch(
        self,
        first: _Message,
        receive: trio.MemoryReceiveChannel[_Message],
        subscribers: list[trio.MemorySendChannel[list[RecordedEvent]]],
    ) -> list[_Request]:
        """The appends waiting, up to ``max_batch`` events; subscriptions join at once."""
        batch: list[_Request] = []
        size = 0
        message: _Message | None = first
        while message is not None:
            if isinstance(message, _Subscribe):
                subscribers.append(message.events)
                message.reply.put(None)
            else:
                batch.append(message)
                size += len(message.append.events)
                if size >= self.max_batch:
                    break
            try:
                message = receive.receive_nowait()
            except trio.WouldBlock:
                message = None
        return batch

    async def _commit(
        self, thread: DedicatedThread, log: EventLog, batch: list[_Request]
    ) -> list[RecordedEvent]:
        try:
            results = await thread.run(log.append_many, [request.append for request in batch])
        except BaseException as error:
            for request in batch:
                request.reply.put(JournalFailed(f"the append was not committed: {error!r}"))
            raise
        committed: list[RecordedEvent] = []
        for request, result in zip(batch, results, strict=True):
            request.reply.put(result)
            if isinstance(result, list):
                committed += result
        return committed


async def _publish(
    events: list[RecordedEvent], subscribers: list[trio.MemorySendChannel[list[RecordedEvent]]]
) -> None:
    for subscriber in list(subscribers):
        try:
            await subscriber.send(events)
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
