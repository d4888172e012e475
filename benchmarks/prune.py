"""Pruning a large backlog must not stall the server: request latency during the prune.

Foreman runs as a process on a copy of the cached 1,000,000-event log (``_logs.py``:
333,824 jobs, 332,800 of them succeeded, the rest left queued or running, which
recovery queues again), in front of a simulator whose every generation stalls for an
hour. Meanwhile one client sends, one at a time, ``POST /jobs`` (a durable commit) then
``GET /jobs/{id}`` of a random job it submitted, and notes each request's wall-clock
start and its latency. Two runs:

- **prune**: ``FOREMAN_JOB_TTL=1ms``, ``FOREMAN_JANITOR_INTERVAL`` 10 s, so the first
  sweep prunes every succeeded job a few seconds after start; the requests go on
  until Foreman logs ``janitor: pruned N jobs``, and ``--after`` seconds more. The
  requests are split by when they started: before the first ``JobPruned`` was
  recorded, between the first and the last (during), after;
- **control**: the same with ``FOREMAN_JOB_TTL`` 1,000,000 h (nothing to prune), for
  ``--control-seconds``.

    python benchmarks/prune.py [--events N] [--interval S] [--no-control] [--json]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import trio
from _logs import cached_log, copy_db
from _report import Cell, emit, fmt_float, machine, progress, table
from _servers import (
    foreman_on,
    limits,
    percentile,
    sim_config,
    simulator,
    stall_backend,
    wait_healthy,
)

DONE = b"janitor: pruned"
BODY = {
    "kind": "chat",
    "request": {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]},
}
STALL_MS = 1000.0
"""A request during the prune that takes this long counts as a stall (ADR-0027 asks for
none and gives no number: this one is the benchmark's)."""


@dataclass(frozen=True, slots=True)
class Sample:
    kind: str
    """``POST`` or ``GET``."""
    at: float
    """Unix time the request was sent."""
    ms: float


@dataclass(frozen=True, slots=True)
class Run:
    name: str
    samples: list[Sample]
    pruned: int
    first: float | None
    """Unix time of the first and the last ``JobPruned`` (None: none recorded)."""
    last: float | None


def pruned_span(db: Path) -> tuple[int, float | None, float | None]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        count, first, last = conn.execute(
            "SELECT count(*), min(recorded_at), max(recorded_at) FROM events "
            "WHERE type = 'JobPruned'"
        ).fetchone()
    finally:
        conn.close()
    unix = [datetime.fromisoformat(stamp).timestamp() if stamp else None for stamp in (first, last)]
    return count, unix[0], unix[1]


async def one_run(args: argparse.Namespace, source: Path, sim: str, name: str, ttl: str) -> Run:
    db = Path(source).with_name(f"prune-{name}.db")
    copy_db(source, db)
    shutil.rmtree(db.with_suffix(".artifacts"), ignore_errors=True)
    env = {
        "FOREMAN_JOB_TTL": ttl,
        "FOREMAN_JANITOR_INTERVAL": f"{args.interval}s",
        "FOREMAN_MAX_QUEUE": "1000000",
        "FOREMAN_SHUTDOWN_GRACE": "0",
    }
    samples: list[Sample] = []
    rng = random.Random(1)
    async with (
        foreman_on(f"prune-{name}", db, sim, env) as served,
        httpx.AsyncClient(base_url=served.url, limits=limits(1), timeout=120) as client,
    ):
        await wait_healthy(client, served.url)
        until = "the prune is done" if name == "prune" else f"{args.control_seconds:g} s"
        progress(f"{name}: Foreman is up; requests until {until} ...")
        ids: list[str] = []
        started, offset, done_at = time.monotonic(), 0, None
        deadline = started + (args.control_seconds if name == "control" else args.timeout)
        while time.monotonic() < deadline:
            at, begin = time.time(), time.perf_counter()
            response = await client.post("/jobs", json=BODY)
            samples.append(Sample("POST", at, (time.perf_counter() - begin) * 1000))
            if response.status_code != 202:
                raise RuntimeError(f"POST /jobs answered {response.status_code}: {response.text}")
            ids.append(response.json()["job_id"])
            at, begin = time.time(), time.perf_counter()
            response = await client.get(f"/jobs/{rng.choice(ids)}")
            samples.append(Sample("GET", at, (time.perf_counter() - begin) * 1000))
            response.raise_for_status()
            if name == "prune" and done_at is None:  # read the log's new lines only
                with open(served.log, "rb") as log:  # noqa: ASYNC230 (a local file)
                    log.seek(offset)
                    new = log.read()
                offset += max(0, len(new) - len(DONE))
                if DONE in new:
                    done_at = time.monotonic()
                    deadline = done_at + args.after
                    progress(f"{name}: the janitor is done; {args.after:g} s more ...")
    return Run(name, samples, *pruned_span(db))


def phases(run: Run) -> dict[str, list[Sample]]:
    if run.first is None or run.last is None:
        return {"all": run.samples}
    first, last = run.first, run.last
    return {
        "before the prune": [s for s in run.samples if s.at < first],
        "during the prune": [s for s in run.samples if first <= s.at <= last],
        "after the prune": [s for s in run.samples if s.at > last],
    }


def stats(samples: list[Sample], kind: str) -> dict[str, Any]:
    ms = [s.ms for s in samples if s.kind == kind]
    return {
        "requests": len(ms),
        "p50_ms": percentile(ms, 50) if ms else None,
        "p99_ms": percentile(ms, 99) if ms else None,
        "max_ms": max(ms, default=None),
    }


async def run_all(args: argparse.Namespace, source: Path) -> list[Run]:
    async with (
        simulator("subprocess", sim_config(0.0, 0.0, 8)) as sim,
        httpx.AsyncClient(timeout=30) as control,
    ):
        await stall_backend(control, sim)
        runs = [await one_run(args, source, sim, "prune", "1ms")]
        if args.control:
            runs.append(await one_run(args, source, sim, "control", "1000000h"))
    return runs


HEADERS = ["run", "phase", "seconds", "POSTs", "POST p50", "POST p99", "POST max",
           "GETs", "GET p50", "GET p99", "GET max"]  # fmt: skip


def report(runs: list[Run], args: argparse.Namespace, cache: str) -> str:
    rows: list[list[Cell]] = []
    for run in runs:
        for phase, samples in phases(run).items():
            post, get = stats(samples, "POST"), stats(samples, "GET")
            span = samples[-1].at - samples[0].at if samples else 0.0
            row: list[Cell] = [run.name, phase, fmt_float(span, 1)]
            for part in (post, get):
                row.append(part["requests"])
                row += [part[key] for key in ("p50_ms", "p99_ms", "max_ms")]
            rows.append(row)
    prune = runs[0]
    seconds = (prune.last or 0.0) - (prune.first or 0.0)
    lines = [
        table(HEADERS, rows, left=2),
        "",
        f"log: {args.events:,} events ({cache}), copied for each run; Foreman a process, "
        f"durability FULL, janitor every {args.interval:g} s; backend stalled.",
        "Sequential requests from one connection: POST /jobs, then GET /jobs/{id} of a job "
        "it submitted; latencies in ms; phases by when the request was sent, against the "
        "first and last JobPruned's recorded_at.",
        f"prune: {prune.pruned:,} jobs pruned in {seconds:.1f} s (first to last JobPruned): "
        f"{prune.pruned / seconds if seconds > 0 else 0:,.0f} jobs/s.",
    ]
    during = phases(prune).get("during the prune", [])
    if len(runs) > 1 and during:
        for kind in ("POST", "GET"):
            now, base = stats(during, kind), stats(runs[1].samples, kind)
            lines.append(
                f"{kind} during the prune vs the control run: p50 {now['p50_ms']:.2f} vs "
                f"{base['p50_ms']:.2f} ms ({now['p50_ms'] / base['p50_ms']:.1f}x), p99 "
                f"{now['p99_ms']:.2f} vs {base['p99_ms']:.2f} ms "
                f"({now['p99_ms'] / base['p99_ms']:.1f}x), max {now['max_ms']:.2f} vs "
                f"{base['max_ms']:.2f} ms"
            )
        longest = max(sample.ms for sample in during)
        verdict = "met" if longest < STALL_MS else "NOT met"
        lines.append(
            f"target: pruning does not stall the server (ADR-0027; here: no request during the "
            f"prune takes {STALL_MS:,.0f} ms or more): {verdict} (longest {longest:.2f} ms)"
        )
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="the cached log's size")
    parser.add_argument("--interval", type=float, default=10.0, help="janitor interval, s")
    parser.add_argument("--after", type=float, default=3.0, help="s of requests after the prune")
    parser.add_argument("--control-seconds", type=float, default=15.0)
    parser.add_argument("--no-control", dest="control", action="store_false")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up the prune after")
    parser.add_argument("--rebuild-cache", action="store_true")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse(argv)
    info = machine()
    source, reused, build_seconds = cached_log(args.events, rebuild=args.rebuild_cache)
    cache = "cached log reused" if reused else f"built in {build_seconds:.0f} s"
    runs = trio.run(run_all, args, source)
    document = {
        "benchmark": "prune",
        "machine": info,
        "events": args.events,
        "interval_seconds": args.interval,
        "runs": [
            {
                "name": run.name,
                "pruned": run.pruned,
                "prune_seconds": (run.last - run.first) if run.first and run.last else None,
                "phases": {
                    phase: {"post": stats(samples, "POST"), "get": stats(samples, "GET")}
                    for phase, samples in phases(run).items()
                },
            }
            for run in runs
        ],
    }
    emit(args.json, document, report(runs, args, cache))


if __name__ == "__main__":
    main(sys.argv[1:])
