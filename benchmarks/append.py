"""Append throughput: single-event commits vs group commit, side by side.

Rows, each on a fresh database file:

  (a) single   ``log.append(stream, [event])`` per event: one transaction, one commit each
  (b) group    ``log.append_many(batch)``: ``--batch`` one-event appends per commit
  (c) journal  the real path: ``Journal`` in a trio nursery, ``--writers`` tasks each
               awaiting ``client.append(stream, [event])`` in a loop; the journal commits
               whatever appends are waiting in one transaction
  floor        not the log: SQLite alone writing the very rows (b) wrote (events, jobs
               rows, checkpoints), one transaction per commit, by ``executemany``: the
               storage's share of (b), and a bound on what the log can reach

Events are built before the clock starts: building them is the writer's work, not
the log's. Commits per row are counted from the log itself: every event of one
commit carries the same ``recorded_at``.

    python benchmarks/append.py [--durability full|normal|off] [--events N] [--json]
"""

from __future__ import annotations

import argparse
import gc
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _floor
import trio
from _logs import IN_FLIGHT, Work, build_work, chunked, remove_db, scratch
from _report import Stopwatch, emit, fmt_float, fmt_int, machine, median_run, progress, rate, table

from foreman.actors.journal import Journal, JournalClient
from foreman.events.log import Append, Durability, EventLog
from foreman.events.store import open_log

TARGET = 100_000
"""Durable events/s that group commit must reach."""


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    how: str
    events: int
    seconds: float
    gc_seconds: float
    commits: int
    runs: tuple[float, ...]
    """Seconds of every run; ``seconds`` is the median one's."""

    @property
    def events_per_second(self) -> float:
        return rate(self.events, self.seconds)

    @property
    def events_per_commit(self) -> float:
        return self.events / self.commits if self.commits else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "events_per_second": self.events_per_second,
            "events_per_commit": self.events_per_commit,
        }


def _count(path: Path, expected: int) -> int:
    """Check the row wrote every event; return its number of commits."""
    log = EventLog.open(path, read_only=True)
    try:
        events, commits = log.conn.execute(
            "SELECT count(*), count(DISTINCT recorded_at) FROM events"
        ).fetchone()
    finally:
        log.close()
    if events != expected:
        raise RuntimeError(f"{path}: {events} events written, {expected} appended")
    return int(commits)


def single(path: Path, work: Work, durability: Durability, watch: Stopwatch) -> None:
    log = open_log(path, durability=durability)
    try:
        with watch:
            for stream, event in work:
                log.append(stream, [event])
    finally:
        log.close()


def commit_all(log: EventLog, chunks: list[list[Append]]) -> None:
    for chunk in chunks:
        for result in log.append_many(chunk):
            if isinstance(result, Exception):
                raise result


def group(path: Path, work: Work, durability: Durability, watch: Stopwatch, batch: int) -> None:
    chunks = chunked(work, batch)
    log = open_log(path, durability=durability)
    try:
        with watch:
            commit_all(log, chunks)
    finally:
        log.close()


async def _writer(client: JournalClient, pending: Work) -> None:
    try:
        while pending:
            stream, event = pending.pop()
            await client.append(stream, [event])
    finally:
        await client.aclose()


async def _journal(
    path: Path, work: Work, durability: Durability, watch: Stopwatch, writers: int
) -> None:
    # Writers pop from the end: reverse once so the traffic keeps its order.
    pending = list(reversed(work))
    async with trio.open_nursery() as nursery:
        client: JournalClient = await nursery.start(Journal(path, durability=durability).run)
        try:
            with watch:
                async with trio.open_nursery() as tasks:
                    for _ in range(writers):
                        tasks.start_soon(_writer, client.clone(), pending)
        finally:
            await client.aclose()  # the journal stops once every client is closed


def journal(path: Path, work: Work, durability: Durability, watch: Stopwatch, writers: int) -> None:
    trio.run(_journal, path, work, durability, watch, writers)


def measure(
    name: str,
    how: str,
    work: Work,
    run: Callable[..., None],
    durability: Durability,
    *extra: Any,
    repeat: int = 1,
) -> Row:
    """Run one row ``repeat`` times, each on a fresh database; keep the median run.
    ``run`` times its appends with the stopwatch."""
    runs = []
    for number in range(1, repeat + 1):
        path = scratch(f"append-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.db")
        progress(f"{name}: {how} ({len(work):,} events, run {number}/{repeat}) ...")
        gc.collect()
        watch = Stopwatch()
        try:
            run(path, work, durability, watch, *extra)
            runs.append((watch.seconds, watch.gc_seconds, _count(path, len(work))))
        finally:
            remove_db(path)
    seconds, gc_seconds, commits = median_run(runs, lambda run: run[0])
    every = tuple(run[0] for run in runs)
    return Row(name, how, len(work), seconds, gc_seconds, commits, every)


def report(rows: list[Row], args: argparse.Namespace) -> str:
    baseline = rows[0].events_per_second
    lines = [
        table(
            ["row", "how", "events", "seconds", "events/s", "vs (a)", "events/commit", "gc s"],
            [
                [
                    row.name,
                    row.how,
                    row.events,
                    fmt_float(row.seconds, 3),
                    fmt_int(row.events_per_second),
                    f"{row.events_per_second / baseline:,.1f}x",
                    fmt_float(row.events_per_commit, 1),
                    fmt_float(row.gc_seconds, 2),
                ]
                for row in rows
            ],
            left=2,
        ),
        "",
        f"durability {args.durability.value.upper()}"
        f"{' (every commit fsyncs)' if args.durability is Durability.FULL else ''}; "
        f"{args.in_flight:,} jobs in flight per wave; median of {args.repeat} runs per row.",
        "Events are built before timing: event construction is the writer's work, not the log's.",
        "events/commit: events / distinct recorded_at (the log stamps one per commit).",
        "gc s: time in Python's cyclic garbage collector during the row (any thread).",
        "floor: the events, jobs rows and checkpoints that (b) committed, written again by bare",
        "executemany in the same transactions: the cost of the storage alone, a bound for (b).",
    ]
    best = max(rows[1:-1], key=lambda row: row.events_per_second)
    verdict = "met" if best.events_per_second >= TARGET else "NOT met"
    if args.durability is not Durability.FULL:
        verdict += f" (but the target is for durability FULL, this run is {args.durability.value})"
    lines.append(
        f"target: group commit >= {TARGET:,} durable events/s: {verdict} "
        f"(best: {best.name}, {best.events_per_second:,.0f}/s)"
    )
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--durability", type=Durability, default=Durability.FULL)
    parser.add_argument("--events", type=int, default=60_000, help="events per group row")
    parser.add_argument("--single-events", type=int, default=3_000, help="events for row (a)")
    parser.add_argument("--batch", type=int, default=1024, help="appends per append_many")
    parser.add_argument(
        "--writers",
        type=int,
        nargs="+",
        default=[64, 1024],
        help="journal writer tasks, one row each (1024: batches as big as row (b))",
    )
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT, help="jobs per wave")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the median is shown")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse(argv)
    info = machine()  # before the run: the commit whose code is imported
    progress("building events ...")
    single_work = build_work(args.single_events, args.in_flight)
    work = build_work(args.events, args.in_flight)
    specs: list[tuple[str, str, Work, Callable[..., None], tuple[Any, ...]]] = [
        ("(a) single", "log.append per event", single_work, single, ()),
        ("(b) group", f"log.append_many, {args.batch:,} per batch", work, group, (args.batch,)),
        *(
            (f"(c) journal W={w}", f"Journal, {w} writer tasks", work, journal, (w,))
            for w in args.writers
        ),
        ("floor", f"SQLite alone: rows of (b), {args.batch:,} per commit", work, _floor.floor,
         (args.batch,)),
    ]  # fmt: skip
    rows = [
        measure(name, how, rows_work, run, args.durability, *extra, repeat=args.repeat)
        for name, how, rows_work, run, extra in specs
    ]
    document = {
        "benchmark": "append",
        "machine": info,
        "durability": args.durability.value,
        "in_flight": args.in_flight,
        "repeat": args.repeat,
        "target_events_per_second": TARGET,
        "rows": [row.as_dict() for row in rows],
    }
    emit(args.json, document, report(rows, args))


if __name__ == "__main__":
    main(sys.argv[1:])
