"""GPU idle gap: from one job's end to the next one's start at the backend, p50 and p99.

``--jobs`` jobs of one model are submitted at once, so they queue back to back;
the simulator records when each generation got the GPU and when it ended
(``/_sim/stats``), and a gap is ``next.started_at - previous.ended_at``, sorted by
start. Rows, each on a fresh simulator state:

  through Foreman     the jobs submitted to Foreman at once (one concurrent request
                      each); while one runs, the worker has already sent the next
                      and it waits in the simulator's queue (ADR-0026)
  direct, queued      the same jobs sent straight to the simulator at once: its
                      own FIFO lock hands the GPU over (as Ollama's queue would)
  direct, sequential  one at a time, straight to the simulator: a client round trip

Foreman's gaps are split by whether every job had been submitted when the gap
began (the journal's last JobSubmitted): before that, Foreman also serves the
incoming requests on the same cores.

    python benchmarks/idle_gap.py [--jobs N] [--durability full normal] [--json]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import httpx
import trio
from _report import Cell, emit, fmt_float, machine, progress, table
from _servers import (
    MODES,
    chat,
    foreman,
    limits,
    percentile,
    sim_config,
    sim_reset,
    sim_stats,
    simulator,
    submit,
    submitted_models,
)

from foreman.events.log import Durability

TARGET_MS = 1.0
"""The p50 idle gap Foreman may leave between queued jobs."""


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    gaps_ms: tuple[float, ...]

    @property
    def p50(self) -> float:
        return percentile(self.gaps_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.gaps_ms, 99)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "gaps": len(self.gaps_ms),
            "p50_ms": self.p50,
            "p99_ms": self.p99,
            "max_ms": max(self.gaps_ms, default=None),
        }


async def _gaps(client: httpx.AsyncClient, sim: str) -> list[tuple[float, float]]:
    """(previous end, gap in ms) between consecutive generations."""
    stats = await sim_stats(client, sim)
    runs = sorted(stats["generations"], key=lambda g: g["started_at"])
    return [(a["ended_at"], (b["started_at"] - a["ended_at"]) * 1000) for a, b in pairwise(runs)]


async def _at_once(client: httpx.AsyncClient, url: str, model: str, jobs: int) -> None:
    resets: list[int] = []
    async with trio.open_nursery() as nursery:
        for n in range(jobs):
            nursery.start_soon(submit, client, url, model, n, resets)
    if resets:
        progress(f"  {len(resets)} connections reset (listen backlog overflow), sent again")


async def through_foreman(
    args: argparse.Namespace, client: httpx.AsyncClient, sim: str, durability: Durability
) -> list[Row]:
    await sim_reset(client, sim)
    name = f"idle-gap-{durability.value}"
    async with foreman(args.mode, name, sim, durability) as (url, db):
        await chat(client, url, args.model, -1)  # loads the model (the worker knows it)
        progress(f"through Foreman ({durability.value}): {args.jobs} jobs at once ...")
        async with httpx.AsyncClient(limits=limits(args.jobs), timeout=None) as submitter:
            await _at_once(submitter, url, args.model, args.jobs)
    gaps = (await _gaps(client, sim))[1:]  # the first is the warm-up job's
    last_submitted = submitted_models(db)[-1][1]
    label = f"through Foreman, {durability.value.upper()}"
    return [
        Row(f"{label}: all gaps", tuple(gap for _, gap in gaps)),
        Row(f"{label}: once all were submitted",
            tuple(gap for ended, gap in gaps if ended > last_submitted)),
        Row(f"{label}: while submissions came in",
            tuple(gap for ended, gap in gaps if ended <= last_submitted)),
    ]  # fmt: skip


async def direct_queued(args: argparse.Namespace, client: httpx.AsyncClient, sim: str) -> Row:
    await sim_reset(client, sim)
    await chat(client, sim, args.model, -1)  # loads the model; the gap after it is dropped
    progress(f"direct, queued: {args.jobs} jobs at once to the simulator ...")
    async with httpx.AsyncClient(limits=limits(args.jobs), timeout=None) as submitter:
        await _at_once(submitter, sim, args.model, args.jobs)
    gaps = (await _gaps(client, sim))[1:]
    return Row("direct, queued at the simulator", tuple(gap for _, gap in gaps))


async def direct_sequential(args: argparse.Namespace, client: httpx.AsyncClient, sim: str) -> Row:
    await sim_reset(client, sim)
    progress(f"direct, sequential: {args.jobs} jobs one at a time to the simulator ...")
    for n in range(args.jobs):
        await chat(client, sim, args.model, n)
    return Row("direct, sequential client", tuple(gap for _, gap in await _gaps(client, sim)))


def report(rows: list[Row], args: argparse.Namespace) -> str:
    cells: list[list[Cell]] = [
        [row.name, len(row.gaps_ms), fmt_float(row.p50, 2), fmt_float(row.p99, 2),
         fmt_float(max(row.gaps_ms, default=0.0), 2)]
        for row in rows
    ]  # fmt: skip
    lines = [
        table(["row", "gaps", "p50 ms", "p99 ms", "max ms"], cells),
        "",
        f"{args.jobs} jobs of {args.model}; simulator: {args.tokens} tokens x "
        f"{args.token_latency:g} s, the model loaded beforehand; Foreman: {args.mode}.",
        "gap: next generation's start - previous one's end, at the simulator (its wall clock).",
    ]
    for row in rows:
        if row.name.endswith("all gaps"):
            verdict = "met" if row.p50 <= TARGET_MS else "NOT met"
            lines.append(
                f"target: idle gap p50 <= {TARGET_MS:g} ms, {row.name.removesuffix(': all gaps')}"
                f": {verdict} (p50 {row.p50:.2f} ms, p99 {row.p99:.2f} ms)"
            )
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500, help="jobs per row (max_queue: 512)")
    parser.add_argument("--token-latency", type=float, default=0.002, help="seconds per token")
    parser.add_argument("--tokens", type=int, default=8, help="tokens per answer")
    parser.add_argument(
        "--durability",
        type=Durability,
        nargs="+",
        default=[Durability.FULL, Durability.NORMAL],
        help="a Foreman row per durability, each with a fresh Foreman and log",
    )
    parser.add_argument("--mode", choices=MODES, default="subprocess")
    parser.add_argument("--model", default="llama3")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


async def run_all(args: argparse.Namespace) -> list[Row]:
    config = sim_config(0.0, args.token_latency, args.tokens)
    rows = []
    async with (
        simulator(args.mode, config) as sim,
        httpx.AsyncClient(limits=limits(1), timeout=None) as client,
    ):
        for durability in args.durability:
            rows += await through_foreman(args, client, sim, durability)
        rows.append(await direct_queued(args, client, sim))
        rows.append(await direct_sequential(args, client, sim))
    return rows


def main(argv: list[str]) -> None:
    args = parse(argv)
    info = machine()
    rows = trio.run(run_all, args)
    document = {
        "benchmark": "idle_gap",
        "machine": info,
        "mode": args.mode,
        "jobs": args.jobs,
        "tokens": args.tokens,
        "token_latency": args.token_latency,
        "target_p50_ms": TARGET_MS,
        "rows": [row.as_dict() for row in rows],
    }
    emit(args.json, document, report(rows, args))


if __name__ == "__main__":
    main(sys.argv[1:])
