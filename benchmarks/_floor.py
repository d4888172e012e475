"""The storage floor of group commit: SQLite writing exactly the rows the log writes.

The work is first appended through the log (durability OFF, untimed), keeping for
each commit the rows it wrote: its events, the jobs rows its fold wrote (one per
job the commit touched) and the projection checkpoint. The timed part writes those
rows again into a fresh database of the same schema, one transaction per commit,
and nothing else: no validation, hashing, encoding or lookups. The rows are written as
the log writes them, many to a statement (``projection.insert_rows``), the jobs rows as
``projection.upsert`` writes them: each with a statement naming only its columns that
are not NULL, grouped by shape before the clock starts, since binding None costs
Python's sqlite3 more than any other value.
"""

from __future__ import annotations

import itertools
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _logs import Work, chunked, remove_db, scratch
from _report import Stopwatch

from foreman.events.log import Durability
from foreman.events.projection import insert_rows
from foreman.events.store import open_log

Rows = list[tuple[Any, ...]]
_LOOKUP_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Commit:
    events: Rows
    jobs: list[tuple[str, Rows]]
    """Statement heads (``INSERT OR REPLACE INTO jobs (<columns>)``) and their rows: the jobs
    rows grouped by which columns are not NULL."""
    checkpoints: Rows


@dataclass(frozen=True, slots=True)
class Recording:
    schema: list[str]
    meta: Rows
    commits: list[Commit]


def _jobs_rows(conn: sqlite3.Connection, ids: list[str]) -> list[tuple[str, Rows]]:
    rows: Rows = []
    columns: list[str] = []
    for start in range(0, len(ids), _LOOKUP_CHUNK):
        chunk = ids[start : start + _LOOKUP_CHUNK]
        marks = ", ".join("?" * len(chunk))
        cursor = conn.execute(f"SELECT * FROM jobs WHERE id IN ({marks})", chunk)
        columns = [column[0] for column in cursor.description]
        rows += cursor.fetchall()
    statements: dict[str, Rows] = {}
    for row in rows:
        present = [value is not None for value in row]
        names = ", ".join(itertools.compress(columns, present))
        head = f"INSERT OR REPLACE INTO jobs ({names})"
        statements.setdefault(head, []).append(tuple(itertools.compress(row, present)))
    return list(statements.items())


def record(work: Work, batch: int) -> Recording:
    """Append ``work`` through the log and keep what each commit wrote."""
    source = scratch("append-floor-source.db")
    log = open_log(source, durability=Durability.OFF)
    try:
        conn = log.conn
        commits = []
        for appends in chunked(work, batch):
            before, _ = log.head()
            log.append_many(appends)
            events = conn.execute(
                "SELECT * FROM events WHERE seq > ? ORDER BY seq", (before,)
            ).fetchall()
            ids = list(dict.fromkeys(row[2] for row in events))
            checkpoints = conn.execute("SELECT * FROM projections").fetchall()
            commits.append(Commit(events, _jobs_rows(conn, ids), checkpoints))
        schema = [
            sql
            for (sql,) in conn.execute(
                "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid"
            )
        ]
        meta = conn.execute("SELECT * FROM meta").fetchall()
    finally:
        log.close()
        remove_db(source)
    return Recording(schema, meta, commits)


def _insert(table: str, rows: Rows, verb: str = "INSERT") -> str:
    width = len(rows[0]) if rows else 1
    return f"{verb} INTO {table} VALUES ({', '.join('?' * width)})"


def write(path: Path, recording: Recording, durability: Durability, watch: Stopwatch) -> None:
    """Write the recorded commits to a fresh database at ``path``; only this is timed."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {durability.value.upper()}")
        for sql in recording.schema:
            conn.execute(sql)
        conn.executemany(_insert("meta", recording.meta), recording.meta)
        first = recording.commits[0]
        upsert_checkpoints = _insert("projections", first.checkpoints, "INSERT OR REPLACE")
        with watch:
            for commit in recording.commits:
                conn.execute("BEGIN IMMEDIATE")
                insert_rows(conn, "INSERT INTO events", commit.events)
                for upsert_jobs, jobs in commit.jobs:
                    insert_rows(conn, upsert_jobs, jobs)
                conn.executemany(upsert_checkpoints, commit.checkpoints)
                conn.execute("COMMIT")
    finally:
        conn.close()


def floor(path: Path, work: Work, durability: Durability, watch: Stopwatch, batch: int) -> None:
    """A row for append.py: record untimed, then time the bare writes."""
    write(path, record(work, batch), durability, watch)
