"""At most so many requests of one kind at once; one more is refused at once.

A flood of cheap requests (pass-through calls, job listings) must not queue up
inside Foreman: every waiting request holds a connection and memory, and by the
time it is served its caller may be gone. Refusing at once, with 503 and
``Retry-After``, keeps the rest of Foreman answering and tells the caller when
to come back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class Busy(Exception):
    """Every place is taken: the caller is answered 503 with ``Retry-After``."""


class Bound:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the ``limit`` places for the block; :class:`Busy` when every
        place is taken."""
        if self.in_flight >= self.limit:
            raise Busy(f"{self.limit} requests of this kind are in flight")
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
