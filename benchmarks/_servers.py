"""The simulator and Foreman for the actor-system benchmarks, as subprocesses or in-process.

``--mode subprocess`` (the default, and the recorded figures) runs ``foreman simulate``
and ``foreman serve`` as processes of their own, so the client in the benchmark's
process shares neither the GIL nor the trio loop with them; their stderr goes to
``benchmarks/.work/<name>.log``. ``--mode inprocess`` runs ``serve_simulator`` and
``run_foreman`` in the benchmark's own ``trio.run``: quicker to start, but client,
Foreman and simulator share one core's worth of Python, which inflates latencies.
"""

from __future__ import annotations

import math
import os
import re
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from _logs import WORK_DIR, remove_db
from _report import ROOT, progress
from starlette.types import ASGIApp

from foreman.actors.http import serve_http
from foreman.config import load_settings
from foreman.events.log import Durability
from foreman.events.store import open_log
from foreman.events.types import KEY_ID_PREFIX, KeyIssued, key_stream
from foreman.ids import new_ulid
from foreman.simulator import SimulatorConfig, parse_models, serve_simulator
from foreman.supervisor import Running, run_foreman

MODES = ("subprocess", "inprocess")
CHAT_MODELS = ("llama3", "qwen2", "mistral")
"""Three chat models for the simulator (its defaults have two, and an embedding model)."""
STARTUP_SECONDS = 30.0
STOP_SECONDS = 15.0
_URL = re.compile(r"(http://\S+:\d+)")


def limits(connections: int) -> httpx.Limits:
    """A keep-alive pool big enough for ``connections`` requests at once."""
    return httpx.Limits(max_connections=connections, max_keepalive_connections=connections)


@asynccontextmanager
async def one_client_each(count: int) -> AsyncIterator[list[httpx.AsyncClient]]:
    """``count`` httpx clients of one connection each, for a burst of requests in flight
    at once. One client's pool scans all its connections whenever a response closes
    (httpcore's ``_assign_requests_to_connections``), quadratic in the burst: with 300
    in flight that was most of swaps.py's client CPU, and answers reached it up to
    1.3 s after Foreman had logged them. They share one SSL context (unused over
    http), which httpx would make anew for each: 20 ms a client."""
    context = ssl.create_default_context()
    async with AsyncExitStack() as stack:
        transports = [httpx.AsyncHTTPTransport(verify=context) for _ in range(count)]
        yield [
            await stack.enter_async_context(httpx.AsyncClient(transport=t, timeout=None))
            for t in transports
        ]


def chat_body(model: str, n: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": f"request {n}: say something short"}],
        "stream": False,
    }


class FirstSent:
    """When the first of a burst's requests began to leave the client: the start of its
    headers' write, from httpcore's ``trace`` extension. One httpx client opening
    hundreds of connections at once spends a few hundred milliseconds before its first
    byte is on the wire; a burst's makespan starts at that byte, not while the client
    is still getting ready."""

    def __init__(self) -> None:
        self.at: float | None = None

    async def trace(self, event: str, info: dict[str, Any]) -> None:
        if self.at is None and event == "http11.send_request_headers.started":
            self.at = time.time()


async def chat(
    client: httpx.AsyncClient, url: str, model: str, n: int, sent: FirstSent | None = None
) -> None:
    """One non-streaming chat; raises unless it answered 200 with a done response."""
    extensions = {} if sent is None else {"trace": sent.trace}
    response = await client.post(f"{url}/api/chat", json=chat_body(model, n), extensions=extensions)
    if response.status_code != 200 or not response.json().get("done"):
        raise RuntimeError(f"{url}/api/chat answered {response.status_code}: {response.text}")


BACKLOG_RESETS = (httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError)
"""What a client sees when a burst overflows Hypercorn's listen backlog (100 by default):
the connection is reset before the server has read the request."""


async def submit(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    n: int,
    resets: list[int],
    sent: FirstSent | None = None,
) -> None:
    """:func:`chat`, sent again after a connection reset (counted in ``resets``): a burst
    of connections beyond the server's listen backlog gets some reset."""
    while True:
        try:
            return await chat(client, url, model, n, sent)
        except BACKLOG_RESETS:
            resets.append(n)


async def sim_stats(client: httpx.AsyncClient, sim: str) -> dict[str, Any]:
    response = await client.get(f"{sim}/_sim/stats")
    response.raise_for_status()
    stats: dict[str, Any] = response.json()
    return stats


async def sim_reset(client: httpx.AsyncClient, sim: str) -> None:
    """Forget loads and generations, and unload the model."""
    (await client.post(f"{sim}/_sim/reset")).raise_for_status()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest rank."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def submitted_models(db: Path) -> list[tuple[str, float]]:
    """(model, recorded_at as Unix seconds) of every JobSubmitted, in log order."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT json_extract(data, '$.model'), recorded_at FROM events "
            "WHERE type = 'JobSubmitted' ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()
    return [(model, unix_seconds(stamp)) for model, stamp in rows]


def unix_seconds(stamp: str) -> float:
    """A log timestamp (``recorded_at``, a webhook's ``occurred_at``) as Unix seconds."""
    moment = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return moment.timestamp()


def sim_args(config: SimulatorConfig) -> list[str]:
    return [
        "simulate",
        "--listen",
        "127.0.0.1:0",
        "--models",
        ",".join(model.name for model in config.models),
        "--load-latency",
        str(config.load_latency),
        "--token-latency",
        str(config.token_latency),
        "--tokens",
        str(config.tokens),
    ]


def sim_config(load_latency: float, token_latency: float, tokens: int) -> SimulatorConfig:
    return SimulatorConfig(
        listen="127.0.0.1:0",
        models=parse_models(",".join(CHAT_MODELS)),
        load_latency=load_latency,
        token_latency=token_latency,
        tokens=tokens,
    )


@asynccontextmanager
async def _process(
    name: str, args: list[str], env: dict[str, str], ready: str, tree: Path = ROOT
) -> AsyncIterator[str]:
    """Run ``python -m foreman.cli ARGS`` from the source ``tree`` (see :func:`program`);
    yields its URL."""
    argv = [sys.executable, "-m", "foreman.cli", *args]
    async with program(name, argv, _from(tree, env), ready, cwd=tree) as served:
        yield served.url


async def _wait_for_url(process: trio.Process, log_path: trio.Path, ready: str) -> str:
    with trio.fail_after(STARTUP_SECONDS):
        while True:
            for line in (await log_path.read_text(errors="replace")).splitlines():
                if ready in line and (match := _URL.search(line)):
                    return match.group(1)
            if process.poll() is not None:
                raise RuntimeError(f"{process.args} exited with {process.returncode}: {log_path}")
            await trio.sleep(0.05)


@asynccontextmanager
async def simulator(
    mode: str, config: SimulatorConfig, *, name: str = "simulator"
) -> AsyncIterator[str]:
    """A running simulator's URL; ``name`` names its output file (``.work/NAME.log``),
    so that several can run at once."""
    if mode == "subprocess":
        async with _process(name, sim_args(config), {}, "Ollama simulator on") as url:
            yield url
        return
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_simulator, config)
        yield url
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def foreman(
    mode: str,
    name: str,
    backend: str,
    durability: Durability,
    *,
    max_wait: float = 60.0,
    key: KeyIssued | None = None,
    tree: Path = ROOT,
) -> AsyncIterator[tuple[str, Path]]:
    """A running Foreman in front of ``backend`` on a fresh log; yields (URL, log path).
    With ``key`` issued in the log first, every request must carry it. A subprocess
    runs from the source ``tree`` (another commit's worktree: a baseline)."""
    db = fresh_log(name, key)
    if mode == "subprocess":
        args = ["serve", "--backend", backend, "--listen", "127.0.0.1:0", "--db", str(db)]
        env = {"FOREMAN_DURABILITY": durability.value, "FOREMAN_MAX_WAIT": str(max_wait)}
        async with _process(f"foreman-{name}", args, env, "http: listening on", tree) as url:
            yield url, db
        return
    if tree != ROOT:
        raise ValueError("a baseline tree runs in subprocess mode only")
    settings = load_settings(
        listen="127.0.0.1:0", backend=backend, db=db, durability=durability, max_wait=max_wait
    )
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        running: Running = await nursery.start(run_foreman, settings, stop)
        yield running.url, db
        stop.set()


def fresh_log(name: str, key: KeyIssued | None = None) -> Path:
    """``.work/NAME.db``, removed, and holding ``key`` if one is given."""
    WORK_DIR.mkdir(exist_ok=True)
    db = WORK_DIR / f"{name}.db"
    remove_db(db)
    if key is not None:
        log = open_log(db)
        try:
            log.append(key_stream(f"{KEY_ID_PREFIX}{new_ulid()}"), [key])
        finally:
            log.close()
    return db


# -- Helpers for the job-API benchmarks (submit.py, memory.py, prune.py) ----------------


@dataclass(frozen=True, slots=True)
class Served:
    """A server process: its URL, its PID (for RSS and CPU time) and its output file."""

    url: str
    pid: int
    log: Path


@asynccontextmanager
async def program(
    name: str, argv: list[str], env: dict[str, str], ready: str, *, cwd: Path = ROOT
) -> AsyncIterator[Served]:
    """Run ``argv`` in ``cwd`` as a process, output in ``.work/<name>.log``, as ``foreman``
    and ``simulator`` do in subprocess mode; yields once a line with ``ready`` names its
    URL; SIGTERM at the end (SIGKILL if it will not stop)."""
    WORK_DIR.mkdir(exist_ok=True)
    log_path = WORK_DIR / f"{name}.log"
    with open(log_path, "wb") as log_file:  # noqa: ASYNC230 (opening is instant)
        process = await trio.lowlevel.open_process(
            argv, cwd=cwd, env={**os.environ, **env}, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        url = await _wait_for_url(process, trio.Path(log_path), ready)
        yield Served(url, process.pid, log_path)
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_SECONDS) as waiting:
            await process.wait()
        if waiting.cancelled_caught:
            progress(f"  {name} did not stop within {STOP_SECONDS:.0f} s of SIGTERM: killed")
            process.kill()
            await process.wait()
    if process.returncode not in (0, -signal.SIGTERM):
        progress(f"  {name} exited with {process.returncode}; see {log_path}")


def foreman_on(
    name: str, db: Path, backend: str, env: dict[str, str], *, tree: Path = ROOT
) -> AbstractAsyncContextManager[Served]:
    """``foreman serve`` as a process on the log at ``db`` as it is (not removed first),
    with ``env`` (``FOREMAN_*`` settings) added, run from the source ``tree`` (another
    commit's worktree: its baseline)."""
    argv = [sys.executable, "-m", "foreman.cli", "serve", "--backend", backend]
    argv += ["--listen", "127.0.0.1:0", "--db", str(db.resolve())]
    return program(f"foreman-{name}", argv, _from(tree, env), "http: listening on", cwd=tree)


def _from(tree: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` for a process run from the source ``tree``."""
    return {**env, "PYTHONPATH": str(tree)} if tree != ROOT else env


async def stall_backend(client: httpx.AsyncClient, sim: str) -> None:
    """Arm the simulator so that every generation holds the GPU for an hour: the first
    job a Foreman sends stalls, and every later one stays queued."""
    fault = {"kind": "stall", "seconds": 3600, "after_tokens": 0, "times": None}
    (await client.post(f"{sim}/_sim/faults", json=fault)).raise_for_status()


async def wait_healthy(client: httpx.AsyncClient, url: str) -> None:
    """Until ``GET /healthz`` answers 200 (every actor runs)."""
    with trio.fail_after(STARTUP_SECONDS):
        while True:
            if (await client.get(f"{url}/healthz")).status_code == 200:
                return
            await trio.sleep(0.05)


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A ``/proc/PID/status`` memory figure (``VmRSS``, ``VmHWM``: the peak) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no {field} for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def serve_until_signalled(name: str, app: ASGIApp, listen: str) -> None:
    """Serve ``app`` (FastAPI's or a raw ASGI one) on Foreman's HTTP actor (same Hypercorn
    configuration) until SIGINT or SIGTERM; prints ``NAME: listening on URL`` on stderr,
    as :func:`program` waits for."""
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    stop.set()
                    return

            nursery.start_soon(stop_on_signal)
            url = await nursery.start(partial(serve_http, app, listen, shutdown_trigger=stop.wait))
            print(f"{name}: listening on {url}", file=sys.stderr, flush=True)


@asynccontextmanager
async def scraping(
    url: str, *, every: float | None, headers: dict[str, str] | None = None
) -> AsyncIterator[list[float]]:
    """``GET /metrics`` every ``every`` seconds (None: never) while the block runs, as
    Prometheus would (``--scrape``, ADR-0044); yields each scrape's milliseconds."""
    took: list[float] = []
    if every is None:
        yield took
        return

    async def scrape() -> None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
            while True:
                started = time.perf_counter()
                answer = await http.get("/metrics")
                if answer.status_code != 200:
                    raise RuntimeError(f"GET /metrics answered {answer.status_code}")
                took.append((time.perf_counter() - started) * 1000)
                await trio.sleep(every)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(scrape)
        yield took
        nursery.cancel_scope.cancel()


DASHBOARD_DEBOUNCE = 1.0
"""The page's wait after an event before it refreshes (``soon`` in ui's app.js)."""


@asynccontextmanager
async def dashboard_open(
    url: str, *, enabled: bool, headers: dict[str, str] | None = None
) -> AsyncIterator[list[float]]:
    """What an open ``/ui`` page asks of Foreman while the block runs (``--dashboard``,
    ADR-0046): the ``/events`` stream read as it comes, and after each event, at most
    every second, ``GET /summary`` and ``GET /jobs?limit=20``; yields each refresh's
    milliseconds."""
    took: list[float] = []
    if not enabled:
        yield took
        return
    changed = trio.Event()

    async def follow(http: httpx.AsyncClient) -> None:
        async with http.stream("GET", "/events") as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data:"):
                    changed.set()

    async def refresh(http: httpx.AsyncClient) -> None:
        nonlocal changed
        while True:
            await changed.wait()
            await trio.sleep(DASHBOARD_DEBOUNCE)
            changed = trio.Event()
            started = time.perf_counter()
            for path in ("/summary", "/jobs?limit=20"):
                answer = await http.get(path)
                if answer.status_code != 200:
                    raise RuntimeError(f"GET {path} answered {answer.status_code}")
            took.append((time.perf_counter() - started) * 1000)

    async with (
        httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(follow, http)
        nursery.start_soon(refresh, http)
        yield took
        nursery.cancel_scope.cancel()
