"""Added latency and CPU per call: a non-streaming chat straight to the simulator, through
a bare proxy on Foreman's stack, and through Foreman.

The simulator answers at once (no load latency, no token latency, 8 tokens), so what
is left is HTTP and, through Foreman, the job's life. One client makes sequential
calls (one user, one script), each target over its own keep-alive connection, in two
orders:

- back to back: every call to one target, then every call to the next: what a user
  calling one after another sees, Foreman's background work for a call included;
- interleaved: one call to each target in turn, so all see the same moment of the
  machine (background work then overlaps the other targets' calls).

Every server is a process of its own; ``CPU ms/call`` is the user + system CPU its
process spent in the phase, divided by the calls it served (the simulator serves
one call of each target's). The proxy (``_proxy.py``) is Hypercorn + trio + one httpx
client, raw ASGI: Foreman's own share is its added latency less the proxy's.

    python benchmarks/latency.py [--requests N] [--durability full normal] [--json]
    python benchmarks/latency.py --baseline /tmp/base  # also a Foreman run from that tree
    python benchmarks/latency.py --repeat 3         # three rounds: how often targets are met
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
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio
from _report import ROOT, Cell, emit, fmt_float, machine, progress, table
from _servers import (
    chat,
    cpu_seconds,
    dashboard_open,
    foreman_on,
    fresh_log,
    limits,
    percentile,
    program,
    scraping,
    sim_args,
    sim_config,
)

from foreman.events.log import Durability
from foreman.events.tenants import new_key

SHARE_P50_MS = 1.0
SHARE_P99_MS = 3.0
"""Foreman's own share of a call (its added latency less the bare proxy's) may be this."""
CPU_MS = 3.0
"""CPU per call Foreman may spend."""
ORDERS = ("back-to-back", "interleaved")


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    url: str
    pid: int
    """The process serving it, whose CPU time is counted."""
    durability: str | None = None
    headers: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Series:
    order: str
    target: Target
    ms: tuple[float, ...]
    cpu_ms: float
    """CPU per call of the target's process."""
    round: int = 1

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
            "round": self.round,
            "order": self.order,
            "target": self.target.name,
            "durability": self.target.durability,
            "requests": len(self.ms),
            "p50_ms": self.p50,
            "p99_ms": self.p99,
            "mean_ms": self.mean,
            "max_ms": max(self.ms, default=None),
            "cpu_ms_per_call": self.cpu_ms,
        }


async def timed(client: httpx.AsyncClient, target: Target, model: str, n: int) -> float:
    started = time.perf_counter()
    await chat(client, target.url, model, n)
    return (time.perf_counter() - started) * 1000


async def back_to_back(
    targets: list[Target], clients: list[httpx.AsyncClient], args: argparse.Namespace, round_: int
) -> list[Series]:
    series = []
    for target, client in zip(targets, clients, strict=True):
        progress(f"round {round_}, back to back: {args.requests:,} calls to {target.name} ...")
        before = cpu_seconds(target.pid)
        ms = [await timed(client, target, args.model, n) for n in range(args.requests)]
        cpu = (cpu_seconds(target.pid) - before) * 1000 / args.requests
        series.append(Series("back-to-back", target, tuple(ms), cpu, round_))
    return series


async def interleaved(
    targets: list[Target], clients: list[httpx.AsyncClient], args: argparse.Namespace, round_: int
) -> list[Series]:
    progress(
        f"round {round_}, interleaved: {args.requests:,} calls to each of "
        f"{len(targets)} targets ..."
    )
    before = [cpu_seconds(target.pid) for target in targets]
    ms: list[list[float]] = [[] for _ in targets]
    for n in range(args.requests):
        for target, client, times in zip(targets, clients, ms, strict=True):
            times.append(await timed(client, target, args.model, n))
    series = []
    for target, times, start in zip(targets, ms, before, strict=True):
        calls = args.requests * (len(targets) if target.name == "direct" else 1)
        cpu = (cpu_seconds(target.pid) - start) * 1000 / calls
        series.append(Series("interleaved", target, tuple(times), cpu, round_))
    return series


@asynccontextmanager
async def targets_running(args: argparse.Namespace) -> AsyncIterator[list[Target]]:
    """The simulator, the proxy in front of it, and a Foreman in front of it for each
    durability (and each of them run from ``--baseline``'s tree)."""
    # An admin's key when it scrapes too: /metrics takes one (ADR-0044).
    _, secret, issued = new_key("benchmark", admin=args.scrape is not None)
    headers = {"Authorization": f"Bearer {secret}"} if args.key else None
    config = sim_config(0.0, 0.0, args.tokens)
    python = [sys.executable]
    async with AsyncExitStack() as stack:
        sim_argv = [*python, "-m", "foreman.cli", *sim_args(config)]
        sim = await stack.enter_async_context(program("simulator", sim_argv, {}, "simulator on"))
        proxy_argv = [*python, "benchmarks/_proxy.py", "--backend", sim.url]
        proxy = await stack.enter_async_context(program("proxy", proxy_argv, {}, "proxy:"))
        targets = [Target("direct", sim.url, sim.pid), Target("proxy", proxy.url, proxy.pid)]
        trees = [("", ROOT)]
        if args.baseline is not None:
            trees.append((" @baseline", args.baseline.resolve()))
        for durability in args.durability:
            for label, tree in trees:
                name = f"foreman {durability.value.upper()}{label}"
                slug = f"latency-{durability.value}{label.strip(' @')}"
                db = fresh_log(slug, issued if args.key else None)
                env = {"FOREMAN_DURABILITY": durability.value}
                served = await stack.enter_async_context(
                    foreman_on(slug, db, sim.url, env, tree=tree)
                )
                targets.append(Target(name, served.url, served.pid, durability.value, headers))
                await stack.enter_async_context(
                    scraping(served.url, every=args.scrape, headers=headers)
                )
                await stack.enter_async_context(
                    dashboard_open(served.url, enabled=args.dashboard, headers=headers)
                )
        yield targets


async def measure(args: argparse.Namespace) -> list[Series]:
    async with targets_running(args) as targets, AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(limits=limits(1), timeout=30, headers=target.headers)
            )
            for target in targets
        ]
        progress(f"{args.warmup} warm-up calls to each target ...")
        for n in range(args.warmup):
            for target, client in zip(targets, clients, strict=True):
                await chat(client, target.url, args.model, n)
        series = []
        for round_ in range(1, args.repeat + 1):
            for order in args.orders:
                run = back_to_back if order == "back-to-back" else interleaved
                series += await run(targets, clients, args, round_)
        return series


HEADERS = ["round", "order", "target", "calls", "p50 ms", "p99 ms", "mean ms", "added p50",
           "added p99", "own p50", "own p99", "CPU ms/call"]  # fmt: skip


def _of(series: list[Series], like: Series, name: str) -> Series:
    """The series of target ``name`` in ``like``'s round and order."""
    return next(
        s for s in series if (s.round, s.order, s.target.name) == (like.round, like.order, name)
    )


def report(series: list[Series], args: argparse.Namespace) -> str:
    rows: list[list[Cell]] = []
    verdicts = []
    met_in: dict[tuple[str, str], int] = {}
    for s in series:
        direct, proxy = _of(series, s, "direct"), _of(series, s, "proxy")
        is_foreman = s.target.durability is not None
        own_p50, own_p99 = s.p50 - proxy.p50, s.p99 - proxy.p99
        rows.append(
            [
                s.round,
                s.order,
                s.target.name,
                len(s.ms),
                fmt_float(s.p50, 2),
                fmt_float(s.p99, 2),
                fmt_float(s.mean, 2),
                fmt_float(s.p50 - direct.p50, 2) if s is not direct else "",
                fmt_float(s.p99 - direct.p99, 2) if s is not direct else "",
                fmt_float(own_p50, 2) if is_foreman else "",
                fmt_float(own_p99, 2) if is_foreman else "",
                fmt_float(s.cpu_ms, 2),
            ]
        )
        if is_foreman and s.target.durability == Durability.FULL.value:
            met = own_p50 <= SHARE_P50_MS and own_p99 <= SHARE_P99_MS and s.cpu_ms <= CPU_MS
            key = (s.order, s.target.name)
            met_in[key] = met_in.get(key, 0) + met
            verdicts.append(
                f"target (round {s.round}, {s.order}, {s.target.name}): own share <= "
                f"{SHARE_P50_MS:g} ms p50 and <= {SHARE_P99_MS:g} ms p99, "
                f"CPU <= {CPU_MS:g} ms a call: {'met' if met else 'NOT met'} "
                f"({own_p50:.2f} / {own_p99:.2f} ms, {s.cpu_ms:.2f} ms CPU)"
            )
    lines = [
        table(HEADERS, rows, left=2),
        "",
        f"One client, sequential non-streaming /api/chat calls, after {args.warmup} warm-up "
        f"calls to each target; simulator: no load or token latency, {args.tokens} tokens.",
        "added: over calling the simulator directly (same order); own: over the bare proxy "
        "(Hypercorn + trio + one httpx client, raw ASGI): Foreman's own share.",
        "CPU ms/call: user + system CPU of the target's process in that phase per call it "
        "served (direct: the simulator's, per backend call).",
        *verdicts,
        *(
            f"{order}, {name}: all three targets met in {met} of {args.repeat} rounds"
            for (order, name), met in met_in.items()
            if args.repeat > 1
        ),
    ]
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="timed calls per target")
    parser.add_argument("--warmup", type=int, default=100, help="untimed calls per target")
    parser.add_argument(
        "--durability",
        type=Durability,
        nargs="+",
        default=[Durability.FULL],
        help="a Foreman (fresh log) per durability, all running at once",
    )
    parser.add_argument("--orders", nargs="+", choices=ORDERS, default=list(ORDERS))
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds, each every order (the machine drifts)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="TREE",
        help="also run each Foreman from this source tree (a git worktree of the baseline)",
    )
    parser.add_argument(
        "--key", action="store_true", help="keys in use: every call through Foreman carries one"
    )
    parser.add_argument("--model", default="llama3")
    parser.add_argument("--tokens", type=int, default=8, help="tokens per answer")
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
    series = trio.run(measure, args)
    document = {
        "benchmark": "latency",
        "machine": info,
        "requests": args.requests,
        "warmup": args.warmup,
        "rounds": args.repeat,
        "tokens": args.tokens,
        "baseline": str(args.baseline) if args.baseline else None,
        "scrape_every_s": args.scrape,
        "dashboard": args.dashboard,
        "target_own_p50_ms": SHARE_P50_MS,
        "target_own_p99_ms": SHARE_P99_MS,
        "target_cpu_ms": CPU_MS,
        "series": [s.as_dict() for s in series],
    }
    emit(args.json, document, report(series, args))


if __name__ == "__main__":
    main(sys.argv[1:])
