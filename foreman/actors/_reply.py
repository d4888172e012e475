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
