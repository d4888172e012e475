"""The event log: an append-only, hash-chained SQLite table (ADR-0015..0018).

One ``EventLog`` owns one ``sqlite3`` connection and must stay on the thread
that opened it (the journal actor runs it on a dedicated thread). Appends are
validated (stream versions, each projection's state machine) and written in
one transaction together with the projections they change and their
checkpoints; :meth:`EventLog.append_many` takes many writers' appends in that
one transaction and one fsync (group commit).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from foreman.events.chain import GENESIS
from foreman.events.projection import (
    Fold,
    IllegalTransition,
    Projection,
    insert_rows,
    values_statement,
)
from foreman.events.types import Event, RecordedEvent, encode
from foreman.ids import new_ulids

LOG_FORMAT = 1
"""Version of the table layout below; stored in ``meta`` and checked on open."""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        stream TEXT NOT NULL,
        version INTEGER NOT NULL CHECK (version >= 1),
        type TEXT NOT NULL,
        schema_version INTEGER NOT NULL,
        data TEXT NOT NULL,
        recorded_at TEXT NOT NULL,
        hash TEXT NOT NULL,
        UNIQUE (stream, version)
    )""",
    """CREATE TRIGGER IF NOT EXISTS events_are_append_only_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'events is append-only: rows cannot be updated'); END""",
    """CREATE TRIGGER IF NOT EXISTS events_are_append_only_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'events is append-only: rows cannot be deleted'); END""",
    """CREATE TABLE IF NOT EXISTS projections (
        name TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        head_hash TEXT NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)

EVENT_COLUMNS = (
    "seq",
    "id",
    "stream",
    "version",
    "type",
    "schema_version",
    "data",
    "recorded_at",
    "hash",
)
_SELECT_EVENTS = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events"
_LOOKUP_CHUNK = 500
STATE_CACHE = 100_000
"""Projection states and stream versions an appending log keeps in memory."""


class Durability(StrEnum):
    """SQLite's ``synchronous`` setting for the log (ADR-0015)."""

    FULL = "full"
    """fsync on every commit: an acknowledged append survives power loss."""
    NORMAL = "normal"
    """fsync at WAL checkpoints: survives a process crash, may lose the last commits on
    power loss."""
    OFF = "off"
    """no fsync at all: for throwaway logs and tests."""


class LogError(Exception):
    """The log file cannot be used as it is."""


class ConcurrencyError(ValueError):
    """A stale writer: the stream is not at the version the writer expected."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        self.stream, self.expected, self.actual = stream, expected, actual
        super().__init__(
            f"stream {stream} is at version {actual}, but the writer expected {expected}: "
            "reload the stream and decide again"
        )


@dataclass(frozen=True, slots=True)
class Append:
    """One writer's events for one stream, appended all or nothing."""

    stream: str
    events: Sequence[Event]
    expected_version: int | None = None
    """The stream's version the writer decided on (0: a new stream); None skips the check."""

    def __post_init__(self) -> None:
        if not self.stream:
            raise ValueError("an append needs a stream name")
        if not self.events:
            raise ValueError(f"an append to {self.stream} has no events")


class UnstorableEvent(ValueError):
    """An event that cannot be written as JSON the log reads back; nothing was appended.

    The event types refuse such values when they are made (ADR-0032); this is
    the log's own guard, so that one bad append fails alone, never the journal."""


AppendResult = list[RecordedEvent] | ConcurrencyError | IllegalTransition | UnstorableEvent


def format_timestamp(moment: datetime) -> str:
    """A timezone-aware moment as the log writes it: UTC ISO-8601, microseconds, ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def unix_time(stamp: str) -> float:
    """A timestamp as the log writes it, in Unix seconds."""
    return datetime.fromisoformat(stamp).timestamp()


def wall_clock() -> datetime:
    """Now, on the clock the log's timestamps are in (not Trio's)."""
    return datetime.now(UTC)


def utc_now() -> str:
    return format_timestamp(wall_clock())


@contextlib.contextmanager
def closed_unless_usable(path: str | Path, conn: sqlite3.Connection) -> Iterator[None]:
    """Close ``conn`` if the block fails; a database error there means the file is
    not a usable event log (:class:`LogError`)."""
    try:
        yield
    except sqlite3.DatabaseError as error:
        conn.close()
        raise LogError(f"{path}: not a usable Foreman event log: {error}") from error
    except BaseException:
        conn.close()
        raise


class EventLog:
    def __init__(self, conn: sqlite3.Connection, projections: Sequence[Projection[Any]]) -> None:
        self.conn = conn
        self.projections = tuple(projections)
        # What this writer knows of the log, trusted only while the head is the one it
        # last wrote: another writer's append invalidates it (see _append_in_transaction).
        self._known_head: tuple[int, str] | None = None
        self._versions: dict[str, int] = {}
        self._folds = [
            Fold(projection, conn, cache_limit=STATE_CACHE) for projection in self.projections
        ]
        # Every commit moves every projection's checkpoint: one statement for all of them.
        self._set_checkpoints = values_statement(
            "INSERT OR REPLACE INTO projections", 4, len(self.projections)
        )

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        durability: Durability = Durability.FULL,
        projections: Sequence[Projection[Any]] = (),
        read_only: bool = False,
    ) -> EventLog:
        """Open the log at ``path``; each append also folds into ``projections``.

        A writable log is created if missing; a ``read_only`` one (for readers and
        the audit tools) must exist, and is never changed. Opening does not catch
        the projections up with events appended without them: that is
        :func:`foreman.events.replay.catch_up` (:func:`foreman.events.store.open_log`
        opens Foreman's log and does it).
        """
        if read_only:
            if not Path(path).is_file():
                raise LogError(f"{path}: no such event log")
            conn = sqlite3.connect(
                f"{Path(path).absolute().as_uri()}?mode=ro", uri=True, isolation_level=None
            )
        else:
            conn = sqlite3.connect(path, isolation_level=None)
        with closed_unless_usable(path, conn):
            conn.execute("PRAGMA busy_timeout = 10000")
            log = cls(conn, projections)
            is_new = log._check_format(allow_empty=not read_only)
            if read_only:
                return log
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise LogError(f"{path}: cannot switch the database to WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {Durability(durability).value.upper()}")
            if is_new:
                log._create_schema()
        return log

    def close(self) -> None:
        self.conn.close()

    def _create_schema(self) -> None:
        with self.transaction():
            for statement in _SCHEMA:
                self.conn.execute(statement)
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('log_format', ?)", (LOG_FORMAT,))

    def _check_format(self, *, allow_empty: bool) -> bool:
        """Refuse anything but an event log of this format; True for an empty database."""
        tables = self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables == 0 and allow_empty:
            return True
        try:
            stored = self.conn.execute("SELECT value FROM meta WHERE key = 'log_format'").fetchone()
        except sqlite3.OperationalError:
            stored = None
        if stored is None:
            raise LogError("not a Foreman event log: the database has no log format")
        if int(stored[0]) != LOG_FORMAT:
            raise LogError(
                f"log format {stored[0]}, but this Foreman reads log format {LOG_FORMAT}"
            )
        return False

    def transaction(self) -> _Transaction:
        return _Transaction(self.conn)

    # -- reading ---------------------------------------------------------------

    def head(self) -> tuple[int, str]:
        """The last ``seq`` and its hash; ``(0, GENESIS)`` for an empty log."""
        row = self.conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return (0, GENESIS) if row is None else (row[0], row[1])

    def hash_at(self, seq: int) -> str | None:
        """The hash of event ``seq`` (GENESIS for 0), None if the log has no such event."""
        if seq == 0:
            return GENESIS
        row = self.conn.execute("SELECT hash FROM events WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else str(row[0])

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Read in one transaction: every query sees the log as of its first read,
        whatever a live writer commits meanwhile."""
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("COMMIT")

    def batches(
        self, after: int = 0, until: int | None = None, *, chunk: int = 5000
    ) -> Iterator[list[tuple[Any, ...]]]:
        """Raw event rows (columns as in ``EVENT_COLUMNS``) with ``after < seq <= until``,
        ``chunk`` at a time."""
        last = after
        while True:
            limit = chunk if until is None else min(chunk, until - last)
            if limit <= 0:
                return
            batch = self.conn.execute(
                f"{_SELECT_EVENTS} WHERE seq > ? ORDER BY seq LIMIT ?", (last, limit)
            ).fetchall()
            if batch:
                yield batch
            if len(batch) < limit:
                return
            last = batch[-1][0]

    def rows(self, after: int = 0, until: int | None = None) -> Iterator[tuple[Any, ...]]:
        for batch in self.batches(after, until):
            yield from batch

    def read(self, after: int = 0, until: int | None = None) -> Iterator[RecordedEvent]:
        """Events with ``after < seq <= until``, their data decoded lazily."""
        for batch in self.batches(after, until):
            yield from itertools.starmap(RecordedEvent, batch)

    def read_stream(self, stream: str) -> list[RecordedEvent]:
        return [
            RecordedEvent(*row)
            for row in self.conn.execute(
                f"{_SELECT_EVENTS} WHERE stream = ? ORDER BY version", (stream,)
            )
        ]

    def events_at(self, seqs: Sequence[int]) -> list[RecordedEvent]:
        """The events with these ``seq``s (at most SQLite's 32,766 variables), in order."""
        marks = ", ".join("?" * len(seqs))
        rows = self.conn.execute(f"{_SELECT_EVENTS} WHERE seq IN ({marks}) ORDER BY seq", seqs)
        return [RecordedEvent(*row) for row in rows]

    def checkpoint(self, projection: Projection[Any]) -> tuple[int, int, str] | None:
        """``(version, seq, head_hash)`` recorded for ``projection``, if any."""
        row = self.conn.execute(
            "SELECT version, seq, head_hash FROM projections WHERE name = ?", (projection.name,)
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def set_checkpoint(self, projection: Projection[Any], seq: int, head_hash: str) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO projections VALUES (?, ?, ?, ?)",
            (projection.name, projection.version, seq, head_hash),
        )

    def _stream_versions(self, streams: Sequence[str]) -> dict[str, int]:
        versions = dict.fromkeys(streams, 0)
        for start in range(0, len(streams), _LOOKUP_CHUNK):
            chunk = streams[start : start + _LOOKUP_CHUNK]
            marks = ", ".join("?" * len(chunk))
            versions.update(
                self.conn.execute(
                    f"SELECT stream, max(version) FROM events WHERE stream IN ({marks}) "
                    "GROUP BY stream",
                    chunk,
                ).fetchall()
            )
        return versions

    # -- appending -------------------------------------------------------------

    def append(
        self, stream: str, events: Sequence[Event], expected_version: int | None = None
    ) -> list[RecordedEvent]:
        """Append one stream's events in their own transaction; raises if refused."""
        (result,) = self.append_many([Append(stream, events, expected_version)])
        if isinstance(result, Exception):
            raise result
        return result

    def append_many(self, appends: Sequence[Append]) -> list[AppendResult]:
        """Append many writers' events in one transaction (group commit).

        Each append is all or nothing: a stale ``expected_version`` or an event a
        projection refuses yields that append's exception in the result list,
        and the other appends go ahead.
        """
        try:
            with self.transaction():
                return self._append_in_transaction(appends)
        except BaseException:
            self._forget()
            raise

    def _forget(self) -> None:
        self._known_head = None
        self._versions.clear()
        for fold in self._folds:
            fold.forget()

    def _append_in_transaction(self, appends: Sequence[Append]) -> list[AppendResult]:
        last = self.conn.execute(
            "SELECT seq, hash, recorded_at FROM events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        seq, head, last_time = (0, GENESIS, "") if last is None else last
        if (seq, head) != self._known_head:
            self._forget()
        recorded_at = max(utc_now(), last_time)
        streams = list(dict.fromkeys(append.stream for append in appends))
        versions = self._versions
        versions.update(self._stream_versions([s for s in streams if s not in versions]))
        folds = self._folds
        for fold in folds:
            fold.prefetch(streams)
        ids = new_ulids(sum(len(append.events) for append in appends))
        encoded = [_encoded(append) for append in appends]
        # Most commits refuse nothing: fold all their events in one pass per projection.
        # A refusal anywhere undoes that pass (nothing was kept) and the commit is made
        # again append by append, so that the refused one fails alone.
        results = self._record(appends, encoded, ids, seq, head, recorded_at, refusable=False)
        if results is None:
            results = self._record(appends, encoded, ids, seq, head, recorded_at, refusable=True)
            assert results is not None
        if len(versions) > STATE_CACHE:
            versions.clear()
        return results

    def _record(
        self,
        appends: Sequence[Append],
        encoded: list[list[str] | UnstorableEvent],
        ids: list[str],
        seq: int,
        head: str,
        recorded_at: str,
        *,
        refusable: bool,
    ) -> list[AppendResult] | None:
        """Number, hash and fold the appends, write them; None when a projection refused
        an event and ``refusable`` is false (then nothing was written or kept).

        With ``refusable``, each append is folded on its own and a refused one is its
        result; without, every event is folded in one pass (the fast path)."""
        versions = self._versions
        start_versions: dict[str, int] = {}
        sha256 = hashlib.sha256
        next_id = iter(ids).__next__
        rows: list[tuple[Any, ...]] = []
        everything: list[RecordedEvent] = []
        results: list[AppendResult] = []
        for append, data in zip(appends, encoded, strict=True):
            stream = append.stream
            current = versions[stream]
            if append.expected_version is not None and append.expected_version != current:
                results.append(ConcurrencyError(stream, append.expected_version, current))
                continue
            if isinstance(data, UnstorableEvent):
                results.append(data)
                continue
            recorded: list[RecordedEvent] = []
            chain = head
            number = seq
            version = current
            for event, text in zip(append.events, data, strict=True):
                number += 1
                version += 1
                id_ = next_id()
                type_ = event.type
                schema_version = event.SCHEMA_VERSION
                # chain.chain_hash, inlined: this loop runs once per event appended.
                chain = sha256(
                    f"{chain}\x1f{number}\x1f{id_}\x1f{stream}\x1f{version}\x1f{type_}"
                    f"\x1f{schema_version}\x1f{recorded_at}\x1f{text}".encode()
                ).hexdigest()
                row = (
                    number,
                    id_,
                    stream,
                    version,
                    type_,
                    schema_version,
                    text,
                    recorded_at,
                    chain,
                )
                rows.append(row)
                recorded.append(tuple.__new__(RecordedEvent, (*row, event)))  # its __new__, inlined
            if refusable:
                refused = self._fold(recorded)
                if refused is not None:
                    del rows[len(rows) - len(recorded) :]
                    results.append(refused)
                    continue
            else:
                everything.extend(recorded)
            results.append(recorded)
            seq, head = number, chain
            start_versions.setdefault(stream, current)
            versions[stream] = version
        if not refusable and everything and self._fold(everything) is not None:
            versions.update(start_versions)
            return None
        if rows:
            self._write(rows, seq, head)
        self._known_head = (seq, head)
        return results

    def _write(self, rows: list[tuple[Any, ...]], seq: int, head: str) -> None:
        """Write the events' rows and the projections' changed rows, and move every
        projection's checkpoint to ``(seq, head)`` in one statement."""
        insert_rows(self.conn, "INSERT INTO events", rows)
        checkpoints: list[object] = []
        for fold in self._folds:
            fold.flush()
            checkpoints += (fold.projection.name, fold.projection.version, seq, head)
        if checkpoints:
            self.conn.execute(self._set_checkpoints, checkpoints)

    def _fold(self, events: list[RecordedEvent]) -> IllegalTransition | None:
        """Fold ``events`` into every projection, all or nothing: the refusal, if any."""
        try:
            changes = [fold.evolve(events) for fold in self._folds]
        except IllegalTransition as refused:
            return refused
        for fold, change in zip(self._folds, changes, strict=True):
            fold.keep(change)
        return None


def _encoded(append: Append) -> list[str] | UnstorableEvent:
    """The ``data`` of each of the append's events, or why they cannot be stored."""
    try:
        return [encode(event) for event in append.events]
    except ValueError as error:  # pydantic's serialization errors are ValueErrors
        return UnstorableEvent(f"{append.stream}: {error}")


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception, a failed
    ``COMMIT`` included, so the connection is never left inside a transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._conn.execute("COMMIT")
            except BaseException:
                self._roll_back()
                raise
        else:
            self._roll_back()

    def _roll_back(self) -> None:
        """Unless SQLite has rolled back already, as it does when the disk is full or
        fails: a ROLLBACK then would fail too, hiding why the transaction did."""
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
