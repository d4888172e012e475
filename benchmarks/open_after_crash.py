"""Open after a crash: the time of ``EventLog.open`` must not grow with the log's length.

For each size (default 10,000 and 1,000,000 events), on a fresh copy of a cached
log whose jobs projection is up to date (its checkpoint is the head):

  1. time ``EventLog.open`` + ``close`` of the clean copy (a clean restart, for comparison);
  2. start a child process that opens the copy and appends group commits of new
     jobs' events in a loop (durability FULL), and SIGKILL it once it has reported
     ``--kill-after`` committed batches: it dies mid-append, leaving a WAL behind;
  3. time ``EventLog.open`` of the crashed copy in this process: SQLite recovers the
     WAL, the log checks its format and catches its projections up (nothing to fold:
     each commit moved the checkpoint with it).

Repeated ``--repeat`` times on fresh copies; medians are reported. The copies are
in the page cache (just written), so this measures work, not cold disk reads.

    python benchmarks/open_after_crash.py [--sizes 10000 1000000] [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _logs import batches, cached_log, copy_db, remove_db, scratch, traffic
from _report import emit, fmt_float, machine, progress, table

from foreman.events.jobs import JobsProjection
from foreman.events.log import Durability, EventLog
from foreman.events.store import open_log

CHILD_TIMEOUT = 120.0
"""Seconds a child may run before it is killed anyway: the benchmark always ends."""
MAX_RATIO = 2.0
"""Open time at the biggest size over the smallest, at most: flat, not linear."""


@dataclass(frozen=True, slots=True)
class Trial:
    clean_ms: float
    crashed_ms: float
    batches_reported: int
    wal_bytes: int
    events_after: int


@dataclass(frozen=True, slots=True)
class Size:
    events: int
    reused: bool
    trials: list[Trial]

    def median(self, field: str) -> float:
        return float(statistics.median(getattr(trial, field) for trial in self.trials))

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "log_reused": self.reused,
            "clean_open_ms_median": self.median("clean_ms"),
            "open_after_crash_ms_median": self.median("crashed_ms"),
            "open_after_crash_ms_min": min(t.crashed_ms for t in self.trials),
            "open_after_crash_ms_max": max(t.crashed_ms for t in self.trials),
            "trials": [asdict(trial) for trial in self.trials],
        }


# -- the child: append until killed ---------------------------------------------


def child(path: Path, batch: int, max_batches: int) -> None:
    """Open the log and append group commits, reporting each one, until killed."""
    log = open_log(path, durability=Durability.FULL)
    for done, appends in enumerate(batches(traffic(batch * max_batches), batch), start=1):
        for result in log.append_many(appends):
            if isinstance(result, Exception):
                raise result
        print(f"committed {done}", flush=True)
    log.close()


# -- the parent ---------------------------------------------------------------------


def timed_open(path: Path) -> tuple[float, EventLog]:
    started = time.perf_counter()
    log = open_log(path, durability=Durability.FULL)
    return (time.perf_counter() - started) * 1000, log


def crash(path: Path, batch: int, kill_after: int) -> int:
    """Run a child appending to ``path``; SIGKILL it after ``kill_after`` reported
    commits. Returns the commits it reported."""
    command = [sys.executable, __file__, "--child", str(path), "--batch", str(batch)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(CHILD_TIMEOUT, process.kill)
    watchdog.start()
    reported = 0
    try:
        for line in process.stdout or ():
            reported = int(line.split()[1])
            if reported >= kill_after:
                os.kill(process.pid, signal.SIGKILL)
                break
    finally:
        watchdog.cancel()
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
    if reported < kill_after or process.returncode != -signal.SIGKILL:
        raise RuntimeError(
            f"the child ended with {process.returncode} after {reported} commits, "
            f"before it could be killed after {kill_after}"
        )
    return reported


def trial(source: Path, events: int, number: int, args: argparse.Namespace) -> Trial:
    copy = scratch(f"crash-{events}-{number}.db")
    try:
        copy_db(source, copy)
        clean_ms, log = timed_open(copy)
        log.close()
        reported = crash(copy, args.batch, args.kill_after)
        wal = Path(f"{copy}-wal")
        wal_bytes = wal.stat().st_size if wal.exists() else 0
        crashed_ms, log = timed_open(copy)
        try:
            head, _ = log.head()
            checkpoint = log.checkpoint(JobsProjection())
        finally:
            log.close()
        if head < events + reported * args.batch or checkpoint is None or checkpoint[1] != head:
            raise RuntimeError(f"{copy}: head {head}, checkpoint {checkpoint} after the crash")
        return Trial(clean_ms, crashed_ms, reported, wal_bytes, head)
    finally:
        remove_db(copy)


def measure(events: int, args: argparse.Namespace) -> Size:
    source, reused, _ = cached_log(events)
    trials = []
    for number in range(1, args.repeat + 1):
        progress(f"{events:,} events: trial {number}/{args.repeat} ...")
        trials.append(trial(source, events, number, args))
    return Size(events, reused, trials)


def report(sizes: list[Size], args: argparse.Namespace) -> str:
    base = sizes[0].median("crashed_ms")
    rows = [
        [
            f"{size.events:,}",
            "reused" if size.reused else "built",
            f"{size.median('events_after'):,.0f}",
            f"{size.median('wal_bytes') / 1e6:,.1f}",
            fmt_float(size.median("clean_ms"), 1),
            fmt_float(size.median("crashed_ms"), 1),
            fmt_float(min(t.crashed_ms for t in size.trials), 1),
            fmt_float(max(t.crashed_ms for t in size.trials), 1),
            f"{size.median('crashed_ms') / base:,.2f}x",
        ]
        for size in sizes
    ]
    ratio = sizes[-1].median("crashed_ms") / base
    verdict = "met" if ratio <= MAX_RATIO else "NOT met"
    return "\n".join(
        [
            table(
                [
                    "log size",
                    "cache",
                    "events after crash",
                    "WAL MB",
                    "clean open ms",
                    "open after crash ms",
                    "min",
                    "max",
                    "vs smallest",
                ],
                rows,
                left=2,
            ),
            "",
            f"Medians of {args.repeat} trials, each on a fresh copy of a log whose projection is",
            f"up to date; the child committed >= {args.kill_after} batches of {args.batch:,} "
            "events (durability FULL), then got SIGKILL mid-append.",
            "clean open: EventLog.open + close of the copy before the crash, for comparison.",
            f"target: open time does not grow with the log (here: at most {MAX_RATIO:.1f}x): "
            f"{verdict} ({sizes[-1].events:,} / {sizes[0].events:,} events: {ratio:.2f}x)",
        ]
    )


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=5, help="trials per size")
    parser.add_argument("--batch", type=int, default=1024, help="events per child commit")
    parser.add_argument("--kill-after", type=int, default=3, help="child commits before kill")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--max-batches", type=int, default=10_000, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse(argv)
    if args.child is not None:
        child(args.child, args.batch, args.max_batches)
        return
    info = machine()  # before the run: the commit whose code is imported
    sizes = [measure(events, args) for events in sorted(args.sizes)]
    document = {
        "benchmark": "open_after_crash",
        "machine": info,
        "batch": args.batch,
        "kill_after": args.kill_after,
        "repeat": args.repeat,
        "sizes": [size.as_dict() for size in sizes],
        "ratio_largest_to_smallest": sizes[-1].median("crashed_ms") / sizes[0].median("crashed_ms"),
    }
    emit(args.json, document, report(sizes, args))


if __name__ == "__main__":
    main(sys.argv[1:])
