"""A projection whose state is one row per stream: a NamedTuple, stored as is.

The files and batches projections are this shape: each keys its state by its
stream (``files/<id>``, ``batches/<id>``), stores it under the id (the stream
without its prefix) and keeps every field in a column of the same name. A subclass
gives the row type, the table's columns, and the transitions; an event that cannot
be read back changes nothing (ADR-0032).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

from foreman.events.projection import IllegalTransition
from foreman.events.types import RecordedEvent, UnreadableEvent

R = TypeVar("R", bound=NamedTuple)
Transition = Callable[[Any, RecordedEvent], Any]

_LOAD_CHUNK = 500


class RowsProjection(Generic[R]):
    name: ClassVar[str]
    version: ClassVar[int]
    prefix: ClassVar[str]
    """The streams it folds: a row's key is its stream without this prefix."""
    row: type[R]
    columns: ClassVar[str]
    """The table's column definitions, in the row type's field order."""
    indexes: ClassVar[tuple[str, ...]] = ()
    transitions: ClassVar[dict[str, Transition]]

    def create(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {self.name} ({self.columns}) WITHOUT ROWID")
        for index in self.indexes:
            conn.execute(index)

    def drop(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"DROP TABLE IF EXISTS {self.name}")

    def key(self, event: RecordedEvent) -> str | None:
        """The stream, as the log assumes when it reads the states a commit needs
        before folding it in (so a commit of other streams reads nothing here)."""
        if event.type in self.transitions and event.stream.startswith(self.prefix):
            return event.stream
        return None

    def evolve(self, state: R | None, event: RecordedEvent) -> R | None:
        try:
            return self.transitions[event.type](state, event)  # type: ignore[no-any-return]
        except UnreadableEvent:
            return state

    def select(self) -> str:
        return f"SELECT {', '.join(self.row._fields)} FROM {self.name}"

    def load(self, conn: sqlite3.Connection, keys: Iterable[str]) -> dict[str, R]:
        ids = [key.removeprefix(self.prefix) for key in keys if key.startswith(self.prefix)]
        found: dict[str, R] = {}
        for start in range(0, len(ids), _LOAD_CHUNK):
            chunk = ids[start : start + _LOAD_CHUNK]
            marks = ", ".join("?" * len(chunk))
            for row in conn.execute(f"{self.select()} WHERE id IN ({marks})", chunk):
                found[self.prefix + row[0]] = self.row._make(row)
        return found

    def save(self, conn: sqlite3.Connection, states: Mapping[str, R | None]) -> None:
        fields = self.row._fields
        upsert = (
            f"INSERT OR REPLACE INTO {self.name} ({', '.join(fields)}) "
            f"VALUES ({', '.join('?' * len(fields))})"
        )
        conn.executemany(upsert, [row for row in states.values() if row is not None])
        gone = [(key.removeprefix(self.prefix),) for key, row in states.items() if row is None]
        if gone:
            conn.executemany(f"DELETE FROM {self.name} WHERE id = ?", gone)

    def load_all(self, conn: sqlite3.Connection) -> dict[str, R]:
        rows = conn.execute(f"{self.select()} ORDER BY id")
        return {self.prefix + row[0]: self.row._make(row) for row in rows}

    def get(self, conn: sqlite3.Connection, row_id: str) -> R | None:
        """The row of one id (``file-…``, ``batch_…``)."""
        row = conn.execute(f"{self.select()} WHERE id = ?", (row_id,)).fetchone()
        return None if row is None else self.row._make(row)


def refuse(state: NamedTuple | None, event: RecordedEvent, reason: str) -> IllegalTransition:
    status = getattr(state, "status", None) if state is not None else None
    return IllegalTransition(event.stream, status, event.type, reason)


def owned_by(tenant: str | None) -> tuple[list[str], list[str]]:
    """The WHERE terms and arguments that keep only ``tenant``'s rows (None: all)."""
    return (["tenant = ?"], [tenant]) if tenant is not None else ([], [])
