"""Model swaps and makespan: drain-by-model (Foreman) vs FIFO (plain Ollama), side by side.

``--models`` models x ``--jobs-per-model`` jobs arrive interleaved (A, B, C, A, B,
C, ...) on a simulator that takes ``--load-latency`` seconds to load a model and
``--token-latency`` per token:

  FIFO            the jobs sent straight to the simulator one at a time in arrival
                  order, as Ollama's own first-in-first-out queue runs them
  drain-by-model  the jobs submitted to Foreman all at once (one concurrent request
                  each, started in arrival order); Foreman's scheduler runs the
                  loaded model's jobs first

Swaps are the simulator's model loads (``/_sim/stats``); the makespan runs from the
first request sent (its first byte on the wire, from httpcore's trace) to the last
answer received (wall clock, which the simulator's records share). What the client
spends before that (one httpx client opening 300 connections at once: 0.15-0.3 s on
this machine, as much against a bare socket server) is shown apart as "client s".
The ideal makespan is the work (jobs x tokens x token latency) plus one load per model.

    python benchmarks/swaps.py [--jobs-per-model N] [--durability full|normal]
                               [--repeat N] [--baseline TREE] [--no-fifo] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio
from _report import ROOT, emit, fmt_float, machine, progress, table
from _servers import (
    CHAT_MODELS,
    MODES,
    FirstSent,
    chat,
    foreman,
    limits,
    one_client_each,
    sim_config,
    sim_reset,
    sim_stats,
    simulator,
    submit,
    submitted_models,
)

from foreman.events.log import Durability

MAKESPAN_SLACK = 0.05
"""The makespan may be this much over the ideal."""
DRAIN = "drain-by-model"
BASELINE = f"{DRAIN} (baseline)"


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    how: str
    jobs: int
    loads: int
    makespan: float
    busy: float
    """Seconds the simulator spent in generations, loads included (its own records, on
    its GPU's timeline: nominal, since it keeps its pace)."""
    idle: float
    """Seconds the simulator sat idle between its first generation's start and its last
    one's end: the gaps between jobs (on that timeline: a job that was waiting at the
    simulator has none)."""
    client: float
    """Seconds the client spent before its first request's first byte left: setting up
    its connections, not a part of the makespan."""
    lead: float
    """Seconds from the first request sent to the first generation's start."""
    tail: float
    """Seconds from the last generation's end (when its last token was due) to the last
    answer received: how far the simulator ran behind its timeline at the end, and
    the relay."""
    run_changes: int
    """Times the model changed from one generation to the next, in the order they ran."""
    arrival_changes: int | None
    """Times the model changed from one job to the next in Foreman's log (arrival
    order); None for FIFO, whose order is the client's."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "how": self.how,
            "jobs": self.jobs,
            "loads": self.loads,
            "makespan_seconds": self.makespan,
            "simulator_busy_seconds": self.busy,
            "simulator_idle_seconds": self.idle,
            "client_seconds": self.client,
            "lead_seconds": self.lead,
            "tail_seconds": self.tail,
            "model_changes_in_run_order": self.run_changes,
            "model_changes_in_arrival_order": self.arrival_changes,
        }


def arrivals(args: argparse.Namespace) -> list[str]:
    models = CHAT_MODELS[: args.models]
    return [models[n % len(models)] for n in range(args.models * args.jobs_per_model)]


def changes(models: list[str]) -> int:
    return sum(1 for before, after in itertools.pairwise(models) if before != after)


@dataclass(frozen=True, slots=True)
class _Run:
    """What the simulator recorded of a run, and when (Unix seconds) it began and ended."""

    loads: int
    busy: float
    idle: float
    lead: float
    tail: float
    models: list[str]


async def _generations(client: httpx.AsyncClient, sim: str, began: float, ended: float) -> _Run:
    stats = await sim_stats(client, sim)
    runs = sorted(stats["generations"], key=lambda g: g["started_at"])
    busy = sum(g["ended_at"] - g["started_at"] for g in runs)
    first, last = runs[0]["started_at"], runs[-1]["ended_at"]
    idle = last - first - busy
    return _Run(stats["loads"], busy, idle, first - began, ended - last, [g["model"] for g in runs])


async def fifo(args: argparse.Namespace, client: httpx.AsyncClient, sim: str) -> Row:
    jobs = arrivals(args)
    await sim_reset(client, sim)
    progress(f"FIFO: {len(jobs)} jobs straight to the simulator, one at a time ...")
    began, sent = time.time(), FirstSent()
    for n, model in enumerate(jobs):
        await chat(client, sim, model, n, sent)
    ended = time.time()
    return await _row("FIFO", "straight to the simulator, one at a time, arrival order",
                      client, sim, began, sent, ended, None)  # fmt: skip


async def drain(
    args: argparse.Namespace, client: httpx.AsyncClient, sim: str, tree: Path = ROOT
) -> Row:
    jobs = arrivals(args)
    await sim_reset(client, sim)  # before Foreman starts: it asks the backend what is loaded
    db: Path
    name = BASELINE if tree != ROOT else DRAIN
    async with foreman(
        args.mode, "swaps", sim, args.durability, max_wait=args.max_wait, tree=tree
    ) as (url, db):
        progress(f"{name}: {len(jobs)} jobs submitted to Foreman at once ...")
        async with one_client_each(len(jobs)) as senders:
            began, sent = time.time(), FirstSent()
            resets: list[int] = []
            async with trio.open_nursery() as nursery:
                for n, model in enumerate(jobs):
                    nursery.start_soon(submit, senders[n], url, model, n, resets, sent)
            ended = time.time()
    if resets:
        progress(f"  {len(resets)} connections reset (listen backlog overflow), sent again")
    arrived = changes([model for model, _ in submitted_models(db)])
    return await _row(name, "submitted to Foreman all at once",
                      client, sim, began, sent, ended, arrived)  # fmt: skip


async def _row(
    name: str,
    how: str,
    client: httpx.AsyncClient,
    sim: str,
    began: float,
    sent: FirstSent,
    ended: float,
    arrival_changes: int | None,
) -> Row:
    assert sent.at is not None, "no request was sent"
    run = await _generations(client, sim, sent.at, ended)
    return Row(name, how, len(run.models), run.loads, ended - sent.at, run.busy, run.idle,
               sent.at - began, run.lead, run.tail, changes(run.models),
               arrival_changes)  # fmt: skip


def ideal(args: argparse.Namespace) -> float:
    jobs = args.models * args.jobs_per_model
    return jobs * args.tokens * args.token_latency + args.models * args.load_latency


def report(rows: list[Row], args: argparse.Namespace) -> str:
    best = ideal(args)
    lines = [
        table(
            [
                "row",
                "how",
                "jobs",
                "loads",
                "makespan s",
                "vs ideal",
                "sim busy s",
                "sim idle s",
                "client s",
                "lead s",
                "tail s",
                "run changes",
                "arrival changes",
            ],
            [
                [
                    row.name,
                    row.how,
                    row.jobs,
                    row.loads,
                    fmt_float(row.makespan, 2),
                    f"{row.makespan / best:,.2f}x",
                    fmt_float(row.busy, 2),
                    fmt_float(row.idle, 2),
                    fmt_float(row.client, 2),
                    fmt_float(row.lead, 2),
                    fmt_float(row.tail, 2),
                    row.run_changes,
                    "-" if row.arrival_changes is None else row.arrival_changes,
                ]
                for row in rows
            ],
            left=2,
        ),
        "",
        f"{args.models} models x {args.jobs_per_model} jobs arriving interleaved; simulator: "
        f"load {args.load_latency:g} s, {args.tokens} tokens x {args.token_latency:g} s.",
        f"ideal makespan: {args.models * args.jobs_per_model} x {args.tokens} x "
        f"{args.token_latency:g} s of work + {args.models} loads x {args.load_latency:g} s "
        f"= {best:.2f} s.",
        "sim busy s: the simulator's generations (loads included) on its GPU's timeline, "
        "summed: nominal, as it keeps its pace (one that falls behind catches up).",
        "sim idle s: the simulator idle between its first start and its last end (the gaps "
        "between jobs, see idle_gap.py).",
        "client s: the client getting ready before its first request's first byte left "
        "(opening its connections), outside the makespan.",
        "lead s: from the first request sent to the first generation's start; tail s: from "
        "the last generation's end (its last token due) to the last answer, so it holds how "
        "far the simulator ran behind at the end (makespan = lead + busy + idle + tail).",
        "run changes: model changes between consecutive generations at the simulator; arrival "
        "changes: between consecutive JobSubmitted in Foreman's log.",
        f"Foreman: {args.mode}, durability {args.durability.value.upper()}, FOREMAN_MAX_WAIT "
        f"{args.max_wait:g} s (the starvation bound; the run is shorter).",
    ]
    drained = [row for row in rows if row.name == DRAIN]
    loads = max(row.loads for row in drained)
    span = statistics.median(row.makespan for row in drained)
    fifo = [row for row in rows if row.name == "FIFO"]
    fifo_loads = f"; FIFO: {fifo[0].loads}" if fifo else ""
    fifo_span = f"; FIFO: {fifo[0].makespan:.2f} s" if fifo else ""
    swaps_ok = loads <= args.models + 1
    span_ok = span <= best * (1 + MAKESPAN_SLACK)
    runs = f"median of {len(drained)} runs: " if len(drained) > 1 else ""
    lines += [
        f"target: swaps <= models + 1 = {args.models + 1}: {'met' if swaps_ok else 'NOT met'} "
        f"({loads} loads at most{fifo_loads})",
        f"target: makespan within {MAKESPAN_SLACK:.0%} of ideal ({best:.2f} s): "
        f"{'met' if span_ok else 'NOT met'} ({runs}{span:.2f} s, "
        f"{span / best - 1:+.1%}{fifo_span})",
    ]
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, choices=range(1, len(CHAT_MODELS) + 1), default=3)
    parser.add_argument("--jobs-per-model", type=int, default=100)
    parser.add_argument("--load-latency", type=float, default=0.2, help="seconds per load")
    parser.add_argument("--token-latency", type=float, default=0.002, help="seconds per token")
    parser.add_argument("--tokens", type=int, default=8, help="tokens per answer")
    parser.add_argument("--durability", type=Durability, default=Durability.FULL)
    parser.add_argument("--max-wait", type=float, default=60.0, help="FOREMAN_MAX_WAIT, seconds")
    parser.add_argument("--mode", choices=MODES, default="subprocess")
    parser.add_argument(
        "--no-fifo",
        dest="fifo",
        action="store_false",
        help="skip the FIFO row (about one load per job: a minute at the defaults)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="drain-by-model runs (median)")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="TREE",
        help="also run the Foreman of another commit's worktree, after each run of this one",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


async def run_all(args: argparse.Namespace) -> list[Row]:
    config = sim_config(args.load_latency, args.token_latency, args.tokens)
    async with (
        simulator(args.mode, config) as sim,
        httpx.AsyncClient(limits=limits(1), timeout=None) as client,
    ):
        rows = [await fifo(args, client, sim)] if args.fifo else []
        for _ in range(args.repeat):  # interleaved: this tree, then the baseline
            rows.append(await drain(args, client, sim))
            if args.baseline is not None:
                rows.append(await drain(args, client, sim, args.baseline.resolve()))
    return rows


def main(argv: list[str]) -> None:
    args = parse(argv)
    info = machine()
    rows = trio.run(run_all, args)
    document = {
        "benchmark": "swaps",
        "machine": info,
        "mode": args.mode,
        "durability": args.durability.value,
        "max_wait": args.max_wait,
        "models": args.models,
        "jobs_per_model": args.jobs_per_model,
        "load_latency": args.load_latency,
        "token_latency": args.token_latency,
        "tokens": args.tokens,
        "ideal_makespan_seconds": ideal(args),
        "target_max_loads": args.models + 1,
        "target_makespan_slack": MAKESPAN_SLACK,
        "rows": [row.as_dict() for row in rows],
    }
    emit(args.json, document, report(rows, args))


if __name__ == "__main__":
    main(sys.argv[1:])
