"""Where the time goes: cProfile of the hot paths, top functions by own time (tottime).

Sections:

  append_many  ``log.append_many`` in batches of ``--batch`` one-event appends
               (the workload of append.py's row (b), durability FULL)
  journal      the trio side of append.py's row (c): writer tasks awaiting
               ``client.append`` (cProfile sees only this thread: the journal's own
               thread runs ``append_many``, profiled above)
  rebuild      ``replay.rebuild`` of the jobs projection on the cached log of
               ``--replay-events`` events (replay.py's log)

cProfile roughly doubles the run time of Python-heavy code: read the shares, not
the seconds.

    python benchmarks/profile_hot_paths.py [--events N] [--replay-events N] [--top 10] [--json]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import append
from _logs import Work, build_work, cached_log, chunked, remove_db, scratch
from _report import Stopwatch, emit, fmt_float, fmt_int, machine, progress, table

from foreman.events.jobs import JobsProjection
from foreman.events.log import Durability
from foreman.events.replay import rebuild
from foreman.events.store import open_log


def where(file: str, line: int, function: str) -> str:
    """A short name for a profiled function: the path from the package on."""
    if file == "~":
        return function  # a builtin, e.g. <method 'execute' of 'sqlite3.Connection' objects>
    parts = Path(file).parts
    for anchor in ("foreman", "site-packages", "benchmarks"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + (anchor == "site-packages") :]
            break
    else:
        parts = parts[-2:]
    return f"{'/'.join(parts)}:{line}({function})"


def top(profile: cProfile.Profile, count: int) -> tuple[float, list[dict[str, Any]]]:
    """The total profiled time and the ``count`` functions with the most own time."""
    stats = pstats.Stats(profile)
    entries = [
        {"function": where(*key), "calls": calls, "tottime": own, "cumtime": cumulative}
        for key, (_, calls, own, cumulative, _) in stats.stats.items()  # type: ignore[attr-defined]
    ]
    entries.sort(key=lambda entry: entry["tottime"], reverse=True)
    return stats.total_tt, entries[:count]  # type: ignore[attr-defined]


def profiled(run: Callable[[], object]) -> cProfile.Profile:
    profile = cProfile.Profile()
    profile.enable()
    try:
        run()
    finally:
        profile.disable()
    return profile


def profile_append_many(work: Work, batch: int) -> cProfile.Profile:
    path = scratch("profile-append-many.db")
    chunks = chunked(work, batch)
    log = open_log(path, durability=Durability.FULL)
    try:
        return profiled(lambda: append.commit_all(log, chunks))
    finally:
        log.close()
        remove_db(path)


def profile_journal(work: Work, writers: int) -> cProfile.Profile:
    path = scratch("profile-journal.db")
    try:
        watch = Stopwatch()
        return profiled(lambda: append.journal(path, work, Durability.FULL, watch, writers))
    finally:
        remove_db(path)


def profile_rebuild(events: int) -> cProfile.Profile:
    path, _, _ = cached_log(events)
    log = open_log(path, durability=Durability.FULL)
    try:
        return profiled(lambda: rebuild(log, JobsProjection()))
    finally:
        log.close()


def section_text(name: str, total: float, entries: list[dict[str, Any]]) -> str:
    rows = [
        [
            entry["function"],
            entry["calls"],
            fmt_float(entry["tottime"], 3),
            f"{100 * entry['tottime'] / total:.1f}%",
            fmt_float(entry["cumtime"], 3),
        ]
        for entry in entries
    ]
    heading = f"{name}: {total:.2f} s profiled"
    return f"{heading}\n{table(['function', 'calls', 'tottime', 'share', 'cumtime'], rows)}"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=60_000, help="events appended")
    parser.add_argument("--batch", type=int, default=1024, help="appends per append_many")
    parser.add_argument("--writers", type=int, default=1024, help="journal writer tasks")
    parser.add_argument("--replay-events", type=int, default=1_000_000, help="log to rebuild")
    parser.add_argument("--top", type=int, default=10, help="functions per section")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse(argv)
    info = machine()  # before the run: the commit whose code is imported
    work = build_work(args.events)
    runs: list[tuple[str, Callable[[], cProfile.Profile]]] = [
        (f"append_many ({fmt_int(args.events)} events, batches of {args.batch:,})",
         lambda: profile_append_many(work, args.batch)),
        (f"journal, trio side ({fmt_int(args.events)} events, {args.writers:,} writers)",
         lambda: profile_journal(work, args.writers)),
        (f"rebuild ({fmt_int(args.replay_events)} events)",
         lambda: profile_rebuild(args.replay_events)),
    ]  # fmt: skip
    sections: list[dict[str, Any]] = []
    texts: list[str] = []
    for name, run in runs:
        progress(f"profiling {name} ...")
        total, entries = top(run(), args.top)
        sections.append({"name": name, "total_seconds": total, "top": entries})
        texts.append(section_text(name, total, entries))
    document = {"benchmark": "profile", "machine": info, "sections": sections}
    text = "\n\n".join(texts)
    emit(args.json, document, text)


if __name__ == "__main__":
    main(sys.argv[1:])
