"""A batch of 10,000 lines over 3 models, beside the same lines as 10,000 concurrent calls.

One simulator process serves three chat models (``--load-latency`` per load,
``--tokens`` x ``--token-latency`` per answer, one generation at a time); a
Foreman process on a fresh log stands in front of it. Each run sends ``--lines``
chat requests, the models in turn (A, B, C, A, ...), one of two ways:

  batch       one JSONL file uploaded (``POST /v1/files``) and one batch made of it
              (``POST /v1/batches``), run until it has ended (the log's
              ``BatchCreated`` to ``BatchEnded``; the upload's check is timed apart)
  concurrent  every line its own ``POST /v1/chat/completions``, all in flight at once
              (FOREMAN_MAX_QUEUE raised to take them all), until every one answered

Half-way (once half the lines have ended), one interactive chat arrives for a model
other than the one loaded then; its wait is its ``JobSubmitted`` to its
``JobStarted`` in the log: the time until it had the GPU (its own model's load is
after that). The target, one running job at most, is counted in jobs: the lines that
held the GPU or got it (the simulator's record) between the call's submission and its
start; one when it waited for the running line only (or for the line already on its
way to the GPU when the call came: sent, not started yet). Its added wait, beside it, is its wait
less the same call's wait on the idle Foreman (measured first, each run), in lines'
GPU time. Loads are counted twice: all of them, and those
the lines alone needed (the interactive call's own generation taken out of the
sequence: its model's load, and the one back, are its own).

Figures per run: lines per second, model loads (the simulator's count), the
interactive call's wait, and Foreman's CPU time per line (the process's user +
system time over the run, from ``/proc``). Foreman's *own* CPU per line is that
less what a script sending the lines itself would pay: each round first sends the
lines' native requests (grouped by model) straight to the simulator, one after
another, with an ordinary ``httpx`` client, and takes its CPU per call; each run is
set against its own round's client (the machine's speed drifts between rounds by
as much as a third, alike for both). Foreman's
pipeline alone (its log, scheduler and worker) is shown too: its CPU per line less
the same calls made with the code its worker makes them with
(``foreman.backend.Backend.generate``, leaner than an httpx client). Runs alternate,
``--rounds`` times (batch then concurrent, then concurrent then batch, ...:
interleaved, so drift hits both alike), and the medians are reported beside each run
(back to back).

    python benchmarks/batch.py [--lines N] [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import trio
from _logs import WORK_DIR, remove_db
from _report import emit, fmt_float, machine, progress, table
from _servers import (
    BACKLOG_RESETS,
    CHAT_MODELS,
    Served,
    foreman_on,
    limits,
    program,
    sim_reset,
    sim_stats,
)

from foreman.backend import Backend
from foreman.events.log import EventLog
from foreman.openai_protocol import chat_request

MODES = ("batch", "concurrent")
POLL_SECONDS = 1.0
CPU_TARGET_MS = 1.0
"""Foreman's own CPU per line, at most."""
DIRECT_CALLS = 2000
"""Calls of the direct baseline (its CPU per call does not depend on how many)."""


def lines(count: int) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"line-{n}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": CHAT_MODELS[n % len(CHAT_MODELS)],
                "messages": [{"role": "user", "content": f"request {n}: say something short"}],
            },
        }
        for n in range(count)
    ]


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    mode: str
    lines: int
    seconds: float
    loads: int
    line_loads: int
    """Loads the lines alone needed: the interactive call's model loaded and the lines'
    loaded back are not counted."""
    interactive_wait: float
    idle_wait: float
    """The same call's wait on the idle Foreman: its own hand-over to the GPU."""
    line_seconds: float
    """The median GPU time of a generation that needed no load."""
    cpu_ms_per_line: float
    lines_waited: int
    """Lines that held the GPU, or got it, between the interactive call's submission
    and its start: 1 when it waited for the running line only (the line already on
    its way to the GPU when the call came counts as the running one)."""
    round: int
    upload_seconds: float | None = None

    @property
    def per_second(self) -> float:
        return self.lines / self.seconds

    @property
    def added_wait(self) -> float:
        """What the workload added to the interactive call's wait."""
        return self.interactive_wait - self.idle_wait


def _log_times(db: Path, job_id: str) -> tuple[float, float] | None:
    """When the job was submitted and when it started (log time, Unix seconds); None
    until both are recorded."""
    log = EventLog.open(db, read_only=True)
    try:
        stamps = {
            e.type: e.recorded_at for e in log.read_stream(job_id) if e.type != "JobSucceeded"
        }
    finally:
        log.close()
    if "JobStarted" not in stamps:
        return None
    return _unix(stamps["JobSubmitted"]), _unix(stamps["JobStarted"])


def _batch_times(db: Path, batch_id: str) -> float:
    log = EventLog.open(db, read_only=True)
    try:
        stamps = {e.type: e.recorded_at for e in log.read_stream(f"batches/{batch_id}")}
    finally:
        log.close()
    return _unix(stamps["BatchEnded"]) - _unix(stamps["BatchCreated"])


def _unix(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


@dataclass(frozen=True)
class Interactive:
    wait: float
    """Seconds from its JobSubmitted to its JobStarted."""
    started: float
    """When it started (Unix seconds): how its generation is told apart."""
    submitted: float
    """When its JobSubmitted was recorded (Unix seconds)."""


async def _interactive(
    client: httpx.AsyncClient, url: str, sim: str, db: Path, ended: trio.Event
) -> Interactive:
    """Once ``ended`` (half the lines are done): one chat for a model not loaded then;
    its wait for the GPU, from the log."""
    await ended.wait()
    return await _chat_waited(client, url, sim, db)


async def _chat_waited(client: httpx.AsyncClient, url: str, sim: str, db: Path) -> Interactive:
    resident = (await sim_stats(client, sim))["resident"]
    loaded = resident["model"].partition(":")[0] if resident else None
    model = next(m for m in CHAT_MODELS if m != loaded)
    body = {"model": model, "messages": [{"role": "user", "content": "interactive"}]}
    answer = await client.post(f"{url}/v1/chat/completions", json=body, timeout=600)
    answer.raise_for_status()
    job_id = answer.json()["id"].removeprefix("chatcmpl-")
    while (times := _log_times(db, job_id)) is None:  # noqa: ASYNC110 - another process writes it
        await trio.sleep(0.01)  # an answer may precede its JobStarted (ADR-0025)
    submitted, started = times
    return Interactive(started - submitted, started, submitted)


async def run_batch(
    client: httpx.AsyncClient, foreman: Served, sim: str, db: Path, count: int
) -> tuple[float, float, Interactive]:
    """(batch seconds, upload seconds, the interactive call)."""
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines(count))
    began = time.perf_counter()
    uploaded = await client.post(
        f"{foreman.url}/v1/files",
        files={"file": ("lines.jsonl", data)},
        data={"purpose": "batch"},
        timeout=600,
    )
    uploaded.raise_for_status()
    upload = time.perf_counter() - began
    spec = {
        "input_file_id": uploaded.json()["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    batch = (await client.post(f"{foreman.url}/v1/batches", json=spec)).json()
    half = trio.Event()
    waits: list[Interactive] = []
    async with trio.open_nursery() as nursery:

        async def interactive() -> None:
            waits.append(await _interactive(client, foreman.url, sim, db, half))

        nursery.start_soon(interactive)
        while True:
            batch = (await client.get(f"{foreman.url}/v1/batches/{batch['id']}")).json()
            counts = batch["request_counts"]
            if counts["completed"] + counts["failed"] >= count // 2:
                half.set()
            if batch["status"] in ("completed", "failed", "expired", "cancelled"):
                break
            await trio.sleep(POLL_SECONDS)
    if batch["status"] != "completed" or batch["request_counts"]["failed"]:
        raise RuntimeError(f"the batch ended {batch['status']}: {batch['request_counts']}")
    return _batch_times(db, batch["id"]), upload, waits[0]


async def run_concurrent(
    client: httpx.AsyncClient, foreman: Served, sim: str, db: Path, count: int
) -> tuple[float, Interactive]:
    """(seconds until every call answered, the interactive call)."""
    half = trio.Event()
    answered = 0
    resets: list[int] = []
    waits: list[Interactive] = []

    async def call(line: dict[str, Any]) -> None:
        nonlocal answered
        while True:
            try:
                response = await client.post(
                    f"{foreman.url}/v1/chat/completions", json=line["body"], timeout=3600
                )
                break
            except BACKLOG_RESETS:
                resets.append(1)
        if response.status_code != 200:
            raise RuntimeError(f"a call answered {response.status_code}: {response.text}")
        answered += 1
        if answered >= count // 2:
            half.set()

    began = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for line in lines(count):
            nursery.start_soon(call, line)

        async def interactive() -> None:
            waits.append(await _interactive(client, foreman.url, sim, db, half))

        nursery.start_soon(interactive)
    if resets:
        progress(f"    {len(resets)} connections reset by the listen backlog, sent again")
    return time.perf_counter() - began, waits[0]


async def one_run(mode: str, args: argparse.Namespace, sim: str, n: int) -> Run:
    WORK_DIR.mkdir(exist_ok=True)
    db = WORK_DIR / f"batch-{mode}.db"
    remove_db(db)
    env = {
        "FOREMAN_DURABILITY": args.durability,
        "FOREMAN_MAX_QUEUE": str(args.lines * 2),
        "FOREMAN_MAX_WAIT": "1h",
    }
    async with httpx.AsyncClient(limits=limits(args.lines + 10), timeout=60) as client:
        await sim_reset(client, sim)
        async with foreman_on(f"batch-{mode}-{n}", db, sim, env) as foreman:
            idle = await _chat_waited(client, foreman.url, sim, db)
            await sim_reset(client, sim)
            cpu = cpu_seconds(foreman.pid)
            upload = None
            if mode == "batch":
                seconds, upload, wait = await run_batch(client, foreman, sim, db, args.lines)
            else:
                seconds, wait = await run_concurrent(client, foreman, sim, db, args.lines)
            cpu = cpu_seconds(foreman.pid) - cpu
        stats = await sim_stats(client, sim)
    generations = sorted(stats["generations"], key=lambda g: g["started_at"])
    runs = [g["ended_at"] - g["started_at"] for g in generations if not g["load_seconds"]]
    mine = min(generations, key=lambda g: abs(g["started_at"] - wait.started))
    models = [g["model"] for g in generations if g is not mine]
    line_loads = 1 + sum(a != b for a, b in itertools.pairwise(models))
    lines_waited = sum(
        g["ended_at"] > wait.submitted and g["started_at"] < mine["started_at"]
        for g in generations
        if g is not mine
    )
    return Run(
        mode,
        args.lines,
        seconds,
        stats["loads"],
        line_loads,
        wait.wait,
        idle.wait,
        statistics.median(runs),
        cpu / (args.lines + 1) * 1000,
        lines_waited,
        n,
        upload,
    )


@dataclass(frozen=True)
class Direct:
    """The same requests straight to the backend, one after another, from this process."""

    calls: int
    per_second: float
    cpu_ms_per_call: float
    """CPU per call made as Foreman's worker makes it: the floor under a line's cost."""
    httpx_cpu_ms_per_call: float
    """CPU per call made with an ordinary httpx client."""


async def run_direct(args: argparse.Namespace, sim: str) -> Direct:
    """The lines' native requests (as Foreman sends them), grouped by model so a load
    is paid once each, sent one at a time, first with ``Backend.generate`` (the call
    Foreman's worker makes), then with an httpx client's ``post``."""
    count = min(args.lines, DIRECT_CALLS)
    bodies = sorted((chat_request(line["body"]) for line in lines(count)), key=lambda b: b["model"])
    async with httpx.AsyncClient(timeout=60) as client:
        await sim_reset(client, sim)
        await client.post(f"{sim}/api/chat", json=bodies[0])  # the first load, untimed
        backend = Backend(sim)
        encoded = [json.dumps(body).encode() for body in bodies]

        async def ignore(_line: bytes) -> None:
            pass

        cpu, began = time.process_time(), time.perf_counter()
        for body in encoded:
            await backend.generate("chat", body, ignore)
        seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
        await backend.aclose()
        plain = time.process_time()
        for body in encoded:
            (await client.post(f"{sim}/api/chat", content=body)).raise_for_status()
        plain = time.process_time() - plain
    return Direct(count, count / seconds, cpu / count * 1000, plain / count * 1000)


async def run_all(args: argparse.Namespace) -> tuple[list[Run], list[Direct]]:
    sim_args = ["simulate", "--listen", "127.0.0.1:0", "--models", ",".join(CHAT_MODELS)]
    sim_args += ["--load-latency", str(args.load_latency)]
    sim_args += ["--token-latency", str(args.token_latency), "--tokens", str(args.tokens)]
    argv = [sys.executable, "-m", "foreman.cli", *sim_args]
    runs, directs = [], []
    async with program("batch-simulator", argv, {}, "Ollama simulator on") as sim:
        for n in range(args.rounds):
            directs.append(await run_direct(args, sim.url))
            progress(
                f"round {n + 1}: direct, {directs[-1].calls} calls: "
                f"{directs[-1].cpu_ms_per_call:.2f} ms of CPU per call as Foreman makes it, "
                f"{directs[-1].httpx_cpu_ms_per_call:.2f} ms with an httpx client"
            )
            order = MODES if n % 2 == 0 else tuple(reversed(MODES))
            for mode in order:
                if mode not in args.modes:
                    continue
                progress(f"round {n + 1}: {mode}, {args.lines} lines")
                run = await one_run(mode, args, sim.url, n)
                progress(
                    f"  {run.per_second:.0f} lines/s, {run.loads} loads ({run.line_loads} for "
                    f"the lines), interactive call's added wait {run.added_wait:.4f} s, "
                    f"{run.cpu_ms_per_line:.2f} ms CPU per line"
                )
                runs.append(run)
    return runs, directs


def report(runs: list[Run], directs: list[Direct], args: argparse.Namespace) -> str:
    rows = [
        [
            run.mode,
            run.lines,
            fmt_float(run.seconds),
            fmt_float(run.per_second, 0),
            run.loads,
            run.line_loads,
            run.lines_waited,
            fmt_float(run.added_wait, 4),
            fmt_float(run.line_seconds, 4),
            fmt_float(run.cpu_ms_per_line),
            "-" if run.upload_seconds is None else fmt_float(run.upload_seconds),
        ]
        for run in runs
    ]
    headers = [
        "mode",
        "lines",
        "seconds",
        "lines/s",
        "loads",
        "line loads",
        "lines the interactive waited for",
        "interactive added wait s",
        "one line s",
        "CPU ms/line",
        "upload s",
    ]
    medians = []
    for mode in args.modes:
        mine = [run for run in runs if run.mode == mode]
        if mine:
            medians.append(
                [
                    f"{mode} (median)",
                    mine[0].lines,
                    fmt_float(statistics.median(r.seconds for r in mine)),
                    fmt_float(statistics.median(r.per_second for r in mine), 0),
                    statistics.median(r.loads for r in mine),
                    statistics.median(r.line_loads for r in mine),
                    statistics.median(r.lines_waited for r in mine),
                    fmt_float(statistics.median(r.added_wait for r in mine), 4),
                    fmt_float(statistics.median(r.line_seconds for r in mine), 4),
                    fmt_float(statistics.median(r.cpu_ms_per_line for r in mine)),
                    "-",
                ]
            )
    batches = [run for run in runs if run.mode == "batch"]
    targets = []
    if batches:
        models, hosts = len(CHAT_MODELS), 1
        worst_loads = max(run.line_loads for run in batches)
        waited = max(run.lines_waited for run in batches)
        worst_wait = max(run.added_wait / run.line_seconds for run in batches)
        own = max(run.cpu_ms_per_line - directs[run.round].httpx_cpu_ms_per_call for run in batches)
        pipeline = max(run.cpu_ms_per_line - directs[run.round].cpu_ms_per_call for run in batches)
        unpaired = max(r.cpu_ms_per_line for r in batches) - statistics.median(
            d.httpx_cpu_ms_per_call for d in directs
        )
        targets = [
            f"the lines' loads <= models + hosts ({models + hosts}): {worst_loads} "
            f"{'met' if worst_loads <= models + hosts else 'MISSED'}",
            f"an interactive call waits for one running line at most: {waited} "
            f"{'met' if waited <= 1 else 'MISSED'} (its added wait: {worst_wait:.2f} of a "
            "line's GPU time at most)",
            f"Foreman's own CPU per line < {CPU_TARGET_MS} ms: {own:.2f} ms "
            f"{'met' if own < CPU_TARGET_MS else 'MISSED'} (worst round: its CPU per line "
            "less the CPU per call of an httpx client sending the lines straight to the "
            f"backend one at a time in the same round; the worst run less the median "
            f"client: {unpaired:.2f} ms)",
            f"  beyond its own backend calls: {pipeline:.2f} ms (less the same calls made "
            "the way Foreman's worker makes them, in the same round)",
        ]
    setup = (
        f"simulator: 3 models, load {args.load_latency} s, {args.tokens} tokens x "
        f"{args.token_latency} s; durability {args.durability}; {args.rounds} rounds, "
        "interleaved"
    )
    return "\n".join([setup, "", table(headers, rows + medians), "", *targets])


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--load-latency", type=float, default=0.5)
    parser.add_argument("--token-latency", type=float, default=0.0025)
    parser.add_argument("--tokens", type=int, default=4)
    parser.add_argument("--durability", choices=("full", "normal"), default="full")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse(argv)
    runs, directs = trio.run(run_all, args)
    document = {
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "runs": [{**asdict(run), "lines_per_second": run.per_second} for run in runs],
        "direct": [asdict(direct) for direct in directs],
    }
    emit(args.json, document, report(runs, directs, args))


if __name__ == "__main__":
    main(sys.argv[1:])
