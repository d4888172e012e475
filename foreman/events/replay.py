"""Replay: rebuild projections from the log, catch them up, or fold to a point in time."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

from foreman.events.chain import GENESIS
from foreman.events.log import EventLog, LogError, format_timestamp
from foreman.events.projection import Fold, Projection
from foreman.events.types import RecordedEvent

S = TypeVar("S")
Progress = Callable[[int, int], None]
"""Called with (events folded so far, events to fold in all)."""

CHUNK = 20_000
"""Events read and folded at a time."""
CACHE = 100_000
"""States a replay holds in memory; beyond it the oldest are written out."""


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector around a bulk fold.

    A fold allocates millions of short-lived tuples but makes no reference
    cycles, and collections triggered by those allocations took a third of a
    rebuild's time (benchmarks/README.md).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def catch_up(log: EventLog, projection: Projection[Any], progress: Progress | None = None) -> int:
    """Fold the events after the projection's checkpoint; rebuild it when it is missing
    or was built by another version of its code. Returns the number of events folded.

    Checks and fold share one write transaction, so two processes opening the
    log at once cannot fold the same events twice."""
    with log.transaction():
        checkpoint = log.checkpoint(projection)
        if checkpoint is None or checkpoint[0] != projection.version:
            return _rebuild(log, projection, progress, CHUNK, CACHE)
        _version, seq, hash_ = checkpoint
        if log.hash_at(seq) != hash_:
            raise LogError(
                f"projection {projection.name} was checkpointed at event {seq}, which the "
                "log does not hold as it was: events were removed or altered. Nothing more "
                "is appended to it; run `foreman events verify` to see what changed."
            )
        if seq == log.head()[0]:
            return 0
        return _fold_into(log, projection, seq, progress)


def rebuild(
    log: EventLog,
    projection: Projection[Any],
    progress: Progress | None = None,
    *,
    chunk: int = CHUNK,
    cache: int = CACHE,
) -> int:
    """Drop the projection and fold every event into it again, in one transaction:
    readers see the old projection or the new one, never half of it."""
    with log.transaction():
        return _rebuild(log, projection, progress, chunk, cache)


def _rebuild(
    log: EventLog, projection: Projection[Any], progress: Progress | None, chunk: int, cache: int
) -> int:
    projection.drop(log.conn)
    projection.create(log.conn)
    log.set_checkpoint(projection, 0, GENESIS)
    return _fold_into(log, projection, 0, progress, chunk=chunk, cache=cache)


def _chunks(log: EventLog, after: int, until: int, chunk: int) -> Iterator[list[RecordedEvent]]:
    undecoded = (None,)
    for batch in log.batches(after, until, chunk=chunk):
        # RecordedEvent(*row), without the Python call of a NamedTuple's __new__.
        yield [tuple.__new__(RecordedEvent, row + undecoded) for row in batch]


def _fold_into(
    log: EventLog,
    projection: Projection[Any],
    after: int,
    progress: Progress | None,
    *,
    chunk: int = CHUNK,
    cache: int = CACHE,
) -> int:
    head_seq, head_hash = log.head()
    fold = Fold(projection, log.conn, cache_limit=cache, starts_empty=after == 0)
    done = 0
    with collector_paused():
        for batch in _chunks(log, after, head_seq, chunk):
            fold.apply(batch)
            fold.trim()
            done += len(batch)
            if progress is not None:
                progress(done, head_seq - after)
        fold.flush()
    log.set_checkpoint(projection, head_seq, head_hash)
    return done


def state_at(
    log: EventLog,
    projection: Projection[S],
    until: int | None = None,
    progress: Progress | None = None,
) -> dict[str, S]:
    """The projection's states as they stood after event ``until`` (default: the head),
    folded in memory; the stored projection is not touched."""
    head_seq, _ = log.head()
    last = head_seq if until is None else min(until, head_seq)
    fold: Fold[S] = Fold(projection, None)
    done = 0
    with collector_paused():
        for batch in _chunks(log, 0, last, CHUNK):
            fold.apply(batch)
            done += len(batch)
            if progress is not None:
                progress(done, last)
    return {key: state for key, state in fold.states.items() if state is not None}


def seq_at(log: EventLog, when: datetime) -> int:
    """The last ``seq`` recorded at or before ``when`` (0 if none).

    ``recorded_at`` never decreases along ``seq`` (the log makes sure of it), so
    this is exactly the log's state at that moment.
    """
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    row = log.conn.execute(
        "SELECT max(seq) FROM events WHERE recorded_at <= ?", (format_timestamp(when),)
    ).fetchone()
    return int(row[0] or 0)
