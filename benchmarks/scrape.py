"""What one ``GET /metrics`` costs, and that it does not grow with the log (ADR-0044).

Foreman runs as a process on a copy of a cached log (``_logs.py``: a third of the
events are jobs, all succeeded but the last 1,024, which recovery queues again)
in front of a simulator that stalls every generation, so one job runs and the rest
wait. One client scrapes ``/metrics`` ``--scrapes`` times, one at a time, and
notes each scrape's latency; once for each ``--events`` size.

    python benchmarks/scrape.py [--events 30000 300000] [--scrapes N] [--json]
"""

from __future__ import annotations

import argparse
import sys
import time

import httpx
import trio
from _logs import cached_log, copy_db, scratch
from _report import Cell, emit, fmt_float, machine, progress, table
from _servers import foreman_on, percentile, sim_config, simulator, stall_backend, wait_healthy


async def one_size(events: int, sim: str, scrapes: int) -> dict[str, float]:
    source, _, _ = cached_log(events)
    db = scratch(f"scrape-{events}.db")
    copy_db(source, db)
    async with (
        foreman_on(f"scrape-{events}", db, sim, {"FOREMAN_MAX_QUEUE": "100000"}) as served,
        httpx.AsyncClient(base_url=served.url, timeout=30) as http,
    ):
        await wait_healthy(http, served.url)
        ms: list[float] = []
        body = b""
        for _ in range(scrapes):
            started = time.perf_counter()
            answer = await http.get("/metrics")
            ms.append((time.perf_counter() - started) * 1000)
            answer.raise_for_status()
            body = answer.content
    jobs = sum(
        float(line.split()[-1])
        for line in body.decode().splitlines()
        if line.startswith("foreman_jobs_total{")
    )
    progress(f"{events:,} events: scrape p50 {percentile(ms, 50):.2f} ms")
    return {
        "events": events,
        "jobs_total": jobs,
        "bytes": len(body),
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
    }


async def run_all(args: argparse.Namespace) -> list[dict[str, float]]:
    async with simulator("subprocess", sim_config(0.0, 0.0, 8)) as sim:
        async with httpx.AsyncClient(timeout=30) as control:
            await stall_backend(control, sim)
        return [await one_size(events, sim, args.scrapes) for events in args.events]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, nargs="+", default=[30_000, 300_000])
    parser.add_argument("--scrapes", type=int, default=200, help="scrapes per log")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    info = machine()
    rows = trio.run(run_all, args)
    cells: list[list[Cell]] = [
        [
            f"{row['events']:,.0f}",
            f"{row['jobs_total']:,.0f}",
            f"{row['bytes']:,.0f}",
            fmt_float(row["p50_ms"], 2),
            fmt_float(row["p99_ms"], 2),
        ]
        for row in rows
    ]
    text = table(["events", "jobs finished", "bytes", "p50 ms", "p99 ms"], cells)
    emit(args.json, {"benchmark": "scrape", "machine": info, "runs": rows}, text)


if __name__ == "__main__":
    main(sys.argv[1:])
