"""State webhooks: deliveries per second to a local receiver, and the delay from a state change
being committed to its delivery, p50 and p99.

Three processes besides this one: the simulator (no load or token latency), Foreman
(``FOREMAN_WEBHOOK_SECRET`` set, so every delivery is signed; ``FOREMAN_WEBHOOK_CONCURRENCY``
16 by default), each row on a fresh log, and the receiver (``_receiver.py``: a raw ASGI
app on Foreman's Hypercorn configuration that answers 200 at once and notes each request's
wall-clock arrival). Rows:

  live        ``--clients`` clients submit ``--jobs`` chat jobs (``POST /jobs``), each with
              ``state_webhook_url`` pointing at the receiver, after ``--warmup`` jobs that
              open the connections; each job owes three notifications (job.queued,
              job.running, job.succeeded). The row ends when the receiver has them all
              and the log has recorded every one as delivered.
  paced       ``--paced`` such jobs from one client, one every ``--every-ms`` on a fixed
              schedule: the delay when Foreman is not saturated.
  GPU-bound   ``--paced`` such jobs submitted at once, each holding the simulated GPU for
              ``--gpu-ms`` (a stall fault on every generation), as a real model does: the
              queue, not Foreman's CPU, sets the pace, which is Foreman's working regime.
  backlog     Foreman started on a log built beforehand that holds ``--jobs`` finished
              jobs and their notifications, all pending (as after a receiver outage):
              the dispatcher drains them with nothing else to do. Its delays are
              meaningless (the events are older than the process).
  jobs only   the live row's jobs without ``state_webhook_url``: the job pipeline alone.
  bare proxy  not Foreman: the jobs' requests as ``/api/chat`` calls from
              ``--proxy-clients`` clients (enough to keep both cores busy) through
              ``_proxy.py`` (Hypercorn + trio + one httpx client, nothing kept) to the
              same simulator: one HTTP request in and one out a call, the least any
              pipeline on this stack spends a job; its calls/s and the CPU a call of
              every process bound what the jobs-only row can reach here.
The rows above are Foreman's, on durability FULL by default (``--durability``); the
baselines are sent once a round:
  baseline    the same receiver process sent the live row's requests again (its bodies
              and headers, signatures included) by a plain ``httpx.AsyncClient``,
              ``--concurrency`` tasks and connections: the receiver's ceiling;
  baseline 1  the first ``--sequential`` of them, one at a time: the unloaded round trip,
              the floor of a delivery's delay.

- deliveries/s: distinct ``webhook-id``\\s received / (last arrival - first arrival);
- delay: arrival - the payload's ``occurred_at``, the ``recorded_at`` of the job event,
  which the log stamps as the commit that writes it begins (so the delay includes that
  commit's own time); the baselines' delay is arrival - ``time.time()`` before the POST;
- jobs/s: jobs / (last ``JobSucceeded`` - first ``JobSubmitted``), from the log: the
  notifications cannot outrun the state changes that cause them.

Rows run in ``--repeat`` rounds, interleaved; the table shows each row's median round.
``--live-only`` runs the live rows and the first baseline alone; ``--baseline TREE`` runs
each Foreman row again from that source tree (a worktree of the commit to compare with),
interleaved.

    python benchmarks/webhooks.py [--jobs N] [--clients C] [--concurrency K]
                                  [--durability full normal] [--repeat R] [--live-only]
                                  [--baseline TREE] [--json]
"""

from __future__ import annotations

import argparse
import base64
import json
import sqlite3
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio
from _logs import batches, job_events, scratch
from _report import ROOT, Cell, emit, fmt_float, machine, median_run, progress, rate, table
from _servers import (
    Served,
    chat,
    cpu_seconds,
    foreman_on,
    limits,
    one_client_each,
    percentile,
    program,
    sim_args,
    sim_config,
    sim_reset,
    unix_seconds,
    wait_healthy,
)

from foreman.events.log import Durability
from foreman.events.store import open_log
from foreman.events.types import Event
from foreman.ids import new_ulids

TARGET_RATE = 500.0
"""Deliveries per second to a local receiver."""
TARGET_P50_MS = 5.0
"""Delay from a state change's commit to its delivery, at p50."""
TRANSITIONS = ("job.queued", "job.running", "job.succeeded")
"""What each job of the workload owes its receiver."""
SECRET = "whsec_" + base64.b64encode(b"foreman webhook benchmark key 32").decode()
RECEIVER = Path(__file__).resolve().parent / "_receiver.py"
PROXY = RECEIVER.with_name("_proxy.py")
TARGET_JOBS = 500.0
"""Async jobs per second end to end (issue 16, goal 2)."""
CORES_MS_A_JOB = 2 * 1000 / TARGET_JOBS
"""CPU a job (ms) every process together may spend for 500 jobs/s on this 2-core machine."""
RECEIVER_HOST = "127.0.0.1"
"""Where the receiver listens: on loopback, so FOREMAN_WEBHOOK_ALLOWED_HOSTS names it."""
HOOK = "/hook"
MODEL = "llama3"
JSON = {"content-type": "application/json"}
POLL = 0.05
NOT_REPLAYED = frozenset({"host", "content-length"})
"""Headers httpx sets itself when the requests are sent again."""
Request = tuple[bytes, dict[str, str]]


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    arrivals: tuple[float, ...] = ()
    """Each request's wall-clock arrival at the receiver, sorted."""
    distinct: int = 0
    delays_ms: tuple[float, ...] = ()
    """Live: arrival - occurred_at; baselines: arrival - time.time() before the POST."""
    by_type: dict[str, tuple[float, ...]] = field(default_factory=dict)
    round_trips_ms: tuple[float, ...] = ()
    """The baselines' POSTs, sent to answered."""
    paced: bool = False
    """Its rate is the submitter's schedule."""
    jobs: int = 0
    job_seconds: float = 0.0
    submit_seconds: float = 0.0
    """First to last JobSubmitted of the timed jobs."""
    quiet_delays_ms: tuple[float, ...] = ()
    """The delays of state changes recorded after the last JobSubmitted."""
    recorded_ms: tuple[float, ...] = ()
    """Arrival to the recorded_at of the WebhookDelivered that records it (the lane
    does not wait for it)."""
    body_bytes: float = 0.0
    """Mean body size."""
    retries: int = 0
    """WebhookAttemptFailed and WebhookAbandoned in the log."""
    window: float = 0.0
    """Wall seconds the CPU figures cover."""
    server_cpu: float = 0.0
    receiver_cpu: float = 0.0
    sim_cpu: float = 0.0
    client_cpu: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.arrivals)

    @property
    def seconds(self) -> float:
        return self.arrivals[-1] - self.arrivals[0] if self.arrivals else self.job_seconds

    @property
    def rate(self) -> float:
        return rate(self.distinct, self.seconds)

    @property
    def job_rate(self) -> float:
        return rate(self.jobs, self.job_seconds)

    @property
    def submit_rate(self) -> float:
        return rate(self.jobs, self.submit_seconds)

    def p(self, q: float) -> float:
        return percentile(self.delays_ms, q)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "requests": self.requests,
            "distinct": self.distinct,
            "retries": self.retries,
            "seconds": self.seconds,
            "deliveries_per_second": self.rate if self.arrivals else None,
            "paced": self.paced,
            **{f"delay_p{q}_ms": _pct(self.delays_ms, q) for q in (50, 99, 100)},
            "delay_by_type_ms": {
                kind: {f"p{q}": _pct(ms, q) for q in (50, 99)} for kind, ms in self.by_type.items()
            },
            **{f"round_trip_p{q}_ms": _pct(self.round_trips_ms, q) for q in (50, 99)},
            "jobs": self.jobs,
            "job_seconds": self.job_seconds,
            "jobs_per_second": self.job_rate if self.jobs else None,
            "submissions_per_second": self.submit_rate if self.jobs else None,
            **{f"delay_after_submissions_p{q}_ms": _pct(self.quiet_delays_ms, q) for q in (50, 99)},
            **{f"arrival_to_recorded_p{q}_ms": _pct(self.recorded_ms, q) for q in (50, 99)},
            "mean_body_bytes": self.body_bytes or None,
            "cpu_window_seconds": self.window,
            "server_cpu_seconds": self.server_cpu,
            "simulator_cpu_seconds": self.sim_cpu,
            "receiver_cpu_seconds": self.receiver_cpu,
            "client_cpu_seconds": self.client_cpu,
        }


def _pct(values: tuple[float, ...], q: float) -> float | None:
    return percentile(values, q) if values else None


# -- The receiver ---------------------------------------------------------------------------


async def received_count(control: httpx.AsyncClient) -> dict[str, int]:
    response = await control.get("/_count")
    response.raise_for_status()
    count: dict[str, int] = response.json()
    return count


async def received(control: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await control.get("/_results")
    response.raise_for_status()
    results: list[dict[str, Any]] = response.json()
    return results


async def forget(control: httpx.AsyncClient) -> None:
    (await control.post("/_reset")).raise_for_status()


async def wait_received(control: httpx.AsyncClient, distinct: int) -> None:
    """Until the receiver has ``distinct`` webhook-ids (callers bound the wait)."""
    while True:
        if (await received_count(control))["distinct"] >= distinct:
            return
        await trio.sleep(POLL)


def check_received(results: list[dict[str, Any]], jobs: set[str]) -> None:
    """Every one of ``jobs`` was told of each transition, and no other job was."""
    if strays := {r["job_id"] for r in results} - jobs:
        raise RuntimeError(f"the receiver got notifications of {len(strays)} unknown jobs")
    kinds = Counter(r["type"] for r in results)
    if kinds != Counter(dict.fromkeys(TRANSITIONS, len(jobs))):
        raise RuntimeError(f"{len(jobs)} jobs, but the receiver got {kinds}")


# -- Foreman's log --------------------------------------------------------------------------


def _query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def event_counts(db: Path) -> Counter[str]:
    return Counter(dict(_query(db, "SELECT type, count(*) FROM events GROUP BY type")))


async def wait_recorded(db: Path, kind: str, count: int) -> Counter[str]:
    """Until the log holds ``count`` events of type ``kind`` (a WebhookDelivered is appended
    after the receiver's answer); returns the log's event counts."""
    while True:
        if (counts := event_counts(db))[kind] >= count:
            return counts
        await trio.sleep(POLL)


def job_times(db: Path, jobs: set[str]) -> tuple[float, float, float]:
    """The first and the last of ``jobs`` submitted, and the last succeeded (``recorded_at``
    as Unix seconds)."""
    rows = _query(
        db,
        "SELECT type, stream, recorded_at FROM events "
        "WHERE type IN ('JobSubmitted', 'JobSucceeded')",
    )
    times: dict[str, list[float]] = {"JobSubmitted": [], "JobSucceeded": []}
    for kind, job, at in rows:
        if job in jobs:
            times[kind].append(unix_seconds(at))
    if any(len(each) != len(jobs) for each in times.values()):
        counts = {kind: len(each) for kind, each in times.items()}
        raise RuntimeError(f"{db}: {len(jobs)} jobs, but {counts}")
    return min(times["JobSubmitted"]), max(times["JobSubmitted"]), max(times["JobSucceeded"])


def delivered_at(db: Path) -> dict[str, float]:
    """Each delivered notification's ``webhook-id``: its WebhookDelivered's ``recorded_at``."""
    rows = _query(
        db,
        "SELECT json_extract(data, '$.delivery'), recorded_at FROM events "
        "WHERE type = 'WebhookDelivered'",
    )
    return {delivery: unix_seconds(at) for delivery, at in rows}


def build_backlog(db: Path, hook: str, count: int) -> set[str]:
    """A log of ``count`` succeeded jobs submitted with ``state_webhook_url`` = ``hook``, and
    so their notifications, all pending; returns the jobs' ids."""
    ids = new_ulids(count)

    def events() -> Iterator[tuple[str, Event]]:
        for n, job_id in enumerate(ids):
            submitted, started, succeeded = job_events(n)
            yield job_id, submitted.model_copy(update={"state_webhook_url": hook})
            yield job_id, started
            yield job_id, succeeded

    log = open_log(db, durability=Durability.OFF)
    try:
        for appends in batches(events(), 8192):
            log.append_many(appends)
    finally:
        log.close()
    return set(ids)


# -- Foreman rows ---------------------------------------------------------------------------


def job_body(hook: str | None, n: int) -> bytes:
    messages = [{"role": "user", "content": f"request {n}: say something short"}]
    body: dict[str, Any] = {"kind": "chat", "request": {"model": MODEL, "messages": messages}}
    if hook is not None:
        body["state_webhook_url"] = hook
    return json.dumps(body).encode()


async def submit_jobs(
    url: str, hook: str | None, first: int, count: int, clients: int, every: float = 0.0
) -> set[str]:
    """``count`` jobs from ``clients`` concurrent clients, each with its own keep-alive
    connection, as fast as they are accepted; or, with ``every`` (seconds), one job per
    ``every`` on a fixed schedule. Returns the accepted jobs' ids."""
    numbers = iter(range(first, first + count))
    accepted: set[str] = set()
    start = trio.current_time()

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, limits=limits(1), timeout=60) as http:
            for n in numbers:
                if every:
                    await trio.sleep_until(start + (n - first) * every)
                response = await http.post("/jobs", content=job_body(hook, n), headers=JSON)
                if response.status_code != 202:
                    raise RuntimeError(
                        f"POST /jobs answered {response.status_code}: {response.text}"
                    )
                accepted.add(response.json()["job_id"])

    async with trio.open_nursery() as nursery:
        for _ in range(1 if every else clients):
            nursery.start_soon(client)
    return accepted


def foreman_env(args: argparse.Namespace, durability: Durability) -> dict[str, str]:
    return {
        "FOREMAN_DURABILITY": durability.value,
        "FOREMAN_WEBHOOK_SECRET": SECRET,
        "FOREMAN_WEBHOOK_CONCURRENCY": str(args.concurrency),
        "FOREMAN_WEBHOOK_ALLOWED_HOSTS": RECEIVER_HOST,
        "FOREMAN_MAX_QUEUE": "1000000",
        "FOREMAN_SHUTDOWN_GRACE": "0",
    }


class CpuMeter:
    """Wall time, and the CPU time of the given processes (``receiver_cpu``,
    ``server_cpu``, ``sim_cpu``: their PIDs) and of this process, from :meth:`start` to
    :meth:`stop`."""

    def __init__(self, **pids: int) -> None:
        self._pids = pids

    def start(self) -> None:
        self._wall, self._own = time.perf_counter(), time.process_time()
        self._cpu = {key: cpu_seconds(pid) for key, pid in self._pids.items()}

    def stop(self) -> dict[str, float]:
        used = {key: cpu_seconds(pid) - self._cpu[key] for key, pid in self._pids.items()}
        own = time.process_time() - self._own
        return {"window": time.perf_counter() - self._wall, "client_cpu": own, **used}


async def live(
    args: argparse.Namespace,
    sim: Served,
    receiver: Served,
    control: httpx.AsyncClient,
    durability: Durability,
    *,
    hooked: bool = True,
    mode: str = "live",
    tree: Path = ROOT,
) -> tuple[Row, list[dict[str, Any]]]:
    """One Foreman on a fresh log: ``args.warmup`` jobs, then ``args.jobs`` timed ones; or
    ``args.paced`` jobs, one every ``args.every_ms`` (mode ``paced``), or all at once with
    each generation held ``args.gpu_ms`` (mode ``gpu``); with ``hooked``, each with the
    receiver as its ``state_webhook_url``; Foreman run from the source ``tree``."""
    name = f"webhooks-{durability.value}{_suffix(tree)}" + ("" if hooked else "-jobs")
    name += "" if mode == "live" else f"-{mode}"
    count, every = {
        "live": (args.jobs, 0.0),
        "paced": (args.paced, args.every_ms / 1000),
        "gpu": (args.paced, 0.0),
    }[mode]
    db = scratch(f"{name}.db")
    hook = receiver.url + HOOK if hooked else None
    owed = len(TRANSITIONS) if hooked else 0
    await sim_reset(control, sim.url)
    if mode == "gpu":
        hold = {"kind": "stall", "seconds": args.gpu_ms / 1000, "after_tokens": 0, "times": None}
        (await control.post(f"{sim.url}/_sim/faults", json=hold)).raise_for_status()
    async with foreman_on(name, db, sim.url, foreman_env(args, durability), tree=tree) as served:
        await wait_healthy(control, served.url)
        progress(f"{name}: {args.warmup} warm-up jobs, then {count:,} jobs ...")
        with trio.fail_after(args.timeout):
            await submit_jobs(served.url, hook, 0, args.warmup, args.clients)
            await wait_received(control, owed * args.warmup)
            await wait_recorded(db, "WebhookDelivered", owed * args.warmup)
            await wait_recorded(db, "JobSucceeded", args.warmup)
        await forget(control)
        meter = CpuMeter(receiver_cpu=receiver.pid, server_cpu=served.pid, sim_cpu=sim.pid)
        meter.start()
        total = args.warmup + count
        with trio.fail_after(args.timeout):
            jobs = await submit_jobs(served.url, hook, args.warmup, count, args.clients, every)
            await wait_received(control, owed * count)
            await wait_recorded(db, "JobSucceeded", total)
            counts = await wait_recorded(db, "WebhookDelivered", owed * total)
        cpu = meter.stop()
    results = await received(control)
    first, last_submitted, last = job_times(db, jobs)
    if not hooked:
        if results:
            raise RuntimeError(f"{len(results)} notifications of jobs without a webhook")
        name = f"Foreman{_label(tree)}, {durability.value.upper()}: jobs only, no webhook"
        spans = {"job_seconds": last - first, "submit_seconds": last_submitted - first}
        return Row(name, jobs=len(jobs), **spans, **cpu), []
    check_received(results, jobs)
    delays = [(r["type"], (r["at"] - unix_seconds(r["occurred_at"])) * 1000) for r in results]
    recorded = delivered_at(db)
    how = {
        "live": "live, commit to receiver",
        "paced": f"paced, a job every {args.every_ms:g} ms",
        "gpu": f"GPU-bound, {args.gpu_ms:g} ms a job",
    }[mode]
    row = Row(
        f"Foreman{_label(tree)}, {durability.value.upper()}: {how}",
        tuple(sorted(r["at"] for r in results)),
        len({r["webhook_id"] for r in results}),
        tuple(ms for _, ms in delays),
        paced=mode != "live",
        by_type={kind: tuple(ms for t, ms in delays if t == kind) for kind in TRANSITIONS},
        jobs=len(jobs),
        job_seconds=last - first,
        submit_seconds=last_submitted - first,
        quiet_delays_ms=tuple(
            ms
            for r, (_, ms) in zip(results, delays, strict=True)
            if unix_seconds(r["occurred_at"]) > last_submitted
        ),
        recorded_ms=tuple((recorded[r["webhook_id"]] - r["at"]) * 1000 for r in results),
        body_bytes=statistics.fmean(len(r["body"]) for r in results),
        retries=counts["WebhookAttemptFailed"] + counts["WebhookAbandoned"],
        **cpu,
    )
    return row, results


async def backlog(
    args: argparse.Namespace,
    sim: Served,
    receiver: Served,
    control: httpx.AsyncClient,
    durability: Durability,
    tree: Path = ROOT,
) -> Row:
    """Foreman started on ``args.jobs`` finished jobs whose notifications are all pending."""
    name = f"webhooks-{durability.value}{_suffix(tree)}-backlog"
    db = scratch(f"{name}.db")
    owed = len(TRANSITIONS) * args.jobs
    jobs = build_backlog(db, receiver.url + HOOK, args.jobs)
    await forget(control)
    progress(f"{name}: {owed:,} notifications pending at start ...")
    async with foreman_on(name, db, sim.url, foreman_env(args, durability), tree=tree) as served:
        meter = CpuMeter(receiver_cpu=receiver.pid, server_cpu=served.pid)
        meter.start()
        with trio.fail_after(args.timeout):
            await wait_received(control, owed)
            counts = await wait_recorded(db, "WebhookDelivered", owed)
        cpu = meter.stop()
    results = await received(control)
    check_received(results, jobs)
    return Row(
        f"Foreman{_label(tree)}, {durability.value.upper()}: backlog drained at start",
        tuple(sorted(r["at"] for r in results)),
        len({r["webhook_id"] for r in results}),
        retries=counts["WebhookAttemptFailed"] + counts["WebhookAbandoned"],
        **cpu,
    )


# -- Baselines ------------------------------------------------------------------------------


def replayable(results: list[dict[str, Any]]) -> list[Request]:
    """The requests the receiver got, as they can be sent again."""
    return [
        (r["body"].encode(), {k: v for k, v in r["headers"].items() if k not in NOT_REPLAYED})
        for r in results
    ]


async def baseline(
    name: str, requests: list[Request], tasks: int, receiver: Served, control: httpx.AsyncClient
) -> Row:
    """``requests`` sent by a plain client, ``tasks`` at once, each on its own connection
    of one pool; the first ``2 * tasks`` are sent first, untimed, to open the connections."""
    hook = receiver.url + HOOK
    sent: dict[str, float] = {}
    round_trips: list[float] = []

    async def sender(http: httpx.AsyncClient, work: Iterator[Request], timed: bool) -> None:
        for body, headers in work:
            sent[headers["webhook-id"]] = time.time()
            started = time.perf_counter()
            response = await http.post(hook, content=body, headers=headers)
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                raise RuntimeError(f"the receiver answered {response.status_code}")
            if timed:
                round_trips.append(elapsed)

    async def send_all(http: httpx.AsyncClient, work: list[Request], timed: bool) -> None:
        shared = iter(work)
        async with trio.open_nursery() as nursery:
            for _ in range(tasks):
                nursery.start_soon(sender, http, shared, timed)

    progress(f"{name}: {len(requests):,} requests ...")
    async with httpx.AsyncClient(limits=limits(tasks), timeout=60) as http:
        await send_all(http, requests[: 2 * tasks], False)
        await forget(control)
        sent.clear()
        meter = CpuMeter(receiver_cpu=receiver.pid)
        meter.start()
        await send_all(http, requests, True)
        cpu = meter.stop()
    results = await received(control)
    return Row(
        name,
        tuple(sorted(r["at"] for r in results)),
        len({r["webhook_id"] for r in results}),
        tuple((r["at"] - sent[r["webhook_id"]]) * 1000 for r in results),
        round_trips_ms=tuple(round_trips),
        **cpu,
    )


async def bare_proxy(args: argparse.Namespace, sim: Served, proxy: Served) -> Row:
    """The jobs' requests as ``/api/chat`` calls from ``args.proxy_clients`` clients, each on
    its own keep-alive connection, through the bare proxy to the simulator; the first
    ``args.warmup`` untimed."""

    async def client(http: httpx.AsyncClient, numbers: Iterator[int]) -> None:
        for n in numbers:
            await chat(http, proxy.url, MODEL, n)

    async def calls(numbers: range) -> None:
        shared = iter(numbers)
        async with trio.open_nursery() as nursery:
            for http in clients:
                nursery.start_soon(client, http, shared)

    progress(f"bare proxy: {args.warmup} warm-up calls, then {args.jobs:,} calls ...")
    async with one_client_each(args.proxy_clients) as clients:
        await calls(range(args.warmup))
        meter = CpuMeter(server_cpu=proxy.pid, sim_cpu=sim.pid)
        meter.start()
        with trio.fail_after(args.timeout):
            await calls(range(args.warmup, args.warmup + args.jobs))
        cpu = meter.stop()
    name = f"bare proxy, {args.proxy_clients} clients calling /api/chat"
    return Row(name, jobs=args.jobs, job_seconds=cpu["window"], **cpu)


# -- The rounds -----------------------------------------------------------------------------


def foremen(args: argparse.Namespace) -> list[tuple[Durability, Path]]:
    """The Foremans measured: one per durability, and each again from ``--baseline``."""
    trees = [ROOT] if args.baseline is None else [ROOT, args.baseline.resolve()]
    return [(durability, tree) for durability in args.durability for tree in trees]


def _suffix(tree: Path) -> str:
    return "" if tree == ROOT else "-baseline"


def _label(tree: Path) -> str:
    return "" if tree == ROOT else " (baseline)"


async def run_all(args: argparse.Namespace) -> dict[str, list[Row]]:
    """Every row ``--repeat`` times, interleaved, so each round's rows see the same machine."""
    runs: dict[str, list[Row]] = {}
    argv = [sys.executable, str(RECEIVER), "--listen", f"{RECEIVER_HOST}:0"]
    sim_argv = [sys.executable, "-m", "foreman.cli", *sim_args(sim_config(0.0, 0.0, args.tokens))]
    async with (
        program("simulator", sim_argv, {}, "simulator on") as sim,
        program("proxy", [sys.executable, str(PROXY), "--backend", sim.url], {}, "proxy:") as proxy,
        program("webhooks-receiver", argv, {}, "receiver: listening on") as receiver,
        httpx.AsyncClient(base_url=receiver.url, timeout=30) as control,
    ):
        for repeat in range(args.repeat):
            progress(f"round {repeat + 1} of {args.repeat}")
            replay: list[Request] = []
            for durability, tree in foremen(args):
                key = durability.value + _suffix(tree)
                row, results = await live(args, sim, receiver, control, durability, tree=tree)
                runs.setdefault(key, []).append(row)
                replay = replay or replayable(results)
                if args.extra:
                    for mode in ("paced", "gpu"):
                        row, _ = await live(
                            args, sim, receiver, control, durability, mode=mode, tree=tree
                        )
                        runs.setdefault(f"{key}-{mode}", []).append(row)
                    row = await backlog(args, sim, receiver, control, durability, tree)
                    runs.setdefault(f"{key}-backlog", []).append(row)
                    row, _ = await live(
                        args, sim, receiver, control, durability, hooked=False, tree=tree
                    )
                    runs.setdefault(f"{key}-jobs", []).append(row)
            name = f"baseline: httpx, {args.concurrency} at once, same requests"
            row = await baseline(name, replay, args.concurrency, receiver, control)
            runs.setdefault("baseline", []).append(row)
            if args.extra:
                name = "baseline: httpx, one at a time"
                row = await baseline(name, replay[: args.sequential], 1, receiver, control)
                runs.setdefault("baseline-1", []).append(row)
                runs.setdefault("proxy", []).append(await bare_proxy(args, sim, proxy))
    return runs


# -- Report ---------------------------------------------------------------------------------

HEADERS = ["row", "requests", "distinct", "seconds", "deliv/s", "vs baseline", "delay p50",
           "delay p99", "delay max", "POST p50", "POST p99", "jobs/s", "Foreman CPU",
           "receiver CPU", "client CPU"]  # fmt: skip


def _share(seconds: float, window: float) -> str:
    return f"{seconds / window:.0%}" if window > 0 and seconds else ""


def _ms(values: tuple[float, ...], q: float) -> str:
    return fmt_float(percentile(values, q), 2) if values else ""


def _line(row: Row, top: Row) -> list[Cell]:
    return [
        row.name,
        row.requests or "",
        row.distinct or "",
        fmt_float(row.seconds, 2),
        fmt_float(row.rate, 0) if row.arrivals else "",
        f"{row.rate / top.rate:.0%}" if row.arrivals and not row.paced else "",
        _ms(row.delays_ms, 50),
        _ms(row.delays_ms, 99),
        _ms(row.delays_ms, 100),
        _ms(row.round_trips_ms, 50),
        _ms(row.round_trips_ms, 99),
        fmt_float(row.job_rate, 0) if row.jobs else "",
        _share(row.server_cpu, row.window),
        _share(row.receiver_cpu, row.window),
        _share(row.client_cpu, row.window),
    ]


def _cpu_a_job(label: str, row: Row) -> str:
    parts = {"server": row.server_cpu, "simulator": row.sim_cpu, "client": row.client_cpu}
    each = ", ".join(f"{name} {seconds / row.jobs * 1000:.2f}" for name, seconds in parts.items())
    total = sum(parts.values()) / row.jobs * 1000
    return f"{label}: CPU a job (ms): {each}; all {total:.2f} ({row.job_rate:,.0f} jobs/s)"


def report(rows: dict[str, Row], runs: dict[str, list[Row]], args: argparse.Namespace) -> str:
    top = rows["baseline"]
    every = "; ".join(
        f"{key} " + ", ".join(f"{r.rate:,.0f}" for r in each) + " deliveries/s"
        for key, each in runs.items()
        if any(r.arrivals for r in each)
    )
    text = [
        table(HEADERS, [_line(row, top) for row in rows.values()]),
        "",
        f"{args.jobs:,} jobs x {len(TRANSITIONS)} notifications ({', '.join(TRANSITIONS)}); live: "
        f"after {args.warmup} warm-up jobs, {args.clients} clients submit (POST /jobs, one "
        f"keep-alive connection each). FOREMAN_WEBHOOK_CONCURRENCY {args.concurrency}, signed; "
        f"simulator: no latency, {args.tokens} tokens. Median of {args.repeat} round(s) by "
        f"time, rows interleaved. Every round: {every}.",
        "seconds: last - first arrival at the receiver (jobs only: first JobSubmitted to "
        "last JobSucceeded); deliv/s: distinct webhook-ids over that. "
        "Delays in ms. Live: arrival - occurred_at (recorded_at of the job event, stamped as "
        "its commit begins); baselines: arrival - time.time() before the POST. POST: the "
        "baselines' round trips.",
        "jobs/s: jobs / (last JobSucceeded - first JobSubmitted) in the log; each job owes "
        f"{len(TRANSITIONS)} deliveries. CPU: the process's CPU time / wall time over the row "
        "(2 cores: up to 200%); Foreman's includes running the jobs and taking submissions.",
    ]
    for key in (d.value + _suffix(tree) for d, tree in foremen(args)):
        row, label = rows[key], f"{key.upper()} live"
        kinds = "; ".join(
            f"{kind} {percentile(ms, 50):.2f} / {percentile(ms, 99):.2f}"
            for kind, ms in row.by_type.items()
        )
        quiet = row.quiet_delays_ms
        text.append(
            f"{label}: delay p50 / p99 by notification: {kinds} ms; of the "
            f"{len(quiet):,} state changes after the last submission: "
            f"{_ms(quiet, 50) or '-'} / {_ms(quiet, 99) or '-'} ms"
        )
        alone = rows.get(f"{key}-jobs")
        text.append(
            f"{label}: {row.jobs:,} jobs submitted in {row.submit_seconds:.2f} s "
            f"({row.submit_rate:,.0f}/s"
            + (f"; jobs only: {alone.submit_rate:,.0f}/s" if alone else "")
            + f"); arrival to its WebhookDelivered's recorded_at: "
            f"p50 {_ms(row.recorded_ms, 50)} ms, p99 {_ms(row.recorded_ms, 99)} "
            f"ms; bodies {row.body_bytes:,.0f} bytes on average"
        )
        for mode, how in (
            ("paced", f"one every {args.every_ms:g} ms"),
            ("gpu", f"at once, {args.gpu_ms:g} ms of GPU each"),
        ):
            if light := rows.get(f"{key}-{mode}"):
                kinds = "; ".join(
                    f"{kind} {percentile(ms, 50):.2f} / {percentile(ms, 99):.2f}"
                    for kind, ms in light.by_type.items()
                )
                text.append(
                    f"{key.upper()} {mode} ({light.jobs} jobs, {how}): delay p50 / p99 by "
                    f"notification: {kinds} ms; arrival to recorded p50 "
                    f"{_ms(light.recorded_ms, 50)} ms"
                )
    if floor_row := rows.get("proxy"):
        for key in [f"{d.value}{_suffix(tree)}-jobs" for d, tree in foremen(args)] + ["proxy"]:
            if measured := rows.get(key):
                text.append(_cpu_a_job(key.upper().removesuffix("-JOBS"), measured))
        text.append(
            f"the bare proxy: {floor_row.job_rate:,.0f} calls/s; {TARGET_JOBS:,.0f} jobs/s on "
            f"this machine's 2 cores allows {CORES_MS_A_JOB:.1f} ms of CPU a job, every process "
            "together"
        )
    checked = [each for key, each in runs.items() if not key.startswith("baseline")]
    duplicates = sum(r.requests - r.distinct for each in checked for r in each)
    retries = sum(r.retries for each in checked for r in each)
    text.append(
        f"every Foreman row: each notification received once, no other ({duplicates} "
        f"duplicates, {retries} failed attempts in the logs)"
    )
    ceiling = statistics.median(r.rate for r in runs["baseline"])
    floor_key = "baseline-1" if args.extra else "baseline"
    floor = statistics.median(r.p(50) for r in runs[floor_key])
    for key in (d.value + _suffix(tree) for d, tree in foremen(args)):
        deliveries = statistics.median(r.rate for r in runs[key])
        p50 = statistics.median(r.p(50) for r in runs[key])
        jobs = statistics.median(r.job_rate for r in runs[key])
        drained = (
            f"; backlog drained at {statistics.median(r.rate for r in drains):,.0f}/s"
            if (drains := runs.get(f"{key}-backlog"))
            else ""
        )
        text.append(
            f"target: >= {TARGET_RATE:,.0f} deliveries/s, {key.upper()} live: "
            f"{'met' if deliveries >= TARGET_RATE else 'NOT met'} (median of the rounds "
            f"{deliveries:,.0f}/s, with {jobs:,.0f} jobs/s x {len(TRANSITIONS)} = "
            f"{jobs * len(TRANSITIONS):,.0f} state changes/s{drained}; "
            f"baseline {ceiling:,.0f}/s)"
        )
        light = "".join(
            f"; {mode}: {statistics.median(r.p(50) for r in lights):.2f} ms"
            for mode in ("paced", "gpu")
            if (lights := runs.get(f"{key}-{mode}"))
        )
        text.append(
            f"target: delay p50 <= {TARGET_P50_MS:g} ms, {key.upper()} live: "
            f"{'met' if p50 <= TARGET_P50_MS else 'NOT met'} (median of the rounds "
            f"{p50:.2f} ms{light}; {rows[floor_key].name} {floor:.2f} ms)"
        )
    return "\n".join(text)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per row")
    parser.add_argument("--warmup", type=int, default=32, help="untimed jobs first (live)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent submitters")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="FOREMAN_WEBHOOK_CONCURRENCY, and the baseline's",
    )
    parser.add_argument(
        "--paced", type=int, default=150, help="jobs of the paced and GPU-bound rows"
    )
    parser.add_argument(
        "--every-ms", type=float, default=40.0, help="the paced row's interval between jobs"
    )
    parser.add_argument(
        "--gpu-ms", type=float, default=40.0, help="the GPU-bound row's time on the GPU a job"
    )
    parser.add_argument(
        "--proxy-clients", type=int, default=16, help="concurrent callers of the bare proxy row"
    )
    parser.add_argument(
        "--sequential", type=int, default=500, help="requests of the one-at-a-time baseline"
    )
    parser.add_argument(
        "--durability",
        type=Durability,
        nargs="+",
        default=[Durability.FULL],
        help="one set of Foreman rows per durability",
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds (median)")
    parser.add_argument(
        "--live-only",
        dest="extra",
        action="store_false",
        help="only the live rows and the concurrent baseline",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="TREE",
        help="also run each Foreman row from this source tree (a git worktree of the baseline)",
    )
    parser.add_argument("--tokens", type=int, default=8, help="tokens per answer")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds a row may take (each phase)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse(argv)
    info = machine()
    runs = trio.run(run_all, args)
    rows = {key: median_run(each, lambda row: row.seconds) for key, each in runs.items()}
    document = {
        "benchmark": "webhooks",
        "machine": info,
        "jobs": args.jobs,
        "warmup": args.warmup,
        "clients": args.clients,
        "concurrency": args.concurrency,
        "sequential": args.sequential if args.extra else None,
        "paced": args.paced if args.extra else None,
        "every_ms": args.every_ms if args.extra else None,
        "tokens": args.tokens,
        "repeat": args.repeat,
        "target_deliveries_per_second": TARGET_RATE,
        "target_delay_p50_ms": TARGET_P50_MS,
        "rows": {key: row.as_dict() for key, row in rows.items()},
        "runs": {key: [row.as_dict() for row in each] for key, each in runs.items()},
    }
    emit(args.json, document, report(rows, runs, args))


if __name__ == "__main__":
    main(sys.argv[1:])
