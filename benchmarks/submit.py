"""Durable submission throughput: ``POST /jobs`` accepted per second, 64 concurrent clients.

Each client task has its own keep-alive connection (an ``httpx.AsyncClient`` with a
pool of one) and sends ``POST /jobs`` one after the other, taking request numbers
from a shared counter until ``--requests`` are answered. Foreman runs as a process
(``FOREMAN_MAX_QUEUE`` 1,000,000) in front of a simulator whose every generation
stalls for an hour, so the first job holds the GPU and every later one stays queued:
the worker does not compete for the CPU. Each 202 means ``JobSubmitted`` is committed
(checked afterwards: the log holds exactly as many jobs as 202s were answered).

The ceiling: the same Hypercorn server and configuration (Foreman's HTTP actor,
``serve_http``) hosting a ``POST /jobs`` that parses the same ``SubmitJob`` model and
answers 202 with a made-up id, keeping nothing (``_ceiling.py``, also a process). The
rows run in ``--repeat`` interleaved rounds; the target is judged on the median of the
rounds' Foreman / ceiling ratios.

With ``--litestream``, each durability also gets a row with Litestream replicating
Foreman's log to a local directory throughout (``litestream replicate``, a process,
``sync-interval`` 1 s as docs/backups.md sets it), in the same rounds.

    python benchmarks/submit.py [--requests N] [--clients C] [--durability full normal]
        [--litestream]
    python benchmarks/submit.py --scrape 1   # GET /metrics every second meanwhile (ADR-0044)
    python benchmarks/submit.py --dashboard  # an open /ui page meanwhile (ADR-0046)
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio
from _logs import WORK_DIR, scratch
from _report import Cell, emit, fmt_float, machine, median_run, progress, rate, table
from _servers import (
    CHAT_MODELS,
    cpu_seconds,
    dashboard_open,
    foreman_on,
    limits,
    percentile,
    program,
    scraping,
    sim_config,
    simulator,
    stall_backend,
)

from foreman.events.log import Durability

TARGET = 0.60
"""Foreman's accepted submissions per second, as a share of the ceiling's."""
JSON = {"content-type": "application/json"}


def bodies() -> list[bytes]:
    """One ``POST /jobs`` body per model, encoded once (the client's work is not timed)."""
    messages = [{"role": "user", "content": "hi"}]
    return [
        json.dumps(
            {"kind": "chat", "request": {"model": model, "messages": messages}, "priority": 0}
        ).encode()
        for model in CHAT_MODELS
    ]


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    seconds: float
    ms: tuple[float, ...]
    server_cpu: float
    """CPU seconds the server process used during the timed requests."""
    client_cpu: float
    """CPU seconds this (client) process used meanwhile."""

    @property
    def rate(self) -> float:
        return rate(len(self.ms), self.seconds)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "requests": len(self.ms),
            "seconds": self.seconds,
            "requests_per_second": self.rate,
            **{f"p{q}_ms": percentile(self.ms, q) for q in (50, 99, 100)},
            "server_cpu_seconds": self.server_cpu,
            "client_cpu_seconds": self.client_cpu,
        }


async def load(name: str, url: str, pid: int, args: argparse.Namespace) -> Row:
    """Warm up every connection, then ``args.requests`` POST /jobs from ``args.clients``."""
    payloads = bodies()
    ms: list[float] = []
    counter = itertools.count()
    warm: list[int] = []
    all_warm, start = trio.Event(), trio.Event()

    async def post(http: httpx.AsyncClient, n: int) -> float:
        started = time.perf_counter()
        response = await http.post("/jobs", content=payloads[n % len(payloads)], headers=JSON)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 202:
            raise RuntimeError(
                f"{name}: POST /jobs answered {response.status_code}: {response.text}"
            )
        return elapsed

    async def client(first: int) -> None:
        async with httpx.AsyncClient(base_url=url, limits=limits(1), timeout=60) as http:
            for n in range(first, max(args.warmup, args.clients), args.clients):
                await post(http, n)
            warm.append(first)
            if len(warm) == args.clients:
                all_warm.set()
            await start.wait()
            while (n := next(counter)) < args.requests:
                ms.append(await post(http, n))

    progress(f"{name}: {args.warmup:,} warm-up, then {args.requests:,} requests ...")
    async with trio.open_nursery() as nursery:
        for first in range(args.clients):
            nursery.start_soon(client, first)
        await all_warm.wait()
        started, cpu, server = time.perf_counter(), time.process_time(), cpu_seconds(pid)
        start.set()
    seconds = time.perf_counter() - started
    server_cpu = cpu_seconds(pid) - server
    return Row(name, seconds, tuple(ms), server_cpu, time.process_time() - cpu)


def jobs_in(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])
    finally:
        conn.close()


CEILING = Path(__file__).resolve().parent / "_ceiling.py"


async def ceiling(args: argparse.Namespace) -> Row:
    argv = [sys.executable, str(CEILING)]
    async with program("submit-ceiling", argv, {}, "ceiling: listening on") as served:
        return await load("ceiling: HTTP actor, parse, 202", served.url, served.pid, args)


LITESTREAM = Path(sys.executable).with_name("litestream")


@asynccontextmanager
async def replicated(db: Path) -> AsyncIterator[int]:
    """``litestream replicate`` of ``db`` to a fresh directory, from its first snapshot
    on (yields its pid); SIGTERM at the end (it ships what is left, then exits)."""
    replica = WORK_DIR / f"{db.stem}.replica"
    shutil.rmtree(replica, ignore_errors=True)
    shutil.rmtree(db.with_name(f".{db.name}-litestream"), ignore_errors=True)
    config = WORK_DIR / f"{db.stem}.litestream.yml"
    config.write_text(
        f"dbs:\n  - path: {db}\n    replicas:\n      - type: file\n"
        f"        path: {replica}\n        sync-interval: 1s\n"
    )
    output = WORK_DIR / f"{db.stem}.litestream.log"
    with output.open("wb") as sink:
        process = await trio.lowlevel.open_process(
            [str(LITESTREAM), "replicate", "-config", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        with trio.fail_after(30):
            while "snapshot complete" not in output.read_text(errors="replace"):
                if process.poll() is not None:
                    raise RuntimeError(f"litestream exited with {process.returncode}: {output}")
                await trio.sleep(0.05)
        yield process.pid
    finally:
        process.terminate()
        await process.wait()


async def through_foreman(
    args: argparse.Namespace, sim: str, durability: Durability, *, litestream: bool = False
) -> Row:
    name = f"submit-{durability.value}" + ("-litestream" if litestream else "")
    db = scratch(f"{name}.db")
    env = {
        "FOREMAN_DURABILITY": durability.value,
        "FOREMAN_MAX_QUEUE": "1000000",
        "FOREMAN_SHUTDOWN_GRACE": "0",
    }
    title = f"Foreman, {durability.value.upper()}" + (", Litestream" if litestream else "")
    async with (
        foreman_on(name, db, sim, env) as served,
        scraping(served.url, every=args.scrape) as scrapes,
        dashboard_open(served.url, enabled=args.dashboard) as refreshes,
    ):
        if litestream:
            async with replicated(db) as litestream:
                before = cpu_seconds(litestream)
                row = await load(title, served.url, served.pid, args)
                used = cpu_seconds(litestream) - before
                progress(f"  Litestream's CPU meanwhile: {used:.2f} s ({used / row.seconds:.0%})")
        else:
            row = await load(title, served.url, served.pid, args)
    if scrapes:
        progress(f"{len(scrapes)} scrapes of /metrics, p50 {percentile(scrapes, 50):.2f} ms")
    if refreshes:
        progress(f"{len(refreshes)} dashboard refreshes, p50 {percentile(refreshes, 50):.2f} ms")
    expected = max(args.warmup, args.clients) + args.requests
    if (jobs := jobs_in(db)) != expected:
        raise RuntimeError(f"{db} holds {jobs} jobs, but {expected} submissions were accepted")
    return row


async def run_all(args: argparse.Namespace) -> dict[str, list[Row]]:
    """Every row ``--repeat`` times, interleaved, so each sees the same machine."""
    runs: dict[str, list[Row]] = {}
    async with (
        simulator("subprocess", sim_config(0.0, 0.0, 8)) as sim,
        httpx.AsyncClient(timeout=30) as control,
    ):
        await stall_backend(control, sim)
        for repeat in range(args.repeat):
            progress(f"run {repeat + 1} of {args.repeat}")
            runs.setdefault("ceiling", []).append(await ceiling(args))
            for durability in args.durability:
                row = await through_foreman(args, sim, durability)
                runs.setdefault(durability.value, []).append(row)
                if args.litestream:
                    row = await through_foreman(args, sim, durability, litestream=True)
                    runs.setdefault(f"{durability.value}+litestream", []).append(row)
    return runs


HEADERS = ["row", "requests", "seconds", "req/s", "vs ceiling", "p50 ms", "p99 ms", "max ms",
           "server CPU", "CPU µs/req", "client CPU"]  # fmt: skip


def report(rows: dict[str, Row], runs: dict[str, list[Row]], args: argparse.Namespace) -> str:
    top = rows["ceiling"].rate
    lines: list[list[Cell]] = [
        [
            row.name,
            len(row.ms),
            fmt_float(row.seconds, 2),
            fmt_float(row.rate, 0),
            f"{row.rate / top:.0%}",
            fmt_float(percentile(row.ms, 50), 2),
            fmt_float(percentile(row.ms, 99), 2),
            fmt_float(max(row.ms), 2),
            f"{row.server_cpu / row.seconds:.0%}",
            fmt_float(row.server_cpu / len(row.ms) * 1e6, 0),
            f"{row.client_cpu / row.seconds:.0%}",
        ]
        for row in rows.values()
    ]
    rates = {key: ", ".join(f"{r.rate:,.0f}" for r in each) for key, each in runs.items()}
    text = [
        table(HEADERS, lines),
        "",
        f"{args.clients} clients, one keep-alive connection each; {args.requests:,} timed "
        f"requests after {max(args.warmup, args.clients):,} warm-up; median of {args.repeat} "
        "run(s) by time, rows interleaved. Every run: "
        + "; ".join(f"{key} {value} req/s" for key, value in rates.items())
        + ".",
        "Foreman: a process on a fresh log, FOREMAN_MAX_QUEUE 1000000, backend stalled (every "
        "job but the first stays queued); each 202 is a committed JobSubmitted (checked).",
        "server CPU: the server process's CPU time / wall time (2 cores: up to 200%); "
        "CPU µs/req: its CPU time per request; client CPU: this process's.",
    ]
    for key, each in shares(runs).items():
        share = statistics.median(each)
        verdict = "met" if share >= TARGET else "NOT met"
        text.append(
            f"target: Foreman >= {TARGET:.0%} of the ceiling, durability {key.upper()}: "
            f"{verdict} (median of the runs' ratios {share:.1%}; each run: "
            f"{', '.join(f'{one:.0%}' for one in each)})"
        )
    return "\n".join(text)


def shares(runs: dict[str, list[Row]]) -> dict[str, list[float]]:
    """Each Foreman run's rate over the ceiling's in the same round (runs are interleaved,
    so the pair saw the same machine)."""
    top = runs["ceiling"]
    return {
        key: [row.rate / ceiling.rate for row, ceiling in zip(each, top, strict=True)]
        for key, each in runs.items()
        if key != "ceiling"
    }


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="timed requests per row")
    parser.add_argument("--warmup", type=int, default=640, help="untimed requests first")
    parser.add_argument("--clients", type=int, default=64, help="concurrent connections")
    parser.add_argument(
        "--durability",
        type=Durability,
        nargs="+",
        default=[Durability.FULL, Durability.NORMAL],
        help="one Foreman row per durability",
    )
    parser.add_argument(
        "--litestream",
        action="store_true",
        help="also each durability with Litestream replicating the log to a local directory",
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per row (median)")
    parser.add_argument(
        "--scrape", type=float, metavar="S", help="GET /metrics every S seconds meanwhile"
    )
    parser.add_argument(
        "--dashboard", action="store_true", help="an open /ui page meanwhile (its requests)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse(argv)
    info = machine()
    runs = trio.run(run_all, args)
    rows = {key: median_run(each, lambda row: row.seconds) for key, each in runs.items()}
    document = {
        "benchmark": "submit",
        "machine": info,
        "clients": args.clients,
        "requests": args.requests,
        "warmup": max(args.warmup, args.clients),
        "repeat": args.repeat,
        "scrape_every_s": args.scrape,
        "dashboard": args.dashboard,
        "target_share_of_ceiling": TARGET,
        "rows": {key: row.as_dict() for key, row in rows.items()},
        "runs": {key: [row.as_dict() for row in each] for key, each in runs.items()},
        "share_of_ceiling_per_run": shares(runs),
    }
    emit(args.json, document, report(rows, runs, args))


if __name__ == "__main__":
    main(sys.argv[1:])
