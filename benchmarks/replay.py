"""Replay: rebuild the jobs projection from a long log, and where the time goes.

Rows, on the same log (built once with ``log.append_many`` at durability OFF and
cached under ``benchmarks/.work/``, keyed by event count):

  rows      ``log.rows()``: read the raw rows
  read      ``log.read()``: the rows as RecordedEvents (whatever decoding ``read``
            does itself: the core decodes ``data`` lazily, when ``.event`` is asked)
  decode    ``log.read()`` and ``.event`` of every event: every payload decoded (pydantic)
  evolve    the jobs projection's ``key`` + ``evolve`` over every event, decoded
            beforehand (reading and decoding not timed): the fold alone
  state_at  ``replay.state_at()``: fold every event in memory, nothing written (an
            API of its own, for comparison)
  floor     not a rebuild: SQLite alone doing a rebuild's reads and writes in one
            transaction: read every row, drop the jobs table and make it again, write
            the jobs rows the rebuild ends with (as ``projection.upsert`` writes them,
            grouped by shape before the clock starts); no decoding, folding or books:
            a bound on what a rebuild can reach
  rebuild   ``replay.rebuild(log, jobs)``: drop the projection and fold every event
            into it again in one transaction: read, decode what the fold needs,
            evolve, ``Fold``'s bookkeeping, write the projection

The ``gc s`` column is the time spent in Python's cyclic garbage collector
during the row (measured with ``gc.callbacks``).

    python benchmarks/replay.py [--events N] [--rebuild-cache] [--json]
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from _logs import cached_log
from _report import Stopwatch, emit, fmt_float, fmt_int, machine, median_run, progress, rate, table

from foreman.events.jobs import SELECT_JOBS, Job, JobsProjection
from foreman.events.log import Durability, EventLog
from foreman.events.projection import by_shape, insert_rows
from foreman.events.replay import rebuild, state_at
from foreman.events.store import open_log

TARGET = 200_000
"""Events/s a full rebuild must reach."""
CHUNK = 20_000
"""Events decoded at a time for the evolve row."""


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    what: str
    events: int
    seconds: float
    """The median run's."""
    gc_seconds: float
    runs: tuple[float, ...]
    """Seconds of every run."""

    @property
    def events_per_second(self) -> float:
        return rate(self.events, self.seconds)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "events_per_second": self.events_per_second}


RowRun = Callable[[EventLog, Stopwatch], int]
"""Runs one row's work, timing it with the stopwatch; returns the events it saw."""


def count_rows(log: EventLog, watch: Stopwatch) -> int:
    with watch:
        return sum(1 for _ in log.rows())


def count_read(log: EventLog, watch: Stopwatch) -> int:
    with watch:
        return sum(1 for _ in log.read())


def count_decoded(log: EventLog, watch: Stopwatch) -> int:
    with watch:
        return sum(1 for recorded in log.read() if recorded.event is not None)


def evolve_only(log: EventLog, watch: Stopwatch) -> int:
    """Time the fold alone: read and decode a chunk (untimed), then fold it (timed)."""
    projection = JobsProjection()
    states: dict[str, Any] = {}
    events = 0
    head = log.head()[0]
    for after in range(0, head, CHUNK):
        # Decoded now, untimed.
        batch = [r.with_event_decoded() for r in log.read(after, min(after + CHUNK, head))]
        with watch:
            for recorded in batch:
                key = projection.key(recorded)
                if key is not None:
                    states[key] = projection.evolve(states.get(key), recorded)
        events += len(batch)
    return events


def fold_in_memory(log: EventLog, watch: Stopwatch) -> int:
    with watch:
        state_at(log, JobsProjection())
    return log.head()[0]  # state_at folds every event up to the head


def sqlite_floor(log: EventLog, watch: Stopwatch) -> int:
    """SQLite's share of a rebuild: its reads and writes, nothing else (see the module)."""
    projection = JobsProjection()
    rows = log.conn.execute(f"{SELECT_JOBS} ORDER BY id").fetchall()
    # Grouped now, untimed: a chunk's worth of rows at a time, as a rebuild writes them.
    writes = [
        by_shape("jobs", Job._fields, rows[start : start + CHUNK])
        for start in range(0, len(rows), CHUNK)
    ]
    with watch, log.transaction():
        events = sum(len(batch) for batch in log.batches(0, None, chunk=CHUNK))
        projection.drop(log.conn)
        projection.create(log.conn)
        for shapes in writes:
            for head, shaped in shapes:
                insert_rows(log.conn, head, shaped)
    return events


def full_rebuild(log: EventLog, watch: Stopwatch) -> int:
    with watch:
        return rebuild(log, JobsProjection())


def timed(log: EventLog, name: str, what: str, run: RowRun, repeat: int) -> Row:
    """Run a row ``repeat`` times; keep the median run."""
    runs: list[tuple[float, float, int]] = []
    for number in range(1, repeat + 1):
        progress(f"{name}: {what} (run {number}/{repeat}) ...")
        gc.collect()
        watch = Stopwatch()
        events = run(log, watch)
        runs.append((watch.seconds, watch.gc_seconds, events))
    seconds, gc_seconds, events = median_run(runs, lambda run: run[0])
    return Row(name, what, events, seconds, gc_seconds, tuple(run[0] for run in runs))


def measure(log: EventLog, repeat: int) -> list[Row]:
    rows: list[tuple[str, str, RowRun]] = [
        ("rows", "log.rows(): read raw rows", count_rows),
        ("read", "log.read(): RecordedEvents", count_read),
        ("decode", "log.read() + .event: decode every payload", count_decoded),
        ("evolve", "jobs key() + evolve() alone, pre-decoded", evolve_only),
        ("state_at", "replay.state_at(): fold in memory", fold_in_memory),
        ("floor", "SQLite alone: read rows, drop, write jobs rows", sqlite_floor),
        ("rebuild", "replay.rebuild(): fold and write projection", full_rebuild),
    ]
    return [timed(log, name, what, run, repeat) for name, what, run in rows]


def check(log: EventLog, rows: list[Row], events: int) -> int:
    """Every row saw every event and the rebuilt projection's checkpoint is the head;
    returns the number of jobs."""
    if any(row.events != events for row in rows):
        raise RuntimeError(f"a row did not see all {events} events: {rows}")
    checkpoint = log.checkpoint(JobsProjection())
    if checkpoint is None or checkpoint[1] != events:
        raise RuntimeError(f"rebuild stopped at {checkpoint}, the log has {events} events")
    return int(log.conn.execute("SELECT count(*) FROM jobs").fetchone()[0])


def report(rows: list[Row], jobs: int, reused: bool, build_seconds: float, args: Any) -> str:
    total = rows[-1].seconds
    lines = [
        table(
            ["row", "what", "events", "seconds", "events/s", "of rebuild", "gc s"],
            [
                [
                    row.name,
                    row.what,
                    row.events,
                    fmt_float(row.seconds, 2),
                    fmt_int(row.events_per_second),
                    f"{100 * row.seconds / total:.0f}%",
                    fmt_float(row.gc_seconds, 2),
                ]
                for row in rows
            ],
            left=2,
        ),
        "",
        f"log: {rows[0].events:,} events, {jobs:,} jobs; "
        + (
            "cached log reused (no build)"
            if reused
            else f"built for this run in {build_seconds:.1f} s (durability OFF)"
        )
        + f"; rebuild at durability {args.durability.value.upper()}.",
        f"Median of {args.repeat} run{'s' if args.repeat > 1 else ''} per row.",
        "A rebuild reads (rows, read), decodes what its fold needs (decode: the cost of all of",
        "it), evolves (evolve), keeps Fold's books and writes the projection. state_at is an API",
        "of its own, for comparison. floor: SQLite alone doing the rebuild's reads and writes.",
        "gc s: time in Python's cyclic garbage collector.",
    ]
    speed = rows[-1].events_per_second
    floor = next(row for row in rows if row.name == "floor")
    verdict = "met" if speed >= TARGET else "NOT met"
    lines.append(
        f"target: rebuild >= {TARGET:,} events/s: {verdict} ({speed:,.0f}/s; "
        f"{100 * speed / floor.events_per_second:.0f}% of the floor's "
        f"{floor.events_per_second:,.0f}/s)"
    )
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the log")
    parser.add_argument("--durability", type=Durability, default=Durability.FULL)
    parser.add_argument("--repeat", type=int, default=1, help="runs per row; the median is shown")
    parser.add_argument(
        "--rebuild-cache", action="store_true", help="build the cached log again first"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse(argv)
    info = machine()  # before the run: the commit whose code is imported
    path, reused, build_seconds = cached_log(args.events, rebuild=args.rebuild_cache)
    progress(f"log {path} ({'reused' if reused else 'built'})")
    log = open_log(path, durability=args.durability)
    try:
        rows = measure(log, args.repeat)
        jobs = check(log, rows, args.events)
    finally:
        log.close()
    document = {
        "benchmark": "replay",
        "machine": info,
        "events": args.events,
        "jobs": jobs,
        "log_reused": reused,
        "build_seconds": build_seconds,
        "durability": args.durability.value,
        "target_events_per_second": TARGET,
        "rows": [row.as_dict() for row in rows],
    }
    emit(args.json, document, report(rows, jobs, reused, build_seconds, args))


if __name__ == "__main__":
    main(sys.argv[1:])
