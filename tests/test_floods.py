"""Floods and stalls: no caller holds up the others (issue 10).

Pass-through calls and job listings have bounds of their own (503 with
``Retry-After`` beyond them, at once); a pass-through call ends with its caller
or its time limit; a streaming caller that stops reading loses its job
(``client_stalled``) and then its connection, and the GPU moves on.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from starlette.types import Receive, Scope, Send

from foreman.actors.http import serve_http
from foreman.api.bound import Bound, Busy
from foreman.config import parse_address
from foreman.events.log import Append, Durability
from foreman.events.store import open_log
from foreman.ids import new_ulid
from foreman.simulator import SimulatorConfig
from tests import factories
from tests.processes import ROOT, running, start_foreman_process, start_simulator
from tests.running import Foreman, of_type, start_foreman, until

CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}


def test_a_bound_refuses_beyond_its_limit_and_frees_its_places() -> None:
    bound = Bound(2)
    with bound.slot(), bound.slot(), pytest.raises(Busy), bound.slot():
        pass
    with bound.slot():
        assert bound.in_flight == 1
    assert bound.in_flight == 0


# In-process: the simulator's faults make a pass-through call wait at the backend.


async def sim_fault(foreman: Foreman, **fault: Any) -> str:
    """Arm a fault on the simulator behind ``foreman``; its URL."""
    async with httpx.AsyncClient(base_url=foreman.url) as client:
        simulator = str((await client.get("/healthz")).json()["backends"][0]["url"])
        (await client.post(f"{simulator}/_sim/faults", json=fault)).raise_for_status()
    return simulator


async def until_faults_used(simulator: str) -> None:
    """Until every armed fault has met its request (the request is at the backend)."""
    async with httpx.AsyncClient(base_url=simulator) as client:
        with trio.fail_after(5):
            while (await client.get("/_sim/faults")).json()["faults"]:  # noqa: ASYNC110
                await trio.sleep(0.01)


@pytest.fixture
async def one_pass_through(db_path: Path, nursery: trio.Nursery) -> AsyncIterator[Foreman]:
    async for foreman in start_foreman(nursery, db_path, max_passthrough=1):
        yield foreman


async def test_a_pass_through_call_beyond_the_bound_is_refused_at_once_until_its_caller_leaves(
    one_pass_through: Foreman, nursery: trio.Nursery
) -> None:
    foreman = one_pass_through
    simulator = await sim_fault(foreman, kind="stall", seconds=30, path="/api/tags")
    waiting = trio.CancelScope()

    async def stalled_caller() -> None:
        with waiting:
            async with httpx.AsyncClient(base_url=foreman.url) as client:
                await client.get("/api/tags")

    nursery.start_soon(stalled_caller)
    await until_faults_used(simulator)
    async with httpx.AsyncClient(base_url=foreman.url) as client:
        started = time.monotonic()
        refused = await client.get("/api/tags")
        assert time.monotonic() - started < 0.5
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "error" in refused.json()
        # Jobs and health have connections of their own.
        assert (await client.post("/api/chat", json={**CHAT, "stream": False})).status_code == 200
        assert (await client.get("/healthz")).json()["backends"][0]["reachable"] is True

        waiting.cancel()  # the caller hangs up: its call stops and frees its place
        with trio.fail_after(2):
            while (answer := await client.get("/api/tags")).status_code == 503:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert answer.status_code == 200


async def test_a_pass_through_call_has_a_time_limit(db_path: Path, nursery: trio.Nursery) -> None:
    async for foreman in start_foreman(nursery, db_path, passthrough_timeout="300ms"):
        await sim_fault(foreman, kind="stall", seconds=30, path="/api/ps")
        async with httpx.AsyncClient(base_url=foreman.url) as client:
            answer = await client.get("/api/ps")
            assert answer.status_code == 504
            assert "did not answer within 0.3 s" in answer.json()["error"]
            assert (await client.get("/api/ps")).status_code == 200  # its place is free


# The non-reading streamer.

LONG_ANSWER = SimulatorConfig(tokens=200_000)
"""More lines than the socket buffers, the caller's and Foreman's, can hold."""


async def send_request(url: str, method: str, path: str, body: dict[str, Any]) -> trio.SocketStream:
    """A raw connection that sent one request and will read nothing unless told to;
    its receive buffer is small, so the server's writes back up quickly."""
    address = parse_address(url.removeprefix("http://"))
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((address.host, address.port))
    stream = trio.SocketStream(sock)
    content = json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(content)}\r\n\r\n"
    await stream.send_all(head.encode() + content)
    return stream


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    received = b""
    with trio.fail_after(10):
        try:
            while chunk := await stream.receive_some(65536):
                received += chunk
        except trio.BrokenResourceError:  # reset: the server's socket is gone
            pass
    return received


async def test_a_streaming_caller_that_stops_reading_loses_its_job_and_the_next_job_runs(
    db_path: Path, nursery: trio.Nursery
) -> None:
    async for foreman in start_foreman(
        nursery, db_path, simulator=LONG_ANSWER, stream_stall="500ms"
    ):
        committed = await foreman.running.journal.subscribe()
        stream = await send_request(foreman.url, "POST", "/api/chat", {**CHAT, "stream": True})
        cancelled = await until(committed, of_type("JobCancelled"), within=20)
        assert json.loads(cancelled.data)["reason"] == "client_stalled"

        # The GPU has moved on: another caller's job runs and succeeds.
        short = {**CHAT, "stream": False, "options": {"num_predict": 3}}
        async with httpx.AsyncClient(base_url=foreman.url, timeout=10) as client:
            answer = await client.post("/api/chat", json=short)
        assert answer.status_code == 200 and answer.json()["done"] is True

        # The stalled caller's answer breaks off: never a whole (terminated) chunked body.
        received = await read_until_closed(stream)
        assert received.startswith(b"HTTP/1.1 200")
        assert not received.endswith(b"0\r\n\r\n")


async def test_a_connection_that_takes_no_data_for_the_send_timeout_is_cut(
    nursery: trio.Nursery,
) -> None:
    """Hypercorn's writes cannot be cancelled; the kernel (TCP_USER_TIMEOUT on the
    listening socket, inherited by each connection) ends one that waits for a caller
    that never reads."""
    gone = trio.Event()

    async def endless(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        async with trio.open_nursery() as writing:

            async def until_gone() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                gone.set()
                writing.cancel_scope.cancel()

            writing.start_soon(until_gone)
            while True:
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})

    stop = trio.Event()
    url = await nursery.start(
        lambda task_status: serve_http(
            endless,  # type: ignore[arg-type]
            "127.0.0.1:0",
            send_timeout=0.5,
            shutdown_trigger=stop.wait,
            task_status=task_status,
        )
    )
    stream = await send_request(url, "GET", "/", {})
    with trio.fail_after(10):
        await gone.wait()
    stop.set()
    await stream.aclose()


# Floods, against a Foreman process: the flood comes from a process of its own
# (benchmarks/_flood.py), so neither its load nor the test's own sits in Foreman's
# process, and the probes time Foreman's answers, not a busy client's.

FLOOD_CLIENT = ROOT / "benchmarks" / "_flood.py"
FLOOD = 1000
"""Connections at once: far beyond the bounds (16 pass-through calls, 4 listings),
yet few enough for this test's 2 shared cores to answer them all within seconds
(2,000 take about twice as long and show the same)."""
PLANTED_JOBS = 1100
"""Finished jobs in the log, so that every listing of 1000 is a full page."""
SLOWEST_ANSWER = 5.0
"""Seconds any job poll or /healthz may take under a flood: before the bounds they took
over 60 s. How fast they are (tens of ms) is measured by benchmarks/flood.py, not
asserted here, where a 2-core machine shared with other tests has hiccups."""


def plant_finished_jobs(db: Path, count: int) -> None:
    log = open_log(db, durability=Durability.OFF)
    try:
        events = [factories.submitted(), factories.started(), factories.succeeded("word " * 50)]
        log.append_many([Append(new_ulid(), events, 0) for _ in range(count)])
    finally:
        log.close()


def timed_get(client: httpx.Client, path: str) -> float:
    started = time.perf_counter()
    assert client.get(path).status_code == 200
    return time.perf_counter() - started


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/api/tags", "/jobs?limit=1000"])
def test_a_flood_is_answered_at_once_and_starves_no_one(tmp_path: Path, path: str) -> None:
    db = tmp_path / "foreman.db"
    plant_finished_jobs(db, PLANTED_JOBS)
    simulator = start_simulator(
        tmp_path / "simulator.log", "--load-latency", "0", "--token-latency", "0"
    )
    with (
        running(simulator),
        running(
            start_foreman_process(tmp_path / "foreman.log", simulator.url, db, max_passthrough="16")
        ) as foreman,
        httpx.Client(base_url=foreman.url, timeout=30) as client,
        ThreadPoolExecutor(1) as chats,
    ):
        job = client.post("/jobs", json={"kind": "chat", "request": CHAT}).json()["job_id"]
        timed_get(client, "/healthz")  # connected before the flood
        command = [sys.executable, str(FLOOD_CLIENT), foreman.url, path, str(FLOOD)]
        with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as flood:
            assert flood.stdout is not None
            assert flood.stdout.readline() == "flooding\n"
            chat = chats.submit(
                httpx.post, f"{foreman.url}/api/chat", json={**CHAT, "stream": False}, timeout=30
            )
            health, polls = [], []
            while flood.poll() is None:
                health.append(timed_get(client, "/healthz"))
                polls.append(timed_get(client, f"/jobs/{job}"))
                time.sleep(0.05)
            kinds = json.loads(flood.stdout.read())
        assert chat.result().json()["done"] is True  # a queued job ran meanwhile
        assert set(kinds) <= {"ok", "busy"} and kinds["busy"] > 0, kinds
        for times in (health, polls):
            assert max(times) < SLOWEST_ANSWER, times
        # Once the flood is gone, Foreman answers as before it.
        assert timed_get(client, "/healthz") < SLOWEST_ANSWER
        assert timed_get(client, path) < SLOWEST_ANSWER
