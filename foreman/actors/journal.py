"""The journal: the event log's only writer.

Every other actor appends through a :class:`JournalClient`, which sends the
append over the journal's memory channel and waits for the committed events
(or the reason they were refused) in a one-shot reply slot that travels with
the request (a memory channel per append cost more than the append itself:
ADR-0018). The journal
takes whatever appends are waiting, up to ``max_batch`` events, and commits
them in one transaction and one fsync (group commit): the more writers, the
bigger the batches, so throughput grows with load instead of collapsing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from foreman.dbthread import DedicatedThread
from foreman.events.log import Append, AppendResult, Durability, EventLog
from foreman.events.types import Event, RecordedEvent

DEFAULT_MAX_BATCH = 4096
"""Events per transaction at most: bounds a commit's latency and the WAL's growth."""


class JournalFailed(RuntimeError):
    """The journal could not commit (a storage failure): it stops, and so does Foreman."""


class _Reply:
    """Where the journal puts one append's outcome, once; the writer waits for it."""

    __slots__ = ("_outcome", "_ready")

    def __init__(self) -> None:
        self._ready = trio.Event()
        self._outcome: AppendResult | BaseException | None = None

    def put(self, outcome: AppendResult | BaseException) -> None:
        self._outcome = outcome
        self._ready.set()

    async def wait(self) -> list[RecordedEvent]:
        await self._ready.wait()
        outcome = self._outcome
        if isinstance(outcome, BaseException):
            raise outcome
        assert outcome is not None
        return outcome


@dataclass(frozen=True, slots=True)
class _Request:
    append: Append
    reply: _Reply


class JournalClient:
    """An actor's handle on the journal; cheap to copy with :meth:`clone`."""

    def __init__(self, requests: trio.MemorySendChannel[_Request]) -> None:
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
        request = _Request(Append(stream, events, expected_version), _Reply())
        try:
            await self._requests.send(request)
        except trio.BrokenResourceError:
            raise JournalFailed("the journal has stopped: nothing was appended") from None
        return await request.reply.wait()


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
            log = await thread.run(lambda: EventLog.open(self.path, durability=self.durability))
            try:
                send, receive = trio.open_memory_channel[_Request](self._buffer)
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
        receive: trio.MemoryReceiveChannel[_Request],
    ) -> None:
        async for first in receive:
            batch = [first]
            size = len(first.append.events)
            while size < self.max_batch:
                try:
                    request = receive.receive_nowait()
                except trio.WouldBlock:
                    break
                batch.append(request)
                size += len(request.append.events)
            try:
                results = await thread.run(log.append_many, [request.append for request in batch])
            except BaseException as error:
                for request in batch:
                    request.reply.put(JournalFailed(f"the append was not committed: {error!r}"))
                raise
            for request, result in zip(batch, results, strict=True):
                request.reply.put(result)


def _turn_away(receive: trio.MemoryReceiveChannel[_Request]) -> None:
    """Tell the writers still queued that the journal stopped before their append."""
    while True:
        try:
            request = receive.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return
        request.reply.put(JournalFailed("the journal has stopped: nothing was appended"))
