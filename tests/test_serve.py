"""Foreman as a whole, over real HTTP: the official ollama client, errors, hang-ups."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import ollama
import pytest
import trio

from foreman.config import load_settings
from foreman.events.store import open_log
from foreman.ids import new_ulid
from foreman.simulator import SimulatorConfig, serve_simulator
from foreman.supervisor import run_foreman
from tests import factories
from tests.running import (
    Foreman,
    counted,
    in_order,
    jobs_succeeded,
    of_type,
    start_foreman,
    until,
)

T = TypeVar("T")


async def test_the_official_client_works_unchanged(foreman: Foreman) -> None:
    committed = await foreman.running.journal.subscribe()
    client = foreman.client()
    messages = [{"role": "user", "content": "why is the sky blue?"}]
    answer = await foreman.call(client.chat, model="llama3", messages=messages)
    assert answer.message.content and answer.done

    def streamed() -> list[Any]:
        return list(client.chat(model="llama3", messages=messages, stream=True))

    parts = await foreman.call(streamed)
    assert len(parts) > 2 and parts[-1].done
    assert "".join(part.message.content for part in parts) == answer.message.content

    generated = await foreman.call(client.generate, model="qwen2", prompt="hello")
    assert generated.response
    embedded = await foreman.call(client.embed, model="nomic-embed-text", input=["a", "b"])
    assert len(embedded.embeddings) == 2
    listed = await foreman.call(client.list)
    assert "llama3:latest" in [model.model for model in listed.models]
    running = await foreman.call(client.ps)
    assert [model.model for model in running.models] == ["qwen2:latest"]
    shown = await foreman.call(client.show, "llama3")
    assert shown.details is not None

    # An answer precedes its durable JobSucceeded (ADR-0025): wait for the commits.
    await until(committed, counted(3, of_type("JobSucceeded")))
    jobs = foreman.job_events()
    assert len(jobs) == 3  # chat, streamed chat, generate: embeddings are not jobs
    assert all(events[-1] == "JobSucceeded" for events in jobs.values())


async def test_a_call_to_a_free_gpu_starts_in_the_commit_of_its_submission(
    foreman: Foreman,
) -> None:
    """ADR-0048: nothing queued and the GPU free, a sync call is sent at once and its
    ``JobStarted`` shares the commit of its ``JobSubmitted`` (one time a commit); one
    arriving while another runs waits behind it and starts when that one ends."""
    committed = await foreman.running.journal.subscribe()
    chat = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    async with httpx.AsyncClient(base_url=foreman.url, timeout=30) as http:
        sim = (await http.get("/healthz")).json()["backends"][0]["url"]
        stall = {"kind": "stall", "seconds": 0.5, "after_tokens": 0, "times": 1}
        (await http.post(f"{sim}/_sim/faults", json=stall)).raise_for_status()
        async with trio.open_nursery() as calls:
            calls.start_soon(partial(http.post, "/api/chat", json=chat))
            first = (await until(committed, of_type("JobStarted"))).stream
            calls.start_soon(partial(http.post, "/api/chat", json=chat))
            second = (await until(committed, of_type("JobSubmitted"))).stream
        await until(committed, counted(2, of_type("JobSucceeded")))

        def stamps(job: str) -> dict[str, str]:
            return {event.type: event.recorded_at for event in foreman.events_of(job)}

        first_stamps, second_stamps = stamps(first), stamps(second)
    assert first_stamps["JobSubmitted"] == first_stamps["JobStarted"]
    assert second_stamps["JobSubmitted"] < first_stamps["JobSucceeded"]
    assert second_stamps["JobStarted"] >= first_stamps["JobSucceeded"]


async def test_a_model_no_backend_has_is_404_as_ollama_answers(foreman: Foreman) -> None:
    client = foreman.client()
    with pytest.raises(ollama.ResponseError) as raised:
        await foreman.call(client.chat, model="no-such-model", messages=[])
    assert raised.value.status_code == 404
    assert raised.value.error == "model 'no-such-model' not found"
    assert foreman.job_events() == {}  # no host has it: refused at the door


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "Expecting property name"),
        (b"", 400, "missing request body"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b'{"messages": []}', 400, "model is required"),
        (b'{"model": "llama3", "options": 3}', 400, "options must be a JSON object"),
    ],
)
async def test_bad_requests_get_ollamas_errors_and_are_not_recorded(
    foreman: Foreman, body: bytes, status: int, message: str
) -> None:
    async with httpx.AsyncClient(base_url=foreman.url) as http:
        response = await http.post("/api/chat", content=body)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert foreman.job_events() == {}


async def test_a_body_over_the_limit_is_refused_with_413(
    db_path: Path, nursery: trio.Nursery
) -> None:
    async for foreman in start_foreman(nursery, db_path, max_body=1024):
        async with httpx.AsyncClient(base_url=foreman.url) as http:
            big = {"model": "llama3", "prompt": "x" * 2000}
            response = await http.post("/api/generate", json=big)
        assert response.status_code == 413
        assert "1024-byte limit" in response.json()["error"]
        assert foreman.job_events() == {}


async def test_health_reports_the_actors_and_the_backends(foreman: Foreman) -> None:
    async with httpx.AsyncClient(base_url=foreman.url) as http:
        health = (await http.get("/healthz")).json()
    assert health["status"] == "ok"
    assert set(health["actors"]) == {
        "journal",
        "scheduler",
        "prober",
        "workers",
        "janitor",
        "batcher",
        "http",
        "dispatcher",
    }
    (backend,) = health["backends"]
    assert (backend["name"], backend["reachable"]) == ("sim", True)


async def raw_post(url: str, path: str, body: dict[str, Any]) -> trio.SocketStream:
    """Send a POST on a connection of its own, whose closing is an unmistakable hang-up."""
    host, port = httpx.URL(url).host, httpx.URL(url).port
    assert port is not None
    stream = await trio.open_tcp_stream(host, port)
    content = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(content)}\r\n\r\n"
    )
    await stream.send_all(head.encode() + content)
    return stream


async def test_a_caller_that_hangs_up_while_queued_cancels_its_job(foreman: Foreman) -> None:
    committed = await foreman.running.journal.subscribe()
    async with httpx.AsyncClient(base_url=foreman.url) as http:
        # The first job holds the GPU (the backend stalls), so the second waits.
        stall = {"kind": "stall", "seconds": 30, "after_tokens": 1, "times": 1}
        sim = (await http.get("/healthz")).json()["backends"][0]["url"]
        await http.post(f"{sim}/_sim/faults", json=stall)
        holder = {"model": "llama3", "prompt": "first", "stream": True}
        async with http.stream("POST", "/api/generate", json=holder) as first:
            lines = first.aiter_lines()  # kept: a dropped iterator would close the stream
            await lines.__anext__()  # running, and stalled
            await until(committed, in_order("JobSubmitted", "JobStarted"))
            second = await raw_post(foreman.url, "/api/generate", {"model": "qwen2"})
            await until(committed, of_type("JobSubmitted"))  # queued behind the first
            await second.aclose()  # hangs up while queued
            await until(committed, of_type("JobCancelled"))
        # The first hangs up mid-stream: its call is stopped though the backend stalls.
        await until(committed, of_type("JobCancelled"))
    outcomes = sorted(events for events in foreman.job_events().values())
    assert outcomes == [
        ["JobSubmitted", "JobCancelled"],  # the queued one never ran
        ["JobSubmitted", "JobStarted", "JobCancelled"],  # the running one was stopped
    ]


async def test_beyond_max_queue_callers_get_503_and_retry_after(
    db_path: Path, nursery: trio.Nursery
) -> None:
    async for foreman in start_foreman(nursery, db_path, max_queue=1):
        async with httpx.AsyncClient(base_url=foreman.url, timeout=10) as http:
            sim = (await http.get("/healthz")).json()["backends"][0]["url"]
            await http.post(f"{sim}/_sim/faults", json={"kind": "stall", "seconds": 60})
            committed = await foreman.running.journal.subscribe()
            async with trio.open_nursery() as callers:
                post = partial(http.post, "/api/generate")
                callers.start_soon(partial(post, json={"model": "llama3", "prompt": "a"}))
                await until(committed, in_order("JobSubmitted", "JobStarted"))  # runs: stalls
                callers.start_soon(partial(post, json={"model": "llama3", "prompt": "b"}))
                await until(committed, of_type("JobSubmitted"))  # queued: the queue is full
                busy = await http.post("/api/generate", json={"model": "llama3", "prompt": "c"})
                assert busy.status_code == 503
                assert busy.headers["retry-after"] == "1"
                assert "maximum pending requests exceeded" in busy.json()["error"]
                callers.cancel_scope.cancel()  # they hang up: their jobs are cancelled
        assert len(foreman.job_events()) == 2  # the refused one was never recorded


async def test_unfinished_jobs_of_a_previous_run_are_recovered(
    db_path: Path, nursery: trio.Nursery
) -> None:
    log = open_log(db_path)
    interrupted, queued, exhausted = new_ulid(), new_ulid(), new_ulid()
    log.append(interrupted, [factories.submitted(), factories.started()])
    log.append(queued, [factories.submitted(model="qwen2")])
    log.append(exhausted, [factories.submitted()])
    for attempt in (1, 2):
        log.append(exhausted, [factories.started(attempt), factories.requeued_retry()])
    log.append(exhausted, [factories.started(3)])
    log.close()

    async for foreman in start_foreman(nursery, db_path, max_attempts=3):
        committed = await foreman.running.journal.subscribe()
        done = jobs_succeeded(db_path, 2)
        if not done():  # recovered jobs may have run before the subscription
            await until(committed, done)
        jobs = foreman.job_events()
        assert jobs[interrupted][2:] == ["JobRequeued", "JobStarted", "JobSucceeded"]
        assert jobs[queued] == ["JobSubmitted", "JobStarted", "JobSucceeded"]
        assert jobs[exhausted][-2:] == ["JobStarted", "JobFailed"]


async def test_the_other_endpoints_pass_straight_through(foreman: Foreman) -> None:
    async with httpx.AsyncClient(base_url=foreman.url) as http:
        root = await http.get("/")
        assert (root.status_code, root.text) == (200, "Ollama is running")
        assert (await http.head("/")).status_code == 200
        assert "version" in (await http.get("/api/version")).json()
        legacy = await http.post(
            "/api/embeddings", json={"model": "nomic-embed-text", "prompt": "hello"}
        )
        assert legacy.status_code == 200 and legacy.json()["embedding"]
        missing = await http.post("/api/show", json={"model": "no-such-model"})
        assert missing.status_code == 404
        unknown = await http.get("/no/such/path")
        assert unknown.status_code == 404  # JSON, unlike Ollama's plain text
        assert unknown.json() == {"error": "no such endpoint: GET /no/such/path"}
    assert foreman.job_events() == {}  # none of these is a job


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"error": "runner crashed"}, "runner crashed"),  # Ollama's own error line
        ({}, "broke off"),  # the backend's connection cut mid-answer
    ],
)
async def test_an_error_mid_stream_ends_the_stream_with_an_error_line(
    foreman: Foreman, fault: dict[str, str], message: str
) -> None:
    async with httpx.AsyncClient(base_url=foreman.url, timeout=10) as http:
        sim = (await http.get("/healthz")).json()["backends"][0]["url"]
        drop = {"kind": "drop_mid_stream", "after_tokens": 2, **fault}
        await http.post(f"{sim}/_sim/faults", json=drop)
        body = {"model": "llama3", "prompt": "hi"}
        async with http.stream("POST", "/api/generate", json=body) as response:
            assert response.status_code == 200
            lines = [json.loads(line) async for line in response.aiter_lines() if line]
    assert [line["response"] for line in lines[:-1]] and "done" not in lines[-1]
    assert message in lines[-1]["error"]
    (events,) = foreman.job_events().values()
    assert events[-1] == "JobFailed"


async def test_the_first_pick_prefers_the_model_the_backend_has_loaded(
    db_path: Path, nursery: trio.Nursery
) -> None:
    # A previous run left jobs for two models queued; the backend has qwen2 loaded.
    log = open_log(db_path)
    for model in ("llama3", "qwen2", "llama3", "qwen2"):
        log.append(new_ulid(), [factories.submitted(model=model)])
    log.close()
    sim_url: str = await nursery.start(serve_simulator, SimulatorConfig(listen="127.0.0.1:0"))
    async with httpx.AsyncClient(base_url=sim_url) as sim:
        # An empty prompt only loads the model, as with Ollama.
        await sim.post("/api/generate", json={"model": "qwen2", "prompt": "", "stream": False})
        config = load_settings(listen="127.0.0.1:0", backend=sim_url, db=db_path)
        stop = trio.Event()
        running = await nursery.start(run_foreman, config, stop)
        committed = await running.journal.subscribe()
        done = jobs_succeeded(db_path, 4)
        if not done():  # recovered jobs may have run before the subscription
            await until(committed, done)
        stop.set()
        stats = (await sim.get("/_sim/stats")).json()
    order = [generation["model"] for generation in stats["generations"]]
    assert order[-4:] == ["qwen2:latest"] * 2 + ["llama3:latest"] * 2
