"""Memory and read latency at depth: Foreman with 100,000 queued jobs vs an empty log.

For each depth (0, 100 and 100,000 jobs by default) a log is built offline with
``EventLog.append_many`` (``JobSubmitted`` events only, origin ``async``, chat jobs of
three models, durability OFF for the build, batches of 8,192), then ``foreman serve``
runs on it as a process: crash recovery queues every unfinished job. The backend is a
simulator whose every generation stalls for an hour, so the first job holds the GPU
and the rest stay queued. Once ``/healthz`` answers: the process's VmRSS, then
``GET /jobs/{id}`` for random queued jobs, one request at a time, and VmRSS and
VmHWM (the peak) again. The floor: the same GETs answered by ``_ceiling.py`` (Foreman's
HTTP actor and ``JobView``, a fixed answer, no log, no scheduler).

    python benchmarks/memory.py [--depths 0 100 100000] [--requests N] [--json]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio
from _logs import batches, job_events, scratch
from _report import Cell, emit, fmt_float, machine, progress, table
from _servers import (
    foreman_on,
    limits,
    percentile,
    program,
    rss_mb,
    sim_config,
    simulator,
    stall_backend,
    wait_healthy,
)

from foreman.events.log import Durability
from foreman.events.store import open_log
from foreman.ids import new_ulids

TARGET_RSS_MB = 300.0
TARGET_GET_P50_MS = 2.0
AT_BACKEND = 2
"""Jobs that leave the queue: the stalled one and the one waiting behind it (ADR-0026)."""


def build_queued(path: Path, count: int) -> list[str]:
    """A log of ``count`` submitted jobs and nothing else; returns their ids in order."""
    ids = new_ulids(count)
    log = open_log(path, durability=Durability.OFF)
    try:
        pairs = ((job_id, job_events(n)[0]) for n, job_id in enumerate(ids))
        for appends in batches(pairs, 8192):
            log.append_many(appends)
    finally:
        log.close()
    return ids


CEILING = Path(__file__).resolve().parent / "_ceiling.py"


@dataclass(frozen=True, slots=True)
class Depth:
    label: str
    jobs: int
    build_seconds: float
    start_seconds: float
    """From starting the process to the first 200 from ``/healthz``."""
    rss_idle: float
    rss_after: float
    rss_peak: float
    ms: tuple[float, ...]
    not_queued: int
    """Answers whose job was not queued (must be 0)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "jobs": self.jobs,
            "build_seconds": self.build_seconds,
            "start_seconds": self.start_seconds,
            "rss_idle_mb": self.rss_idle,
            "rss_after_gets_mb": self.rss_after,
            "rss_peak_mb": self.rss_peak,
            "get_requests": len(self.ms),
            "get_p50_ms": percentile(self.ms, 50) if self.ms else None,
            "get_p99_ms": percentile(self.ms, 99) if self.ms else None,
            "get_max_ms": max(self.ms, default=None),
        }


async def gets(
    client: httpx.AsyncClient, ids: list[str], count: int, rng: random.Random
) -> tuple[list[float], int]:
    """``count`` sequential ``GET /jobs/{id}`` of random queued jobs: (ms each, not queued)."""
    ms, not_queued = [], 0
    for _ in range(count):
        job_id = rng.choice(ids)
        started = time.perf_counter()
        response = await client.get(f"/jobs/{job_id}")
        ms.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"GET /jobs/{job_id} answered {response.status_code}")
        view = response.json()
        not_queued += view["state"] != "queued" or view["queue_position"] is None
    return ms, not_queued


async def measure(args: argparse.Namespace, sim: str, jobs: int) -> Depth:
    name = f"memory-{jobs}"
    db = scratch(f"{name}.db")
    progress(f"{jobs:,} jobs: building the log ...")
    started = time.perf_counter()
    ids = build_queued(db, jobs)
    built = time.perf_counter() - started
    env = {"FOREMAN_MAX_QUEUE": str(max(1_000_000, 2 * jobs)), "FOREMAN_SHUTDOWN_GRACE": "0"}
    progress(f"{jobs:,} jobs: starting Foreman on it ...")
    started = time.perf_counter()
    async with (
        foreman_on(name, db, sim, env) as served,
        httpx.AsyncClient(base_url=served.url, limits=limits(1), timeout=60) as client,
    ):
        await wait_healthy(client, served.url)
        start_seconds = time.perf_counter() - started
        await trio.sleep(args.settle)
        rss_idle = rss_mb(served.pid)
        ms: list[float] = []
        not_queued = 0
        queued = ids[AT_BACKEND:]
        if queued and args.requests:
            rng = random.Random(args.seed)
            progress(f"{jobs:,} jobs: {args.warmup} + {args.requests:,} GET /jobs/{{id}} ...")
            await gets(client, queued, args.warmup, rng)
            ms, not_queued = await gets(client, queued, args.requests, rng)
        rss_after, rss_peak = rss_mb(served.pid), rss_mb(served.pid, "VmHWM")
    label = f"Foreman, {jobs:,} queued"
    return Depth(
        label, jobs, built, start_seconds, rss_idle, rss_after, rss_peak, tuple(ms), not_queued
    )


async def measure_floor(args: argparse.Namespace) -> Depth:
    progress("floor: GET /jobs/{id} answered by _ceiling.py ...")
    argv, started = [sys.executable, str(CEILING)], time.perf_counter()
    async with (
        program("memory-floor", argv, {}, "ceiling: listening on") as served,
        httpx.AsyncClient(base_url=served.url, limits=limits(1), timeout=60) as client,
    ):
        start_seconds = time.perf_counter() - started
        await trio.sleep(args.settle)
        rss_idle, ids, rng = rss_mb(served.pid), new_ulids(1000), random.Random(args.seed)
        await gets(client, ids, args.warmup, rng)
        ms, not_queued = await gets(client, ids, args.requests, rng)
        rss_after, rss_peak = rss_mb(served.pid), rss_mb(served.pid, "VmHWM")
    label = "floor: _ceiling.py, nothing kept"
    return Depth(label, 0, 0.0, start_seconds, rss_idle, rss_after, rss_peak, tuple(ms), not_queued)


async def run_all(args: argparse.Namespace) -> list[Depth]:
    async with (
        simulator("subprocess", sim_config(0.0, 0.0, 8)) as sim,
        httpx.AsyncClient(timeout=30) as control,
    ):
        await stall_backend(control, sim)
        depths = [await measure(args, sim, jobs) for jobs in args.depths]
    return [*depths, await measure_floor(args)] if args.requests else depths


HEADERS = ["server", "build s", "start s", "RSS MB", "RSS after MB", "peak MB",
           "KB/job", "GETs", "p50 ms", "p99 ms", "max ms"]  # fmt: skip


def report(depths: list[Depth], args: argparse.Namespace) -> str:
    base = depths[0]
    rows: list[list[Cell]] = []
    for depth in depths:
        per_job = (depth.rss_idle - base.rss_idle) * 1024 / depth.jobs if depth.jobs else None
        rows.append(
            [
                depth.label,
                fmt_float(depth.build_seconds, 1) if depth.label.startswith("Foreman") else "",
                fmt_float(depth.start_seconds, 1),
                fmt_float(depth.rss_idle, 1),
                fmt_float(depth.rss_after, 1),
                fmt_float(depth.rss_peak, 1),
                fmt_float(per_job, 2) if per_job is not None and depth is not base else "",
                len(depth.ms),
                fmt_float(percentile(depth.ms, 50), 2) if depth.ms else "",
                fmt_float(percentile(depth.ms, 99), 2) if depth.ms else "",
                fmt_float(max(depth.ms), 2) if depth.ms else "",
            ]
        )
    deepest = max(depths, key=lambda depth: depth.jobs)
    lines = [
        table(HEADERS, rows),
        "",
        "Logs of JobSubmitted only, built offline; Foreman a process (durability FULL), its "
        "recovery queues them; the backend stalls, so all but the first jobs stay queued.",
        "start s: process start to the first 200 from /healthz (floor: to its ready line); "
        f"RSS MB: VmRSS {args.settle:g} s after that; RSS after: once the GETs are done; "
        "peak: VmHWM; KB/job: RSS over the first row's, per job. GETs: sequential, one "
        f"connection, random queued ids, after {args.warmup} warm-up; every answer was 200 "
        "with the job queued and its position.",
    ]
    floor = depths[-1] if depths[-1].label.startswith("floor") else None
    if floor is not None:
        over = [
            f"{percentile(d.ms, 50) - percentile(floor.ms, 50):.2f} ms at {d.jobs:,} queued"
            for d in depths
            if d.ms and d is not floor
        ]
        lines.append(f"GET p50 over the floor's: {'; '.join(over)}.")
    if sum(depth.not_queued for depth in depths):
        lines.append("WARNING: some answers were not of a queued job (see --json)")
    rss_verdict = "met" if deepest.rss_peak < TARGET_RSS_MB else "NOT met"
    lines.append(
        f"target: RSS < {TARGET_RSS_MB:g} MB with {deepest.jobs:,} queued jobs: {rss_verdict} "
        f"({deepest.rss_idle:.1f} MB idle, peak {deepest.rss_peak:.1f} MB)"
    )
    if deepest.ms:
        p50 = percentile(deepest.ms, 50)
        verdict = "met" if p50 < TARGET_GET_P50_MS else "NOT met"
        lines.append(
            f"target: GET /jobs/{{id}} p50 < {TARGET_GET_P50_MS:g} ms at {deepest.jobs:,} "
            f"queued: {verdict} ({p50:.2f} ms; p99 {percentile(deepest.ms, 99):.2f} ms)"
        )
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--depths", type=int, nargs="+", default=[0, 100, 100_000], help="queued jobs per row"
    )
    parser.add_argument("--requests", type=int, default=2000, help="timed GETs per depth")
    parser.add_argument("--warmup", type=int, default=200, help="untimed GETs first")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds before reading RSS")
    parser.add_argument("--seed", type=int, default=1, help="for the random job ids")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse(argv)
    info = machine()
    depths = trio.run(run_all, args)
    document = {
        "benchmark": "memory",
        "machine": info,
        "requests": args.requests,
        "target_rss_mb": TARGET_RSS_MB,
        "target_get_p50_ms": TARGET_GET_P50_MS,
        "depths": [depth.as_dict() for depth in depths],
    }
    emit(args.json, document, report(depths, args))


if __name__ == "__main__":
    main(sys.argv[1:])
