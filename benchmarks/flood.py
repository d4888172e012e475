"""Job polls and ``/healthz`` under a flood: beside the same probes with no flood.

A Foreman process (its log holding ``--jobs`` finished jobs) in front of a
simulator process with no latency. One client probes sequentially, a job poll
(``GET /jobs/{id}``) then ``/healthz``, one pair every 20 ms: first with nothing
else going on (the baseline), then while ``--connections`` requests of one kind
arrive at once from a process of their own (``_flood.py``: ``GET /api/tags``,
a pass-through call, then ``GET /jobs?limit=1000``, a heavy listing), then
right after. Issue 10's target: polls and ``/healthz`` answer in under 100 ms
under any such flood; the flood is answered 200 or 503 with ``Retry-After``.

    python benchmarks/flood.py [--connections 2000] [--jobs 1100] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio
from _logs import WORK_DIR, build_log, remove_db
from _report import ROOT, Cell, emit, fmt_float, machine, progress, table
from _servers import foreman_on, percentile, sim_config, simulator

TARGET_MS = 100.0
PROBE_EVERY = 0.02
BASELINE_PROBES = 100
FLOODS = ("/api/tags", "/jobs?limit=1000")
FLOOD_CLIENT = Path(__file__).resolve().parent / "_flood.py"


@dataclass(frozen=True, slots=True)
class Series:
    phase: str
    probe: str
    ms: tuple[float, ...]

    def row(self) -> list[Cell]:
        ms = self.ms
        return [
            self.phase,
            self.probe,
            len(ms),
            percentile(ms, 50),
            percentile(ms, 95),
            max(ms),
            "yes" if percentile(ms, 50) < TARGET_MS else "no",
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "probe": self.probe,
            "count": len(self.ms),
            "p50_ms": percentile(self.ms, 50),
            "p95_ms": percentile(self.ms, 95),
            "max_ms": max(self.ms),
        }


async def timed(client: httpx.AsyncClient, path: str) -> float:
    started = time.perf_counter()
    answer = await client.get(path)
    elapsed = (time.perf_counter() - started) * 1000
    if answer.status_code != 200:
        raise RuntimeError(f"GET {path}: {answer.status_code} {answer.text[:200]}")
    return elapsed


async def probe(
    client: httpx.AsyncClient, job: str, phase: str, until: trio.Event | None
) -> list[Series]:
    """Probe pairs until ``until`` is set (or :data:`BASELINE_PROBES` of them)."""
    polls: list[float] = []
    health: list[float] = []
    while (until is None and len(polls) < BASELINE_PROBES) or (
        until is not None and not until.is_set()
    ):
        polls.append(await timed(client, f"/jobs/{job}"))
        health.append(await timed(client, "/healthz"))
        await trio.sleep(PROBE_EVERY)
    return [Series(phase, "job poll", tuple(polls)), Series(phase, "/healthz", tuple(health))]


async def under_flood(
    client: httpx.AsyncClient, url: str, job: str, path: str, connections: int
) -> tuple[list[Series], dict[str, int], float]:
    """The probes while ``_flood.py`` runs, its answers by kind, and its seconds."""
    argv = [sys.executable, str(FLOOD_CLIENT), url, path, str(connections)]
    done = trio.Event()
    output: list[str] = []
    async with trio.open_nursery() as nursery:
        process = await trio.lowlevel.open_process(argv, cwd=ROOT, stdout=subprocess.PIPE)
        assert process.stdout is not None
        lines = process.stdout
        started = time.perf_counter()

        async def read_output() -> None:
            text = b""
            async for chunk in lines:
                text += chunk
            output.append(text.decode())
            await process.wait()
            done.set()

        nursery.start_soon(read_output)
        series = await probe(client, job, f"flood of {path}", done)
    seconds = time.perf_counter() - started
    kinds: dict[str, int] = json.loads(output[0].splitlines()[-1])
    return series, kinds, seconds


async def run(connections: int, jobs: int) -> dict[str, Any]:
    WORK_DIR.mkdir(exist_ok=True)
    db = WORK_DIR / "flood.db"
    remove_db(db)
    progress(f"planting {jobs:,} finished jobs")
    build_log(db, jobs * 3)
    series: list[Series] = []
    floods: list[dict[str, Any]] = []
    async with (
        simulator("subprocess", sim_config(0.0, 0.0, 8)) as sim,
        foreman_on("flood", db, sim, {"FOREMAN_DURABILITY": "full"}) as served,
        httpx.AsyncClient(base_url=served.url, timeout=120) as client,
    ):
        job = (await client.get("/jobs?limit=1")).json()["jobs"][0]["id"]
        series += await probe(client, job, "no flood (baseline)", None)
        for path in FLOODS:
            progress(f"flooding {path} with {connections:,} connections")
            during, kinds, seconds = await under_flood(client, served.url, job, path, connections)
            series += during
            series += await probe(client, job, f"right after {path}", None)
            floods.append({"path": path, "answers": kinds, "seconds": seconds})
    remove_db(db)
    return {"connections": connections, "jobs": jobs, "series": series, "floods": floods}


def report(result: dict[str, Any]) -> str:
    headers = ["phase", "probe", "probes", "p50 ms", "p95 ms", "max ms", "p50 < 100 ms"]
    rows = [s.row() for s in result["series"]]
    flood_rows: list[list[Cell]] = [
        [f["path"], result["connections"], fmt_float(f["seconds"]), json.dumps(f["answers"])]
        for f in result["floods"]
    ]
    return "\n\n".join(
        [
            table(headers, rows, left=2),
            table(["flood", "connections", "seconds", "answers"], flood_rows, left=1),
            f"One client, probing sequentially every {PROBE_EVERY * 1000:.0f} ms; the flood "
            f"from a process of its own; the log holds {result['jobs']:,} finished jobs. "
            "answers: ok = 200, busy = 503 with Retry-After (FOREMAN_MAX_PASSTHROUGH, "
            "FOREMAN_MAX_LISTINGS).",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000, help="flood requests at once")
    parser.add_argument("--jobs", type=int, default=1100, help="finished jobs in the log")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    result = trio.run(run, args.connections, args.jobs)
    document = {
        "machine": machine(),
        "connections": result["connections"],
        "jobs": result["jobs"],
        "series": [s.as_dict() for s in result["series"]],
        "floods": result["floods"],
    }
    emit(args.json, document, report(result))


if __name__ == "__main__":
    main()
