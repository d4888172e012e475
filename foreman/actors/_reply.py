"""A one-shot reply: how an actor answers the one request that carried it.

Requests travel over the receiving actor's memory channel; each carries a
``Reply`` for its answer. A memory channel per request would do the same job
at several times the cost (ADR-0018), and a reply put after its requester
gave up (was cancelled) is simply dropped.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import trio

T = TypeVar("T")


async def deliver(channel: trio.MemorySendChannel[T], message: T) -> None:
    """Send ``message``, yielding to the other tasks only when the channel is full.

    ``channel.send`` always yields once the message is in, which puts another turn
    of Trio's loop on every hop of a job's way (ADR-0038); a request that fits in
    the receiver's buffer need not wait for it."""
    try:
        channel.send_nowait(message)
    except trio.WouldBlock:
        await channel.send(message)


class Reply(Generic[T]):
    __slots__ = ("_outcome", "_ready")

    def __init__(self) -> None:
        self._ready = trio.Event()
        self._outcome: T | BaseException | None = None

    def put(self, outcome: T | BaseException) -> None:
        """Answer with a value, or with an exception for the requester to raise."""
        self._outcome = outcome
        self._ready.set()

    async def wait(self) -> T:
        await self._ready.wait()
        outcome = self._outcome
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome  # type: ignore[return-value]  # set by put() before _ready
