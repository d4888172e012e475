"""Projections: state derived from the log by a pure fold.

A projection keys its state (one job, one delivery, ...), and its ``evolve``
is a pure function ``(state | None, event) -> state | None`` that raises
:class:`IllegalTransition` for an event its state machine refuses. The log
runs the same fold when appending (to validate, then to write the new state in
the same transaction) and when replaying (to rebuild), so the two cannot
disagree (ADR-0017).
"""

from __future__ import annotations

import functools
import itertools
import operator
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from foreman.events.types import RecordedEvent

S = TypeVar("S")


class IllegalTransition(ValueError):
    """An event that its projection's state machine refuses; nothing was appended."""

    def __init__(self, key: str, state: str | None, event_type: str, reason: str) -> None:
        self.key = key
        self.state = state
        self.event_type = event_type
        where = f"in state {state!r}" if state is not None else "that does not exist"
        super().__init__(f"{event_type} is not allowed for {key} {where}: {reason}")


_ROWS_PER_STATEMENT = (128, 16, 1)
"""How many rows one ``INSERT`` statement of :func:`insert_rows` takes, largest first."""


def insert_rows(conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]]) -> None:
    """``{head} VALUES (...), (...), ...``: the rows (all of one width), many to a statement.

    SQLite runs a statement's program once per execution, opening a cursor on the table
    and each index every time: one statement per row writes a jobs or events row about
    a third slower than one statement per 128 rows (ADR-0047). The rows go in order,
    so an ``INSERT OR REPLACE`` keeps the last row of a key, as one row at a time would.
    """
    if not rows:
        return
    width = len(rows[0])
    # SQLite before 3.32 takes at most 999 variables a statement.
    most = max(1, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
    start = 0
    for size in (min(size, most) for size in _ROWS_PER_STATEMENT):
        end = start + (len(rows) - start) // size * size
        if end > start:
            flat = list(itertools.chain.from_iterable(rows[start:end]))
            step = size * width
            conn.executemany(
                values_statement(head, width, size),
                [flat[at : at + step] for at in range(0, len(flat), step)],
            )
            start = end


@functools.cache
def values_statement(head: str, width: int, size: int) -> str:
    """``{head} VALUES (?, ...), ...``: ``size`` rows of ``width`` values."""
    row = f"({', '.join('?' * width)})"
    return f"{head} VALUES {', '.join([row] * size)}"


def upsert(
    conn: sqlite3.Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """``INSERT OR REPLACE`` the rows (values in ``columns``' order), binding no NULLs.

    Python's sqlite3 binds None about 0.2 µs slower than a string or a number (it
    looks for an adapter first), and a projection row is mostly None: so each row is
    written with a statement naming only its columns that are not None, the others
    left to SQLite's default, NULL (ADR-0047). The rows of one shape share statements
    (:func:`insert_rows`).
    """
    for head, shaped in by_shape(table, columns, rows):
        insert_rows(conn, head, shaped)


def by_shape(
    table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """:func:`upsert`'s statement heads (``INSERT OR REPLACE INTO table (<columns>)``),
    each with its rows' values: the rows grouped by which of their columns are not None."""
    nones = (None,) * len(columns)
    shapes: dict[tuple[bool, ...], list[tuple[Any, ...]]] = {}
    for row in rows:
        shape = tuple(map(operator.is_not, row, nones))
        values = tuple(itertools.compress(row, shape))
        if shape in shapes:
            shapes[shape].append(values)
        else:
            shapes[shape] = [values]
    return [
        (
            f"INSERT OR REPLACE INTO {table} ({', '.join(itertools.compress(columns, shape))})",
            shaped,
        )
        for shape, shaped in shapes.items()
    ]


class Projection(Protocol[S]):
    """What the log needs of a projection; the jobs projection is the model."""

    name: ClassVar[str]
    version: ClassVar[int]
    """Bump when the stored shape or the fold changes: the projection is rebuilt."""

    def create(self, conn: sqlite3.Connection) -> None: ...

    def drop(self, conn: sqlite3.Connection) -> None: ...

    def key(self, event: RecordedEvent) -> str | None:
        """The key of the state ``event`` changes, or None when it changes none."""
        ...

    def evolve(self, state: S | None, event: RecordedEvent) -> S | None: ...

    def load(self, conn: sqlite3.Connection, keys: Iterable[str]) -> dict[str, S]: ...

    def save(self, conn: sqlite3.Connection, states: Mapping[str, S | None]) -> None:
        """Store new states; None deletes the key's row."""
        ...

    def load_all(self, conn: sqlite3.Connection) -> dict[str, S]: ...


class Fold(Generic[S]):
    """A working set of one projection's states while events are folded in.

    States are read from the database the first time a key is needed (or up
    front with :meth:`prefetch`) and, up to ``cache_limit``, kept after they are
    written, so a long-lived fold (the log's own) rarely reads them back.
    :meth:`apply` is all-or-nothing for the events it is given (:meth:`evolve`
    then :meth:`keep` splits it for callers that fold into several projections),
    so one refused append leaves the rest of a batch untouched.
    """

    def __init__(
        self,
        projection: Projection[S],
        conn: sqlite3.Connection | None,
        *,
        cache_limit: int = 0,
        starts_empty: bool = False,
    ) -> None:
        self.projection = projection
        self._conn = conn
        self._cache_limit = cache_limit
        self.states: dict[str, S | None] = {}
        self.dirty: set[str] = set()
        # A fold that starts from an empty projection (a rebuild) knows the stored
        # states are exactly those it evicted: other keys need no lookup.
        self._evicted: set[str] | None = set() if starts_empty else None

    def prefetch(self, keys: Iterable[str]) -> None:
        missing = [key for key in keys if key not in self.states]
        if self._evicted is not None:
            evicted = self._evicted
            self.states.update((key, None) for key in missing if key not in evicted)
            missing = [key for key in missing if key in evicted]
        if missing and self._conn is not None:
            found = self.projection.load(self._conn, missing)
            for key in missing:
                self.states[key] = found.get(key)

    def _current(self, key: str) -> S | None:
        if key not in self.states:
            self.prefetch((key,))
        return self.states.get(key)

    def evolve(self, events: Iterable[RecordedEvent]) -> dict[str, S | None]:
        """The states ``events`` lead to, without keeping them; raises on a refused event."""
        key_of = self.projection.key
        return self._evolve([(key_of(event), event) for event in events], self._current)

    def _evolve(
        self,
        keyed: list[tuple[str | None, RecordedEvent]],
        current: Callable[[str], S | None],
    ) -> dict[str, S | None]:
        """The states the keyed events lead to; ``current`` gives a key's state before
        them (``self.states.get`` when they were all fetched beforehand: replay's loop,
        run once per event, then makes no Python call of its own)."""
        evolve = self.projection.evolve
        changes: dict[str, S | None] = {}
        for key, event in keyed:
            if key is not None:
                changes[key] = evolve(changes[key] if key in changes else current(key), event)
        return changes

    def keep(self, changes: Mapping[str, S | None]) -> None:
        """Hold the new states; only those that are not the very object held before
        are written (states are immutable: a fold that changes nothing returns its
        input, as the deliveries projection does for a job without a webhook)."""
        states = self.states
        self.dirty.update(
            key for key, state in changes.items() if key not in states or states[key] is not state
        )
        states.update(changes)

    def apply(self, events: Sequence[RecordedEvent]) -> None:
        """Fold ``events`` in, reading the states they need in one go."""
        key_of = self.projection.key
        keyed = [(key_of(event), event) for event in events]
        self.prefetch({key for key, _ in keyed if key is not None})
        self.keep(self._evolve(keyed, self.states.get))

    def flush(self) -> None:
        """Write every changed state, then :meth:`trim`."""
        self._write(self.dirty)
        self.dirty.clear()
        self.trim()

    def trim(self) -> None:
        """Keep at most ``cache_limit`` states, oldest out first, writing changed ones."""
        excess = len(self.states) - self._cache_limit
        if excess <= 0:
            return
        gone = list(itertools.islice(self.states, excess))
        self._write([key for key in gone if key in self.dirty])
        for key in gone:
            del self.states[key]
            self.dirty.discard(key)
        if self._evicted is not None:
            self._evicted.update(gone)

    def _write(self, keys: Iterable[str]) -> None:
        """Save the states of ``keys`` in key order: the dirty set's order is its hashes',
        and rows written in the order of their table's key cost SQLite about half as
        much as rows in that random one (ADR-0047)."""
        if self._conn is not None:
            states = {key: self.states[key] for key in sorted(keys)}
            if states:
                self.projection.save(self._conn, states)

    def forget(self) -> None:
        """Drop every state held, written or not (after a rollback)."""
        self.states.clear()
        self.dirty.clear()
