"""Added latency: non-streaming chat through Foreman vs straight to the simulator.

The simulator answers at once (no load latency, no token latency, 8 tokens), so
what is left is HTTP and, through Foreman, the job's life: ``JobSubmitted``
committed before the job is queued, the scheduler's pick, the backend call
(``JobStarted`` is committed alongside it, ADR-0026), the answer relayed to the
caller (``JobSucceeded`` is committed after the answer is handed over, so it
overlaps the response). One request at a time, alternating direct and through Foreman,
so both series see the same machine; each has its own keep-alive connection.

    python benchmarks/latency.py [--requests N] [--durability full normal] [--json]
    python benchmarks/latency.py --mode inprocess   # all in this process's trio loop
    python benchmarks/latency.py --key              # with API keys in use (ADR-0043)
    python benchmarks/latency.py --scrape 1         # GET /metrics every second (ADR-0044)
    python benchmarks/latency.py --dashboard        # an open /ui page meanwhile (ADR-0046)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx
import trio
from _logs import build_work, remove_db, scratch
from _report import Cell, emit, fmt_float, machine, progress, table
from _servers import (
    MODES,
    chat,
    dashboard_open,
    foreman,
    limits,
    percentile,
    scraping,
    sim_config,
    simulator,
)

from foreman.events.log import Durability
from foreman.events.store import open_log
from foreman.events.tenants import new_key

TARGET_MS = 2.0
"""Added latency at p50 that Foreman may cost."""
COMMITS_ON_PATH = 1
"""Durable commits a request waits for: JobSubmitted (JobStarted overlaps the call)."""


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    durability: str | None
    ms: tuple[float, ...]

    @property
    def p50(self) -> float:
        return percentile(self.ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.ms, 99)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.ms) if self.ms else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "durability": self.durability,
            "requests": len(self.ms),
            "p50_ms": self.p50,
            "p99_ms": self.p99,
            "mean_ms": self.mean,
            "max_ms": max(self.ms, default=None),
        }


@dataclass(frozen=True, slots=True)
class Run:
    durability: str
    direct: Series
    foreman: Series
    commit_ms: float
    """The median single-event commit at this durability (``EventLog.append``)."""
    hop_direct: Series
    hop_foreman: Series
    """``GET /api/version`` straight to the simulator and passed through Foreman: the
    cost of the extra HTTP hop alone, no job."""

    @property
    def added_hop_p50(self) -> float:
        return self.hop_foreman.p50 - self.hop_direct.p50

    @property
    def added_p50(self) -> float:
        return self.foreman.p50 - self.direct.p50

    @property
    def added_p99(self) -> float:
        return self.foreman.p99 - self.direct.p99

    def as_dict(self) -> dict[str, Any]:
        return {
            "durability": self.durability,
            "direct": self.direct.as_dict(),
            "foreman": self.foreman.as_dict(),
            "added_p50_ms": self.added_p50,
            "added_p99_ms": self.added_p99,
            "single_commit_ms": self.commit_ms,
            "pass_through_direct": self.hop_direct.as_dict(),
            "pass_through_foreman": self.hop_foreman.as_dict(),
            "added_pass_through_p50_ms": self.added_hop_p50,
            "commits_on_path": COMMITS_ON_PATH,
        }


def commit_ms(durability: Durability, commits: int = 300) -> float:
    """Median milliseconds of one single-event commit, on this disk, at ``durability``."""
    path = scratch("latency-commit.db")
    work = build_work(commits, in_flight=commits)
    log = open_log(path, durability=durability)
    times = []
    try:
        for stream, event in work:
            started = time.perf_counter()
            log.append(stream, [event])
            times.append((time.perf_counter() - started) * 1000)
    finally:
        log.close()
        remove_db(path)
    return statistics.median(times)


async def timed(client: httpx.AsyncClient, url: str, model: str, n: int) -> float:
    started = time.perf_counter()
    await chat(client, url, model, n)
    return (time.perf_counter() - started) * 1000


async def timed_version(client: httpx.AsyncClient, url: str) -> float:
    started = time.perf_counter()
    response = await client.get(f"{url}/api/version")
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return elapsed


async def measure(args: argparse.Namespace, durability: Durability) -> Run:
    config = sim_config(0.0, 0.0, args.tokens)
    # An admin's key when it scrapes too: /metrics takes one (ADR-0044).
    _, secret, issued = new_key("benchmark", admin=args.scrape is not None)
    key = issued if args.key else None
    auth = {"Authorization": f"Bearer {secret}"} if args.key else {}
    async with (
        simulator(args.mode, config) as sim,
        foreman(args.mode, f"latency-{durability.value}", sim, durability, key=key) as (url, _),
        httpx.AsyncClient(limits=limits(1), timeout=30) as direct_client,
        httpx.AsyncClient(limits=limits(1), timeout=30, headers=auth) as foreman_client,
        scraping(url, every=args.scrape, headers=auth) as scrapes,
        dashboard_open(url, enabled=args.dashboard, headers=auth) as refreshes,
    ):
        progress(f"durability {durability.value}: {args.warmup} warm-up requests each way ...")
        for n in range(args.warmup):
            await chat(direct_client, sim, args.model, n)
            await chat(foreman_client, url, args.model, n)
        progress(f"durability {durability.value}: {args.requests:,} requests each way ...")
        direct, through, hop_direct, hop_through = [], [], [], []
        for n in range(args.requests):
            direct.append(await timed(direct_client, sim, args.model, n))
            through.append(await timed(foreman_client, url, args.model, n))
            if args.pass_through:
                hop_direct.append(await timed_version(direct_client, sim))
                hop_through.append(await timed_version(foreman_client, url))
    if scrapes:
        progress(f"{len(scrapes)} scrapes of /metrics, p50 {percentile(scrapes, 50):.2f} ms")
    if refreshes:
        progress(f"{len(refreshes)} dashboard refreshes, p50 {percentile(refreshes, 50):.2f} ms")
    return Run(
        durability.value,
        Series("chat direct to the simulator", None, tuple(direct)),
        Series("chat through Foreman", durability.value, tuple(through)),
        commit_ms(durability),
        Series("GET /api/version direct", None, tuple(hop_direct)),
        Series("GET /api/version through Foreman", durability.value, tuple(hop_through)),
    )


HEADERS = ["series", "requests", "p50 ms", "p99 ms", "mean ms", "added p50", "added p99",
           "commits ms"]  # fmt: skip


def report(runs: list[Run], args: argparse.Namespace) -> str:
    rows: list[list[Cell]] = []
    for run in runs:
        pairs = [(run.direct, run.foreman, True)]
        if run.hop_direct.ms:
            pairs.append((run.hop_direct, run.hop_foreman, False))
        for direct, through, is_chat in pairs:
            for series in (direct, through):
                is_foreman = series is through
                added_p50 = through.p50 - direct.p50
                added_p99 = through.p99 - direct.p99
                rows.append(
                    [
                        f"{series.name} ({run.durability.upper()} run)",
                        len(series.ms),
                        fmt_float(series.p50, 2),
                        fmt_float(series.p99, 2),
                        fmt_float(series.mean, 2),
                        fmt_float(added_p50, 2) if is_foreman else "",
                        fmt_float(added_p99, 2) if is_foreman else "",
                        fmt_float(COMMITS_ON_PATH * run.commit_ms, 2)
                        if is_foreman and is_chat
                        else "",
                    ]
                )
    lines = [
        table(HEADERS, rows),
        "",
        f"{args.mode}: simulator and Foreman "
        + (
            "are processes of their own; the client is this process."
            if args.mode == "subprocess"
            else "run in this process's trio loop, beside the client (shared GIL)."
        ),
        f"Sequential requests, direct and through Foreman alternating, after {args.warmup} "
        "warm-up requests each; simulator: no load or token latency, "
        f"{args.tokens} tokens.",
        f"commits ms: {COMMITS_ON_PATH} x the median single-event commit on this disk at that "
        "durability (EventLog.append): the durable commits a request waits for",
        "(JobSubmitted before it is queued; JobStarted alongside the backend call and "
        "JobSucceeded after the answer is handed over overlap it).",
        "GET /api/version: passed through Foreman without a job (one more HTTP hop and "
        "nothing else): the hop's share of the added latency.",
    ]
    for run in runs:
        verdict = "met" if run.added_p50 <= TARGET_MS else "NOT met"
        lines.append(
            f"target: added latency <= {TARGET_MS:g} ms at p50, durability "
            f"{run.durability.upper()}: {verdict} ({run.added_p50:.2f} ms; p99 "
            f"{run.added_p99:.2f} ms)"
        )
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="timed requests each way")
    parser.add_argument("--warmup", type=int, default=100, help="untimed requests each way")
    parser.add_argument(
        "--durability",
        type=Durability,
        nargs="+",
        default=[Durability.FULL, Durability.NORMAL],
        help="one run per durability, each with a fresh Foreman and log",
    )
    parser.add_argument("--mode", choices=MODES, default="subprocess")
    parser.add_argument(
        "--key", action="store_true", help="keys in use: every call through Foreman carries one"
    )
    parser.add_argument("--model", default="llama3")
    parser.add_argument("--tokens", type=int, default=8, help="tokens per answer")
    parser.add_argument(
        "--no-pass-through",
        dest="pass_through",
        action="store_false",
        help="skip the GET /api/version series (the extra HTTP hop alone)",
    )
    parser.add_argument(
        "--scrape", type=float, metavar="S", help="GET /metrics every S seconds meanwhile"
    )
    parser.add_argument(
        "--dashboard", action="store_true", help="an open /ui page meanwhile (its requests)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


async def run_all(args: argparse.Namespace) -> list[Run]:
    return [await measure(args, durability) for durability in args.durability]


def main(argv: list[str]) -> None:
    args = parse(argv)
    info = machine()
    runs = trio.run(run_all, args)
    document = {
        "benchmark": "latency",
        "machine": info,
        "mode": args.mode,
        "requests": args.requests,
        "warmup": args.warmup,
        "tokens": args.tokens,
        "scrape_every_s": args.scrape,
        "dashboard": args.dashboard,
        "target_added_p50_ms": TARGET_MS,
        "runs": [run.as_dict() for run in runs],
    }
    emit(args.json, document, report(runs, args))


if __name__ == "__main__":
    main(sys.argv[1:])
