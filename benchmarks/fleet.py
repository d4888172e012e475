"""A fleet of GPU hosts: Foreman's fleet scheduling vs round robin and least connections.

Three simulator processes (``--hosts``) serve the same six models; each takes
``--load-latency`` seconds to load a model and ``--tokens`` x ``--token-latency``
per answer, one generation at a time. ``--jobs`` chat jobs arrive in one of two
mixes:

  interleaved  the six models in turn (A, B, C, D, E, F, A, B, ...)
  skewed       one model 70% of the jobs, the other five the rest in turn,
               shuffled by a seeded RNG (``--seed``)

and run three ways over the same hosts, side by side, every host reset
(``POST /_sim/reset``) before each:

  foreman            a Foreman process in front of the hosts (``--backend
                     gpu-N=URL`` each); every job submitted with ``POST /jobs`` by
                     ``--clients`` concurrent clients as fast as they can (each
                     has opened its connection and sent one refused ``POST /jobs``
                     before the clock starts: a fresh process's first submission
                     is slow), until every job has succeeded
  round-robin        job i's ``/api/chat`` sent straight to host i mod 3, every
                     request in flight at once: each host queues its own, first in
                     first out, as Ollama does
  least-connections  each request straight to the host with the fewest requests in
                     flight when it is sent (in arrival order, all in flight at once)

Loads are the hosts' own counts (``/_sim/stats``); the makespan runs from the first
request sent to the end of the last generation (the hosts' records share the wall
clock). The ideal makespan is the work spread over the hosts with one load per model:
(jobs x job time + models x load latency) / hosts, the job time being the median of
the generations that needed no load, as the hosts timed them.

Then the scheduler's cost per decision as the queue grows, in-process: a JobQueue of
1k, 10k, 100k jobs over six models and three priorities, and cycles of
``peek_for(HostView(...))`` + ``take`` + ``push`` for a host of a fleet whose two
other hosts drain two of the models, beside ``peek(loaded)`` (the one-host rule), and
the drain again with the jobs spread over 8 tenants of weights 1 to 8 (fair order).

    python benchmarks/fleet.py [--jobs N] [--repeat N] [--durability full|normal] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio
import trio.lowlevel
from _logs import WORK_DIR, remove_db
from _report import emit, fmt_float, machine, median_run, progress, table
from _servers import (
    chat_body,
    foreman_on,
    limits,
    sim_reset,
    sim_stats,
    simulator,
    submit,
    wait_healthy,
)

from foreman.events.log import Durability
from foreman.scheduling import Costs, HostView, JobQueue, QueuedJob, model_key
from foreman.simulator import SimulatorConfig, parse_models

MODELS = ("llama3", "qwen2", "mistral", "gemma2", "phi3", "codellama")
MIXES = ("interleaved", "skewed")
STRATEGIES = ("foreman", "round-robin", "least-connections")
HOW = {
    "foreman": "POST /jobs to Foreman, fleet rule",
    "round-robin": "straight to host i mod N, all at once",
    "least-connections": "straight to the host with fewest in flight",
}
SKEW = 0.7
"""The skewed mix's share of jobs for its one hot model."""
MAKESPAN_SLACK = 0.10
"""Foreman's makespan may be this much over the ideal."""
FAR_AHEAD = 2.0
"""Foreman is "far ahead" when round robin's makespan is at least this many times its own."""
FLAT = 2.0
"""The cost per decision is flat when the largest queue's is at most this many times the
smallest's (100x more jobs: a scan would show ~100x)."""
POLL_SECONDS = 0.2
"""How often the Foreman run asks whether every job has succeeded."""
PAGE = 1000
"""``GET /jobs``' largest page."""


# -- The workload --------------------------------------------------------------------


def arrivals(mix: str, jobs: int, seed: int) -> list[str]:
    """The model of each job, in arrival order."""
    if mix == "interleaved":
        return [MODELS[n % len(MODELS)] for n in range(jobs)]
    hot = round(jobs * SKEW)
    rest = [MODELS[1 + n % (len(MODELS) - 1)] for n in range(jobs - hot)]
    models = [MODELS[0]] * hot + rest
    random.Random(seed).shuffle(models)
    return models


# -- One run of one strategy ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """What the hosts recorded of one strategy's run on one mix."""

    mix: str
    strategy: str
    jobs: int
    host_loads: list[int]
    host_jobs: list[int]
    host_ends: list[float]
    """Seconds from the first request sent to each host's last generation's end."""
    lead: float
    """Seconds from the first request sent to the first generation's start."""
    submitted: float
    """Seconds the client took to send (Foreman: to have accepted) every job."""
    job_seconds: list[float] = field(repr=False)
    """Each generation that needed no load: its time on the GPU."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def loads(self) -> int:
        return sum(self.host_loads)

    @property
    def makespan(self) -> float:
        return max(self.host_ends)

    @property
    def spread(self) -> float:
        """The last host's end minus the first's: how unevenly the work was shared."""
        return max(self.host_ends) - min(self.host_ends)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mix": self.mix,
            "strategy": self.strategy,
            "jobs": self.jobs,
            "loads": self.loads,
            "makespan_seconds": self.makespan,
            "host_loads": self.host_loads,
            "host_jobs": self.host_jobs,
            "host_end_seconds": self.host_ends,
            "lead_seconds": self.lead,
            "submitted_seconds": self.submitted,
            "median_job_seconds": statistics.median(self.job_seconds) if self.job_seconds else None,
            **self.extra,
        }


async def _recorded(
    client: httpx.AsyncClient,
    hosts: Sequence[str],
    mix: str,
    strategy: str,
    jobs: int,
    began: float,
    submitted: float,
    extra: dict[str, Any] | None = None,
) -> Run:
    stats = [await sim_stats(client, host) for host in hosts]
    generations = [stat["generations"] for stat in stats]
    ran = sum(len(runs) for runs in generations)
    if ran != jobs:
        raise RuntimeError(f"{strategy}, {mix}: the hosts ran {ran} generations, not {jobs}")
    starts = [g["started_at"] for runs in generations for g in runs]
    return Run(
        mix,
        strategy,
        jobs,
        [stat["loads"] for stat in stats],
        [len(runs) for runs in generations],
        [max((g["ended_at"] for g in runs), default=began) - began for runs in generations],
        min(starts) - began,
        submitted - began,
        [
            g["ended_at"] - g["started_at"]
            for runs in generations
            for g in runs
            if g["load_seconds"] == 0
        ],
        extra or {},
    )


async def _reset(client: httpx.AsyncClient, hosts: Sequence[str]) -> None:
    for host in hosts:
        await sim_reset(client, host)


async def _count(client: httpx.AsyncClient, url: str, state: str, at_most: int) -> int:
    """How many jobs are in ``state`` (counting stops past ``at_most``)."""
    count, cursor = 0, None
    while True:
        params: dict[str, Any] = {"state": state, "limit": min(PAGE, at_most + 1)}
        if cursor is not None:
            params["cursor"] = cursor
        response = await client.get(f"{url}/jobs", params=params)
        response.raise_for_status()
        page = response.json()
        count += len(page["jobs"])
        cursor = page["next_cursor"]
        if cursor is None or count > at_most:
            return count


async def _until_succeeded(client: httpx.AsyncClient, url: str, jobs: int) -> None:
    while True:
        if failed := await _count(client, url, "failed", 0):
            raise RuntimeError(f"Foreman: {failed} job(s) failed; see .work/foreman-fleet.log")
        if await _count(client, url, "succeeded", jobs) >= jobs:
            return
        await trio.sleep(POLL_SECONDS)


async def via_foreman(
    args: argparse.Namespace, client: httpx.AsyncClient, hosts: Sequence[str], mix: str
) -> Run:
    models = arrivals(mix, args.jobs, args.seed)
    await _reset(client, hosts)  # before Foreman starts: it asks the hosts what is loaded
    db = WORK_DIR / "fleet.db"
    remove_db(db)
    backends = ",".join(f"gpu-{index}={url}" for index, url in enumerate(hosts))
    env = {
        "FOREMAN_DURABILITY": args.durability.value,
        "FOREMAN_MAX_WAIT": str(args.max_wait),
        "FOREMAN_MAX_QUEUE": str(max(args.jobs, 512)),
    }
    bodies = [
        json.dumps({"kind": "chat", "request": chat_body(model, n)}).encode()
        for n, model in enumerate(models)
    ]
    async with foreman_on("fleet", db, backends, env) as served:
        await wait_healthy(client, served.url)
        progress(f"  foreman, {mix}: {len(bodies)} jobs by POST /jobs, {args.clients} clients")
        todo = iter(enumerate(bodies))
        refused: list[str] = []

        go = trio.Event()

        async def submitter(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with httpx.AsyncClient(limits=limits(1), timeout=None) as own:
                # Before the clock: open the connection and warm the submission path
                # with a job Foreman refuses (422, no request): nothing reaches a host.
                warm = await own.post(f"{served.url}/jobs", json={"kind": "chat"})
                if warm.status_code != 422:
                    raise RuntimeError(f"warm-up POST /jobs answered {warm.status_code}")
                task_status.started()
                await go.wait()
                for n, body in todo:
                    response = await own.post(
                        f"{served.url}/jobs",
                        content=body,
                        headers={"content-type": "application/json"},
                    )
                    if response.status_code != 202:
                        refused.append(f"job {n}: {response.status_code} {response.text}")

        async with trio.open_nursery() as nursery:
            for _ in range(args.clients):
                await nursery.start(submitter)
            began = time.time()
            go.set()
        submitted = time.time()
        if refused:
            raise RuntimeError(f"Foreman refused {len(refused)} jobs, e.g. {refused[0]}")
        with trio.fail_after(args.timeout):
            await _until_succeeded(client, served.url, len(bodies))
    return await _recorded(client, hosts, mix, "foreman", len(models), began, submitted)


async def direct(
    args: argparse.Namespace,
    client: httpx.AsyncClient,
    hosts: Sequence[str],
    mix: str,
    strategy: str,
) -> Run:
    """Every job's ``/api/chat`` straight to a host, all in flight at once."""
    models = arrivals(mix, args.jobs, args.seed)
    await _reset(client, hosts)
    progress(f"  {strategy}, {mix}: {len(models)} requests straight to the hosts")
    in_flight = [0] * len(hosts)
    resets: list[int] = []

    def route(n: int) -> int:
        if strategy == "round-robin":
            return n % len(hosts)
        return min(range(len(hosts)), key=lambda host: (in_flight[host], host))

    async with httpx.AsyncClient(limits=limits(len(models)), timeout=None) as sender:

        async def send(host: int, model: str, n: int) -> None:
            try:
                await submit(sender, hosts[host], model, n, resets)
            finally:
                in_flight[host] -= 1

        began = time.time()
        with trio.fail_after(args.timeout):
            async with trio.open_nursery() as nursery:
                for n, model in enumerate(models):
                    host = route(n)
                    in_flight[host] += 1
                    nursery.start_soon(send, host, model, n)
                    await trio.lowlevel.checkpoint()  # let it reach the host before the next
                submitted = time.time()
    if resets:
        progress(f"    {len(resets)} connections reset (listen backlog overflow), sent again")
    extra = {"connection_resets": len(resets)}
    return await _recorded(client, hosts, mix, strategy, len(models), began, submitted, extra)


async def run_all(args: argparse.Namespace) -> list[list[Run]]:
    """``--repeat`` rounds, each running every mix and strategy once."""
    config = SimulatorConfig(
        listen="127.0.0.1:0",
        models=parse_models(",".join(MODELS)),
        load_latency=args.load_latency,
        token_latency=args.token_latency,
        tokens=args.tokens,
    )
    rounds: list[list[Run]] = []
    async with AsyncExitStack() as stack:
        hosts = [
            await stack.enter_async_context(simulator("subprocess", config, name=f"fleet-gpu-{i}"))
            for i in range(args.hosts)
        ]
        client = await stack.enter_async_context(httpx.AsyncClient(limits=limits(4), timeout=None))
        for number in range(args.repeat):
            progress(f"round {number + 1} of {args.repeat}")
            runs = []
            for mix in args.mixes:
                for strategy in args.strategies:
                    if strategy == "foreman":
                        runs.append(await via_foreman(args, client, hosts, mix))
                    else:
                        runs.append(await direct(args, client, hosts, mix, strategy))
            rounds.append(runs)
    return rounds


def medians(rounds: list[list[Run]]) -> list[Run]:
    """For each (mix, strategy), the round with the median makespan."""
    return [
        median_run([runs[index] for runs in rounds], lambda run: run.makespan)
        for index in range(len(rounds[0]))
    ]


def job_time(rounds: list[list[Run]], args: argparse.Namespace) -> float:
    """The median time of a generation that needed no load, over every run."""
    times = [t for runs in rounds for run in runs for t in run.job_seconds]
    return statistics.median(times) if times else args.tokens * args.token_latency


def ideal(args: argparse.Namespace, seconds_per_job: float) -> float:
    return (args.jobs * seconds_per_job + len(MODELS) * args.load_latency) / args.hosts


# -- The cost of a decision ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cost:
    size: int
    row: str
    micros: float
    """Median over the trials of the mean microseconds per decision."""
    trials: list[float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "queued": self.size,
            "row": self.row,
            "microseconds_per_decision": self.micros,
            "trials": self.trials,
        }


COST_ROWS = {
    "peek (one host)": "peek(loaded), the one-host rule: drain the loaded model",
    "peek_for: drain": "peek_for a fleet host whose loaded model has jobs",
    "peek_for: switch": "peek_for a fleet host whose model ran dry; 2 others drain 2 models",
    "peek_for: tenants": "peek_for: drain, the jobs of 8 tenants of weights 1 to 8",
}
TENANTS = {"peek_for: tenants": 8}
"""Rows whose queue holds the jobs of that many tenants (the others: no tenant)."""


def _queue(size: int, seed: int, tenants: int) -> JobQueue:
    """``size`` queued jobs over the six models, three priorities and ``tenants`` tenants
    (the i-th of weight i; one: no tenant), at random."""
    rng = random.Random(seed)
    keys = [model_key(model) for model in MODELS]
    weights = {f"tenant-{i}": float(i) for i in range(1, tenants + 1)} if tenants > 1 else {}
    names = list(weights) or [None]
    queue = JobQueue(1e9, lambda tenant: weights.get(tenant or "", 1.0))  # nothing starves
    for n in range(size):
        job = QueuedJob(f"job-{n}", n, rng.randrange(3), rng.choice(keys), 0.0, rng.choice(names))
        queue.push(job)
    return queue


def _decide(queue: JobQueue, row: str) -> Callable[[float], QueuedJob | None]:
    """The decision ``row`` times, on ``queue``."""
    keys = [model_key(model) for model in MODELS]
    installed = frozenset(keys)  # canonical names (llama3:latest), as can_run is asked
    costs = Costs(job=0.04, load=0.2)

    def worth_sharing(key: str, hosts: int) -> bool:
        return costs.worth_sharing(queue.backlog(key), key, hosts)

    elsewhere = {keys[0]: 1, keys[1]: 1}  # the other two hosts drain these

    def view(loaded: str) -> HostView:
        return HostView(loaded, lambda model: model in installed, elsewhere, worth_sharing)

    if row == "peek (one host)":
        return lambda now: queue.peek(keys[2], now)
    if row in ("peek_for: drain", "peek_for: tenants"):
        drain = view(keys[2])
        return lambda now: queue.peek_for(drain, now)
    switch = view(model_key("tinyllama"))  # nothing queued for it
    return lambda now: queue.peek_for(switch, now)


def _cycles(queue: JobQueue, decide: Callable[[float], QueuedJob | None], count: int) -> float:
    """Seconds for ``count`` decide + take + push cycles (the job pushed back as a new
    arrival, so the queue keeps its size and mix)."""
    arrival = len(queue) + 10**9
    started = time.perf_counter()
    for _ in range(count):
        job = decide(0.0)
        assert job is not None
        queue.take(job.job_id)
        arrival += 1
        queue.push(QueuedJob(job.job_id, arrival, job.priority, job.model_key, 0.0, job.tenant))
    return time.perf_counter() - started


def decision_costs(args: argparse.Namespace) -> list[Cost]:
    costs = []
    for size in args.sizes:
        progress(f"decision cost: {size:,} queued jobs, {args.decisions:,} decisions x "
                 f"{args.cost_trials} trials per row")  # fmt: skip
        queues = {n: _queue(size, args.seed, n) for n in {1, *TENANTS.values()}}
        trials: dict[str, list[float]] = {row: [] for row in COST_ROWS}
        for _ in range(args.cost_trials):  # the rows interleaved, on the same queues
            for row in COST_ROWS:
                queue = queues[TENANTS.get(row, 1)]
                seconds = _cycles(queue, _decide(queue, row), args.decisions)
                trials[row].append(seconds / args.decisions * 1e6)
        costs += [Cost(size, row, statistics.median(t), t) for row, t in trials.items()]
    return costs


# -- The report ----------------------------------------------------------------------


def _slash(values: Sequence[float], digits: int = 0) -> str:
    return "/".join(f"{value:.{digits}f}" for value in values)


def _runs_table(runs: list[Run], best: float) -> str:
    headers = ["mix", "strategy", "how", "jobs", "loads", "host loads", "host jobs",
               "makespan s", "vs ideal", "host ends s", "lead s", "sent s"]  # fmt: skip
    return table(
        headers,
        [
            [
                run.mix,
                run.strategy,
                HOW[run.strategy],
                run.jobs,
                run.loads,
                _slash(run.host_loads),
                _slash(run.host_jobs),
                fmt_float(run.makespan, 2),
                f"{run.makespan / best - 1:+.1%}",
                _slash(run.host_ends, 1),
                fmt_float(run.lead, 2),
                fmt_float(run.submitted, 2),
            ]
            for run in runs
        ],
        left=3,
    )


def _targets(runs: list[Run], best: float, args: argparse.Namespace) -> list[str]:
    lines = []
    max_loads = len(MODELS) + args.hosts
    for mix in args.mixes:
        by = {run.strategy: run for run in runs if run.mix == mix}
        fleet = by.get("foreman")
        if fleet is None:
            continue
        others = "; ".join(f"{name}: {run.loads}" for name, run in by.items() if run is not fleet)
        lines.append(
            f"target ({mix}): loads <= models + hosts = {max_loads}: "
            f"{'met' if fleet.loads <= max_loads else 'NOT met'} ({fleet.loads} loads"
            f"{'; ' + others if others else ''})"
        )
        within = fleet.makespan <= best * (1 + MAKESPAN_SLACK)
        lines.append(
            f"target ({mix}): makespan within {MAKESPAN_SLACK:.0%} of ideal ({best:.2f} s): "
            f"{'met' if within else 'NOT met'} ({fleet.makespan:.2f} s, "
            f"{fleet.makespan / best - 1:+.1%})"
        )
        robin = by.get("round-robin")
        if robin is not None:
            ratio = robin.makespan / fleet.makespan
            lines.append(
                f"target ({mix}): Foreman far ahead of round robin (makespan at least "
                f"{FAR_AHEAD:g}x shorter): {'met' if ratio >= FAR_AHEAD else 'NOT met'} "
                f"({fleet.makespan:.2f} s vs {robin.makespan:.2f} s: {ratio:.1f}x)"
            )
    return lines


def _cost_ratio(costs: list[Cost], row: str) -> float:
    mine = sorted((cost for cost in costs if cost.row == row), key=lambda cost: cost.size)
    return mine[-1].micros / mine[0].micros


def _cost_report(costs: list[Cost], args: argparse.Namespace) -> list[str]:
    sizes = sorted({cost.size for cost in costs})
    micros = {(cost.size, cost.row): cost.micros for cost in costs}
    rows: list[list[str | int | float | None]] = [
        [row, how, *(fmt_float(micros[size, row], 2) for size in sizes)]
        for row, how in COST_ROWS.items()
    ]
    if len(sizes) > 1:
        for line in rows:
            line.append(f"{_cost_ratio(costs, str(line[0])):.2f}x")
    ratio_header = [f"{sizes[-1]:,} / {sizes[0]:,}"] if len(sizes) > 1 else []
    headers = ["row", "decision", *(f"µs @ {size:,}" for size in sizes), *ratio_header]
    lines = [
        table(headers, rows, left=2),
        "",
        f"µs per decision: the decision + take + push of the picked job (pushed back as a "
        f"new arrival), median of {args.cost_trials} trials of {args.decisions:,} decisions; "
        f"6 models, 3 priorities, at random.",
    ]
    if len(sizes) > 1:
        worst = max(_cost_ratio(costs, row) for row in COST_ROWS if row.startswith("peek_for"))
        lines.append(
            f"target: the cost per decision stays flat ({sizes[-1]:,} vs {sizes[0]:,} queued: "
            f"at most {FLAT:g}x): {'met' if worst <= FLAT else 'NOT met'} "
            f"(peek_for: {worst:.2f}x; peek: {_cost_ratio(costs, 'peek (one host)'):.2f}x)"
        )
    return lines


def report(
    runs: list[Run], costs: list[Cost], best: float, seconds: float, args: argparse.Namespace
) -> str:
    lines: list[str] = []
    if runs:
        lines += [
            _runs_table(runs, best),
            "",
            f"{args.hosts} simulator processes, each serving {', '.join(MODELS)}: load "
            f"{args.load_latency:g} s, {args.tokens} tokens x {args.token_latency:g} s, one "
            f"generation at a time. {args.jobs} jobs per mix; skewed: {MODELS[0]} "
            f"{SKEW:.0%}, the rest in turn, shuffled (seed {args.seed}).",
            f"ideal makespan: ({args.jobs} jobs x {seconds * 1000:.1f} ms + {len(MODELS)} "
            f"loads x {args.load_latency:g} s) / {args.hosts} hosts = {best:.2f} s "
            f"(job time: the median generation without a load, as the hosts timed it).",
            "makespan: first request sent to the last generation's end; host ends s: each "
            "host's last end; lead s: to the first generation's start; sent s: until the "
            "client had sent (Foreman: had submitted) every job.",
            f"Foreman: subprocess, durability {args.durability.value.upper()}, "
            f"FOREMAN_MAX_WAIT {args.max_wait:g} s, {args.clients} submitting clients (each "
            f"warmed up with one refused POST /jobs before the clock). "
            f"Median of {args.repeat} round(s) by makespan.",
            *_targets(runs, best, args),
        ]
    if costs:
        lines += ["", *_cost_report(costs, args)] if lines else _cost_report(costs, args)
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=600, help="jobs per mix")
    parser.add_argument("--hosts", type=int, default=3, help="simulator processes")
    parser.add_argument("--load-latency", type=float, default=0.2, help="seconds per load")
    parser.add_argument("--token-latency", type=float, default=0.005, help="seconds per token")
    parser.add_argument("--tokens", type=int, default=8, help="tokens per answer")
    parser.add_argument("--mixes", nargs="+", choices=MIXES, default=list(MIXES))
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--seed", type=int, default=12, help="the skewed mix's shuffle")
    parser.add_argument("--durability", type=Durability, default=Durability.FULL)
    parser.add_argument("--max-wait", type=float, default=60.0, help="FOREMAN_MAX_WAIT, seconds")
    parser.add_argument("--clients", type=int, default=8, help="clients submitting to Foreman")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the median is reported")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds a strategy's run may take"
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000], help="queued jobs"
    )
    parser.add_argument("--decisions", type=int, default=20_000, help="decisions per trial")
    parser.add_argument("--cost-trials", type=int, default=5, help="trials per row and size")
    parser.add_argument("--no-runs", dest="runs", action="store_false", help="only the costs")
    parser.add_argument("--no-cost", dest="cost", action="store_false", help="only the runs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse(argv)
    info = machine()
    rounds = trio.run(run_all, args) if args.runs else []
    costs = decision_costs(args) if args.cost else []
    runs = medians(rounds) if rounds else []
    seconds = job_time(rounds, args)
    best = ideal(args, seconds)
    document = {
        "benchmark": "fleet",
        "machine": info,
        "hosts": args.hosts,
        "models": list(MODELS),
        "jobs": args.jobs,
        "load_latency": args.load_latency,
        "token_latency": args.token_latency,
        "tokens": args.tokens,
        "seed": args.seed,
        "skew": SKEW,
        "durability": args.durability.value,
        "max_wait": args.max_wait,
        "clients": args.clients,
        "repeat": args.repeat,
        "job_seconds": seconds,
        "ideal_makespan_seconds": best,
        "target_max_loads": len(MODELS) + args.hosts,
        "target_makespan_slack": MAKESPAN_SLACK,
        "target_far_ahead": FAR_AHEAD,
        "target_flat": FLAT,
        "runs": [run.as_dict() for run in runs],
        "rounds": [[run.as_dict() for run in one] for one in rounds],
        "decision_costs": [cost.as_dict() for cost in costs],
    }
    emit(args.json, document, report(runs, costs, best, seconds, args))


if __name__ == "__main__":
    main(sys.argv[1:])
