"""The event log's per-event Python work, each option beside the current one, same run.

For ADR-0047: what encoding, decoding, hashing, the row tuple and the SQLite
driver cost per event on the workload of append.py / replay.py (``_logs.py``),
and the alternatives measured against them: ``orjson``, ``msgspec``, pydantic's
serializer and validator called directly, ``apsw`` instead of ``sqlite3``, and the
jobs projection's rows written with and without their NULLs bound.
Each figure is the best of ``--repeat`` rounds, the rounds interleaved (every
option once per round), in microseconds per event.

    python benchmarks/codecs.py [--events N] [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import itertools
import json
import operator
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import Any

from _logs import build_work, remove_db, scratch
from _report import emit, fmt_float, machine, progress, table

from foreman.events.chain import GENESIS, chain_hash
from foreman.events.jobs import Job, JobsProjection, _to_row
from foreman.events.log import _SCHEMA, EVENT_COLUMNS
from foreman.events.projection import insert_rows, upsert
from foreman.events.types import EVENT_TYPES, STORED, Event, RecordedEvent, decode, encode

Case = tuple[str, str, Callable[[], object]]
"""(group, option, run once over every event)."""


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def encode_cases(events: list[Event]) -> list[Case]:
    exclude = {"type"}
    cases: list[Case] = [
        ("encode", "model_dump_json(exclude={'type'}) (before)",
         lambda: [e.model_dump_json(exclude={"type"}) for e in events]),
        ("encode", "__pydantic_serializer__.to_json(exclude=...) .decode()",
         lambda: [e.__pydantic_serializer__.to_json(e, exclude=exclude).decode() for e in events]),
        ("encode", "json.dumps(model_dump(mode='json'))",
         lambda: [json.dumps(e.model_dump(mode="json", exclude=exclude), separators=(",", ":"))
                  for e in events]),
    ]  # fmt: skip
    if _available("orjson"):
        import orjson  # noqa: PLC0415 - optional: measured when installed

        cases.append(
            ("encode", "orjson.dumps(model_dump()).decode()",
             lambda: [orjson.dumps(e.model_dump(exclude=exclude)).decode() for e in events])
        )  # fmt: skip
    if _available("msgspec"):
        import msgspec  # noqa: PLC0415 - optional: measured when installed

        encoder = msgspec.json.Encoder()
        cases.append(
            ("encode", "msgspec encode(model_dump()).decode()",
             lambda: [encoder.encode(e.model_dump(exclude=exclude)).decode() for e in events])
        )  # fmt: skip
    return cases


def decode_cases(rows: list[tuple[str, str]]) -> list[Case]:
    classes = [(EVENT_TYPES[t], data) for t, data in rows]
    cases: list[Case] = [
        ("decode", "types.decode: model_validate_json(context) (kept)",
         lambda: [decode(t, 1, data) for t, data in rows]),
        ("decode", "model_validate_json, no context",
         lambda: [cls.model_validate_json(data) for cls, data in classes]),
        ("decode", "json.loads + model_validate(context)",
         lambda: [cls.model_validate(json.loads(data), context=STORED) for cls, data in classes]),
        ("decode", "json.loads alone (a dict, no event)",
         lambda: [json.loads(data) for _, data in classes]),
        ("decode", "json.loads + model_construct (no validation)",
         lambda: [cls.model_construct(**json.loads(data)) for cls, data in classes]),
    ]  # fmt: skip
    if _available("orjson"):
        import orjson  # noqa: PLC0415 - optional: measured when installed

        cases += [
            ("decode", "orjson.loads + model_validate(context)",
             lambda: [cls.model_validate(orjson.loads(data), context=STORED)
                      for cls, data in classes]),
            ("decode", "orjson.loads alone (a dict, no event)",
             lambda: [orjson.loads(data) for _, data in classes]),
        ]  # fmt: skip
    if _available("msgspec"):
        import msgspec  # noqa: PLC0415 - optional: measured when installed

        decoder = msgspec.json.Decoder()
        cases.append(
            ("decode", "msgspec decode alone (a dict, no event)",
             lambda: [decoder.decode(data) for _, data in classes])
        )  # fmt: skip
    return cases


def hash_cases(rows: list[tuple[Any, ...]]) -> list[Case]:
    sha256 = hashlib.sha256

    def current() -> None:
        head = GENESIS
        for row in rows:
            head = chain_hash(head, *row)

    def inline() -> None:
        head = GENESIS
        for seq, id_, stream, version, type_, schema, data, at in rows:
            head = sha256(
                f"{head}\x1f{seq}\x1f{id_}\x1f{stream}\x1f{version}\x1f{type_}"
                f"\x1f{schema}\x1f{at}\x1f{data}".encode()
            ).hexdigest()

    def joined() -> None:
        head = GENESIS
        for seq, id_, stream, version, type_, schema, data, at in rows:
            content = "\x1f".join((head, str(seq), id_, stream, str(version), type_, str(schema),
                                   at, data))  # fmt: skip
            head = sha256(content.encode()).hexdigest()

    def sha_only() -> None:
        for row in rows:
            sha256(row[6].encode()).hexdigest()

    return [
        ("hash", "chain.chain_hash per row (before)", current),
        ("hash", "the same f-string inlined in the loop", inline),
        ("hash", "'\\x1f'.join of the columns", joined),
        ("hash", "sha256(data) alone: the floor of any chain", sha_only),
    ]


_INSERT_EVENT = f"INSERT INTO events VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
Insert = Callable[[Any, list[tuple[Any, ...]]], object]


def _one_per_statement(conn: Any, chunk: list[tuple[Any, ...]]) -> None:
    conn.executemany(_INSERT_EVENT, chunk)


def _many_per_statement(conn: Any, chunk: list[tuple[Any, ...]]) -> None:
    insert_rows(conn, "INSERT INTO events", chunk)


def sqlite_cases(rows: list[tuple[Any, ...]], batch: int) -> list[Case]:
    chunks = [rows[i : i + batch] for i in range(0, len(rows), batch)]

    def insert_and_read(
        name: str, connect: Callable[[str], Any], insert: Insert
    ) -> Callable[[], None]:
        """The event rows written a commit at a time by ``insert``, then read back, through
        ``connect``'s driver (both take the same calls)."""

        def run() -> None:
            path = scratch(f"codecs-{name}.db")
            conn = connect(str(path))
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = OFF")
            for statement in _SCHEMA:
                conn.execute(statement)
            for chunk in chunks:
                conn.execute("BEGIN IMMEDIATE")
                insert(conn, chunk)
                conn.execute("COMMIT")
            list(conn.execute("SELECT * FROM events ORDER BY seq"))
            conn.close()
            remove_db(path)

        return run

    def connect(path: str) -> sqlite3.Connection:
        return sqlite3.connect(path, isolation_level=None)

    cases: list[Case] = [
        ("sqlite", "sqlite3: insert + read back, a row per statement (before)",
         insert_and_read("sqlite3", connect, _one_per_statement)),
        ("sqlite", "sqlite3: the same, insert_rows: 128 rows per statement",
         insert_and_read("sqlite3-many", connect, _many_per_statement)),
    ]  # fmt: skip
    if _available("apsw"):
        import apsw  # noqa: PLC0415 - optional: measured when installed

        with_apsw = insert_and_read("apsw", apsw.Connection, _one_per_statement)
        cases.append(
            ("sqlite", f"apsw (SQLite {apsw.sqlite_lib_version()}), a row per statement", with_apsw)
        )
    return cases


def jobs_cases(rows: list[tuple[Any, ...]], batch: int) -> list[Case]:
    """The jobs rows a group commit writes: one per event, the job as that event left it."""
    projection = JobsProjection()
    states: dict[str, Any] = {}
    job_rows = []
    for row in rows:
        event = RecordedEvent(*row)
        states[event.stream] = job = projection.evolve(states.get(event.stream), event)
        job_rows.append(_to_row(job))
    chunks = [job_rows[i : i + batch] for i in range(0, len(job_rows), batch)]
    every = f"INSERT OR REPLACE INTO jobs VALUES ({', '.join('?' * len(Job._fields))})"

    def write(how: Callable[[sqlite3.Connection, list[Any]], object]) -> Callable[[], None]:
        def run() -> None:
            conn = sqlite3.connect(":memory:", isolation_level=None)
            projection.create(conn)
            for chunk in chunks:
                how(conn, chunk)
            conn.close()

        return run

    return [
        ("jobs rows", "executemany, every column bound",
         write(lambda conn, chunk: conn.executemany(every, chunk))),
        ("jobs rows", "NULL columns not bound, a row per statement (before)",
         write(lambda conn, chunk: _upsert_one_per_statement(conn, Job._fields, chunk))),
        ("jobs rows", "projection.upsert: the same, 128 rows per statement",
         write(lambda conn, chunk: upsert(conn, "jobs", Job._fields, chunk))),
    ]  # fmt: skip


def _upsert_one_per_statement(
    conn: sqlite3.Connection, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> None:
    """``projection.upsert`` as it was before ``insert_rows``: one statement per row."""
    nones = (None,) * len(columns)
    shapes: dict[tuple[bool, ...], list[tuple[Any, ...]]] = {}
    for row in rows:
        shape = tuple(map(operator.is_not, row, nones))
        shapes.setdefault(shape, []).append(tuple(itertools.compress(row, shape)))
    for shape, shaped in shapes.items():
        names = ", ".join(itertools.compress(columns, shape))
        marks = ", ".join("?" * len(shaped[0]))
        conn.executemany(f"INSERT OR REPLACE INTO jobs ({names}) VALUES ({marks})", shaped)


def timed(cases: list[Case], events: int, repeat: int) -> list[dict[str, Any]]:
    best = [float("inf")] * len(cases)
    for round_ in range(1, repeat + 1):
        progress(f"round {round_}/{repeat} ...")
        for index, (_, _, run) in enumerate(cases):
            started = time.perf_counter()
            run()
            best[index] = min(best[index], time.perf_counter() - started)
    return [
        {"group": group, "option": option, "us_per_event": 1e6 * seconds / events}
        for (group, option, _), seconds in zip(cases, best, strict=True)
    ]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    info = machine()
    work = build_work(args.events)
    events = [event for _, event in work]
    texts = [encode(event) for event in events]
    stored = [(event.type, text) for event, text in zip(events, texts, strict=True)]
    versions: dict[str, int] = {}
    rows = []
    for seq, ((stream, event), text) in enumerate(zip(work, texts, strict=True), 1):
        versions[stream] = version = versions.get(stream, 0) + 1
        at = "2026-12-01T00:00:00.000000Z"
        rows.append((seq, f"{seq:026d}", stream, version, event.type, 1, text, at))
    chained = []
    head = GENESIS
    for row in rows:
        head = chain_hash(head, *row)
        chained.append((*row, head))
    cases = (
        encode_cases(events)
        + decode_cases(stored)
        + hash_cases(rows)
        + sqlite_cases(chained, args.batch)
        + jobs_cases(chained, args.batch)
    )
    results = timed(cases, len(events), args.repeat)
    text = table(
        ["group", "option", "µs/event"],
        [[r["group"], r["option"], fmt_float(r["us_per_event"], 2)] for r in results],
    )
    text += (
        f"\n\n{len(events):,} events of the append.py workload; best of {args.repeat} "
        "interleaved rounds. decode: every event, JobSucceeded included."
    )
    emit(args.json, {"benchmark": "codecs", "machine": info, "results": results}, text)


if __name__ == "__main__":
    main(sys.argv[1:])
