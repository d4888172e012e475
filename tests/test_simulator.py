"""The Ollama simulator over real HTTP on loopback, as Foreman's worker will use it."""

from __future__ import annotations

import itertools
import json
import math
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from functools import partial
from typing import Any

import httpx
import ollama
import pytest
import trio
import trio.testing

from foreman.simulator import SimModel, SimulatorConfig, serve_simulator
from foreman.simulator.backend import Job, LoadKey, SimulatedGPU, Stall

Start = Callable[..., Awaitable[str]]
LOAD = 0.05
USAGE = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$")
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def start(nursery: trio.Nursery) -> Start:
    """Start a simulator in the test's nursery; returns its URL."""

    async def start(**settings: Any) -> str:
        config = SimulatorConfig(listen="127.0.0.1:0", **settings)
        url: str = await nursery.start(serve_simulator, config)
        return url

    return start


@pytest.fixture
async def client(start: Start) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=await start(load_latency=LOAD), timeout=5) as client:
        yield client


async def chat(client: httpx.AsyncClient, model: str = "llama3", **body: Any) -> dict[str, Any]:
    body = {"messages": HELLO, "stream": False} | body
    response = await client.post("/api/chat", json={"model": model, **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def stream_lines(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[str]:
    async with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        return [line async for line in response.aiter_lines()]


async def arm(client: httpx.AsyncClient, *faults: dict[str, Any]) -> None:
    response = await client.post("/_sim/faults", json=list(faults))
    assert response.status_code == 200, response.text


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    result: dict[str, Any] = (await client.get("/_sim/stats")).json()
    return result


# -- generation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "text_of"),
    [
        ("/api/chat", {"messages": HELLO}, lambda chunk: chunk["message"]["content"]),
        ("/api/generate", {"prompt": "hello"}, lambda chunk: chunk["response"]),
    ],
)
async def test_streams_by_default_one_chunk_per_line_usage_on_the_last(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], text_of: Callable[[Any], str]
) -> None:
    lines = await stream_lines(client, path, {"model": "llama3", **body})
    chunks = [json.loads(line) for line in lines]
    *tokens, final = chunks
    assert len(tokens) == 8
    for chunk in tokens:
        assert chunk["done"] is False and chunk["model"] == "llama3"
        assert RFC3339.match(chunk["created_at"])
        assert text_of(chunk) and not set(USAGE) & chunk.keys()
    assert final["done"] is True and final["done_reason"] == "stop"
    assert text_of(final) == ""
    assert all(isinstance(final[key], int) for key in USAGE)
    assert final["eval_count"] == 8

    whole = await client.post(path, json={"model": "llama3", "stream": False, **body})
    assert whole.headers["content-type"] == "application/json; charset=utf-8"
    single = whole.json()
    assert single["done"] is True and all(key in single for key in USAGE)
    assert text_of(single) == "".join(map(text_of, tokens))


async def test_chat_message_shape_and_output_is_a_function_of_model_and_prompt(
    client: httpx.AsyncClient,
) -> None:
    first = await chat(client)
    assert first["message"]["role"] == "assistant"
    assert (await chat(client))["message"]["content"] == first["message"]["content"]
    other_prompt = await chat(client, messages=[{"role": "user", "content": "bye"}])
    other_model = await chat(client, model="qwen2")
    assert other_prompt["message"]["content"] != first["message"]["content"]
    assert other_model["message"]["content"] != first["message"]["content"]


async def test_num_predict_shortens_the_answer(client: httpx.AsyncClient) -> None:
    answer = await chat(client, options={"num_predict": 3})
    assert answer["eval_count"] == 3 and answer["done_reason"] == "length"


async def test_empty_messages_or_prompt_only_load_the_model(client: httpx.AsyncClient) -> None:
    loaded = await chat(client, messages=[], stream=True)
    assert loaded["done_reason"] == "load" and loaded["message"]["content"] == ""
    generate = await client.post("/api/generate", json={"model": "qwen2"})
    assert generate.json()["done_reason"] == "load"
    assert (await stats(client))["loads"] == 2


# -- models, loads and swaps --------------------------------------------------------------


async def test_load_latency_is_paid_only_for_another_model_or_other_load_options(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/api/ps")).json() == {"models": []}

    assert (await chat(client))["load_duration"] >= LOAD * 1e9
    warm = await chat(client, options={"temperature": 0.1, "top_p": 0.5, "num_ctx": 4096})
    assert warm["load_duration"] < LOAD * 1e9 / 2, "sampling options and defaults do not reload"
    assert (await stats(client))["loads"] == 1

    assert (await chat(client, options={"num_ctx": 8192}))["load_duration"] >= LOAD * 1e9
    (resident,) = (await client.get("/api/ps")).json()["models"]
    assert resident["name"] == "llama3:latest" and resident["context_length"] == 8192
    assert resident["size_vram"] == resident["size"] > 0
    assert {"model", "digest", "details", "expires_at"} <= resident.keys()
    assert RFC3339.match(resident["expires_at"])

    assert (await chat(client, "qwen2:latest"))["load_duration"] >= LOAD * 1e9
    assert (await client.get("/api/ps")).json()["models"][0]["name"] == "qwen2:latest"
    assert (await stats(client))["loads"] == 3


async def test_one_generation_at_a_time(start: Start) -> None:
    url = await start(token_latency=0.01)
    async with httpx.AsyncClient(base_url=url) as client, trio.open_nursery() as nursery:
        for model in ("llama3", "qwen2", "llama3"):
            nursery.start_soon(partial(chat, client, model))
    async with httpx.AsyncClient(base_url=url) as client:
        runs = sorted(
            (run["started_at"], run["ended_at"]) for run in (await stats(client))["generations"]
        )
    assert len(runs) == 3
    for (_, ended), (started, _) in itertools.pairwise(runs):
        assert ended <= started


async def test_a_client_going_away_frees_the_gpu(start: Start) -> None:
    async with httpx.AsyncClient(base_url=await start(token_latency=0.05, tokens=4)) as client:
        body = {"model": "llama3", "messages": HELLO}
        async with client.stream("POST", "/api/chat", json=body) as response:
            async for _ in response.aiter_lines():
                break  # leaves after the first token
        await chat(client, "qwen2")
        (only,) = (await stats(client))["generations"]
        assert only["model"] == "qwen2:latest", "the abandoned generation was cancelled"


async def test_stats_record_generations_and_reset_clears_them(client: httpx.AsyncClient) -> None:
    await chat(client)
    await chat(client, "qwen2")
    recorded = await stats(client)
    assert recorded["loads"] == 2
    assert recorded["resident"]["model"] == "qwen2:latest"
    assert recorded["resident"]["options"]["num_ctx"] == 4096
    first, second = recorded["generations"]
    assert first["model"] == "llama3:latest" and first["path"] == "/api/chat"
    assert first["load_seconds"] >= LOAD and first["eval_count"] == 8
    assert first["started_at"] < first["ended_at"] <= second["started_at"] < second["ended_at"]

    await arm(client, {"kind": "status", "times": None})
    reset = (await client.post("/_sim/reset")).json()
    assert reset == {"loads": 0, "resident": None, "waiting": 0, "generations": []}
    assert (await client.get("/_sim/faults")).json() == {"faults": []}


# -- the rest of the API ------------------------------------------------------------------


async def test_tags_show_version_and_root(client: httpx.AsyncClient) -> None:
    tags = (await client.get("/api/tags")).json()["models"]
    assert [model["name"] for model in tags] == [
        "llama3:latest",
        "qwen2:latest",
        "nomic-embed-text:latest",
    ]
    assert {"model", "modified_at", "size", "digest", "details"} <= tags[0].keys()
    assert tags[0]["details"]["family"] == "llama"

    show = (await client.post("/api/show", json={"name": "llama3"})).json()
    assert {"modelfile", "parameters", "template", "details", "model_info"} <= show.keys()
    assert show["capabilities"] == ["completion"]
    embed_show = (await client.post("/api/show", json={"model": "nomic-embed-text"})).json()
    assert embed_show["capabilities"] == ["embedding"]

    assert (await client.get("/api/version")).json() == {"version": "0.12.0"}
    root = await client.get("/")
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert (await client.head("/")).status_code == 200


async def test_embeddings_are_deterministic_unit_vectors_without_touching_the_gpu(
    client: httpx.AsyncClient,
) -> None:
    body = {"model": "nomic-embed-text", "input": ["a cat", "a dog"]}
    first = (await client.post("/api/embed", json=body)).json()
    again = (await client.post("/api/embed", json=body)).json()
    assert first["embeddings"] == again["embeddings"]
    cat, dog = first["embeddings"]
    assert len(cat) == 768 and cat != dog
    assert math.isclose(sum(v * v for v in cat), 1.0)
    assert first["prompt_eval_count"] == 4 and first["load_duration"] == 0

    single = await client.post(
        "/api/embed", json={"model": "llama3", "input": "x", "dimensions": 8}
    )
    assert len(single.json()["embeddings"]) == 1 and len(single.json()["embeddings"][0]) == 8

    legacy = await client.post(
        "/api/embeddings", json={"model": "nomic-embed-text", "prompt": "a cat"}
    )
    assert legacy.json() == {"embedding": cat}
    assert (await stats(client))["loads"] == 0, "embeddings leave the GPU alone"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        ("POST", "/api/chat", {"model": "nope", "messages": HELLO}, 404, "model 'nope' not found"),
        ("POST", "/api/generate", {"model": "nope", "prompt": "hi"}, 404, "model 'nope' not found"),
        ("POST", "/api/generate", {"prompt": "hi"}, 404, "model '' not found"),
        ("POST", "/api/embed", {"model": "nope", "input": "hi"}, 404, "model 'nope' not found"),
        ("POST", "/api/show", {"model": "nope"}, 404, "model 'nope' not found"),
        ("POST", "/api/chat", {"messages": HELLO}, 400, "model is required"),
        ("POST", "/api/show", {}, 400, "model is required"),
        ("POST", "/api/embeddings", {"prompt": "hi"}, 400, "model is required"),
        ("POST", "/api/chat", b"", 400, "missing request body"),
        ("POST", "/api/generate", b"{", 400, None),
        ("POST", "/api/chat", {"model": "llama3", "messages": "hi"}, 400, None),
        ("POST", "/api/chat", {"model": "nomic-embed-text"}, 400, None),
    ],
)
async def test_errors_have_ollamas_status_and_body(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: dict[str, Any] | bytes,
    status: int,
    error: str | None,
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await client.request(method, path, content=content)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert isinstance(response.json()["error"], str)
    if error is not None:
        assert response.json() == {"error": error}


async def test_unknown_path_and_wrong_method_are_plain_text(client: httpx.AsyncClient) -> None:
    unknown = await client.get("/api/nothing")
    assert (unknown.status_code, unknown.text) == (404, "404 page not found")
    assert (await client.get("/api/chat")).status_code == 405


async def test_any_content_type_is_read_as_json(client: httpx.AsyncClient) -> None:
    body = json.dumps({"model": "llama3", "prompt": "hi", "stream": False})
    form = {"content-type": "application/x-www-form-urlencoded"}  # what curl -d sends
    response = await client.post("/api/generate", content=body, headers=form)
    assert response.status_code == 200 and response.json()["done"] is True


# -- faults -------------------------------------------------------------------------------


async def test_status_fault_applies_to_the_next_n_matching_requests(
    client: httpx.AsyncClient,
) -> None:
    await arm(
        client, {"kind": "status", "status": 500, "times": 2, "model": "llama3", "error": "boom"}
    )
    assert (await client.get("/_sim/faults")).json()["faults"][0]["times"] == 2
    assert (await client.get("/api/tags")).status_code == 200, "no model: no match"
    assert (await chat(client, "qwen2"))["done"] is True
    for _ in range(2):
        failed = await client.post("/api/chat", json={"model": "llama3:latest", "messages": HELLO})
        assert (failed.status_code, failed.json()) == (500, {"error": "boom"})
    assert (await chat(client))["done"] is True
    assert (await client.get("/_sim/faults")).json() == {"faults": []}


async def test_answer_fault_answers_its_body_verbatim(client: httpx.AsyncClient) -> None:
    await arm(
        client, {"kind": "answer", "status": 500, "body": "oops", "content_type": "text/plain"}
    )
    answer = await client.get("/api/tags")
    assert (answer.status_code, answer.text) == (500, "oops")
    assert answer.headers["content-type"].startswith("text/plain")
    assert (await client.get("/api/tags")).status_code == 200  # once


async def test_a_lone_surrogate_becomes_a_replacement_character_as_in_go(
    client: httpx.AsyncClient,
) -> None:
    body = json.dumps({"model": "nomic-embed-text", "input": "a\ud800b"})
    answer = await client.post("/api/embed", content=body)
    assert answer.status_code == 200
    same = await client.post("/api/embed", json={"model": "nomic-embed-text", "input": "a\ufffdb"})
    assert answer.json()["embeddings"] == same.json()["embeddings"]


async def test_fault_until_cleared(client: httpx.AsyncClient) -> None:
    await arm(client, {"kind": "status", "status": 503, "times": None, "path": "/api/version"})
    for _ in range(3):
        assert (await client.get("/api/version")).status_code == 503
    await client.delete("/_sim/faults")
    assert (await client.get("/api/version")).status_code == 200


async def test_drop_mid_stream_cuts_the_connection(client: httpx.AsyncClient) -> None:
    await arm(client, {"kind": "drop_mid_stream", "after_tokens": 2, "times": 2})
    received: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        body = {"model": "llama3", "messages": HELLO}
        async with client.stream("POST", "/api/chat", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                received.append(line)
    assert len(received) == 2
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/api/generate", json={"model": "llama3", "prompt": "x", "stream": False})
    assert (await chat(client))["done"] is True, "the GPU was freed"


async def test_drop_mid_stream_with_an_error_line(client: httpx.AsyncClient) -> None:
    fault = {"kind": "drop_mid_stream", "after_tokens": 3, "error": "runner died"}
    await arm(client, fault, fault)
    lines = await stream_lines(client, "/api/generate", {"model": "llama3", "prompt": "x"})
    assert len(lines) == 4 and json.loads(lines[-1]) == {"error": "runner died"}
    whole = await client.post(
        "/api/generate", json={"model": "llama3", "prompt": "x", "stream": False}
    )
    assert (whole.status_code, whole.json()) == (500, {"error": "runner died"})


async def test_stall_before_answering_and_mid_stream(client: httpx.AsyncClient) -> None:
    await arm(client, {"kind": "stall", "seconds": 30, "path": "/api/ps"})
    with pytest.raises(httpx.ReadTimeout):
        await client.get("/api/ps", timeout=0.2)

    await arm(client, {"kind": "stall", "seconds": 30, "after_tokens": 1})
    received: list[str] = []
    with pytest.raises(httpx.ReadTimeout):
        body = {"model": "llama3", "messages": HELLO}
        async with client.stream("POST", "/api/chat", json=body, timeout=0.3) as response:
            async for line in response.aiter_lines():
                received.append(line)
    assert len(received) == 1


async def test_outage_refuses_connections_then_recovers_with_the_model_unloaded(
    client: httpx.AsyncClient,
) -> None:
    await chat(client)
    assert (await client.post("/_sim/outage", json={"seconds": 0.5})).status_code == 202
    outcomes: list[str] = []
    with trio.fail_after(5):
        while outcomes[-1:] != ["up"] or "refused" not in outcomes:
            try:
                await client.get("/api/version")
                outcomes.append("up")
            except httpx.ConnectError:
                outcomes.append("refused")
            await trio.sleep(0.02)
    assert "refused" in outcomes
    assert (await client.get("/api/ps")).json() == {"models": []}
    assert (await chat(client))["load_duration"] >= LOAD * 1e9


async def test_stopping_the_server_refuses_connections(nursery: trio.Nursery) -> None:
    stop = trio.Event()
    config = SimulatorConfig(listen="127.0.0.1:0")
    url = await nursery.start(partial(serve_simulator, config, shutdown_trigger=stop.wait))
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/")).status_code == 200
        stop.set()
        with trio.fail_after(2):
            while True:
                try:
                    await client.get("/")
                except httpx.ConnectError:
                    break
                await trio.sleep(0.02)


# -- the official client and the command --------------------------------------------------


async def test_the_official_ollama_client_works_against_it(start: Start) -> None:
    url = await start()

    def use_client() -> None:
        client = ollama.Client(host=url)
        answer = client.chat(model="llama3", messages=HELLO)
        assert answer.message.role == "assistant" and answer.message.content
        assert answer.done and answer.eval_count == 8
        parts = list(client.chat(model="llama3", messages=HELLO, stream=True))
        assert "".join(part.message.content or "" for part in parts) == answer.message.content
        assert parts[-1].done_reason == "stop"
        assert client.generate(model="qwen2", prompt="hi").response
        assert len(client.embed(model="nomic-embed-text", input=["a", "b"]).embeddings) == 2
        assert client.list().models[0].model == "llama3:latest"
        assert [m.model for m in client.ps().models] == ["qwen2:latest"]
        assert client.show("llama3").capabilities == ["completion"]
        with pytest.raises(ollama.ResponseError) as error:
            client.chat(model="nope", messages=HELLO)
        assert error.value.status_code == 404 and error.value.error == "model 'nope' not found"

    await trio.to_thread.run_sync(use_client)


@pytest.mark.slow  # a `foreman simulate` process
def test_foreman_simulate_serves_until_interrupted() -> None:
    command = [sys.executable, "-m", "foreman.cli", "simulate", "--listen", "127.0.0.1:0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        url = re.search(r"http://\S+", process.stdout.readline())
        assert url is not None
        assert httpx.get(url.group(0)).text == "Ollama is running"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0


async def test_a_request_whose_client_hangs_up_while_waiting_for_the_gpu_is_dropped(
    client: httpx.AsyncClient,
) -> None:
    await arm(client, {"kind": "stall", "seconds": 1, "after_tokens": 0})

    async def waiting(count: int) -> None:
        with trio.fail_after(5):
            await client.get(f"/_sim/stats?until_waiting={count}")

    async with trio.open_nursery() as callers:
        callers.start_soon(chat, client)  # holds the GPU for a second
        async with trio.open_nursery() as second:
            second.start_soon(partial(chat, client, messages=[{"role": "user", "content": "2"}]))
            await waiting(1)
            second.cancel_scope.cancel()  # hangs up while waiting for the GPU
        await waiting(0)
    assert len((await stats(client))["generations"]) == 1  # the second never ran


@pytest.mark.parametrize(("parallel", "expected"), [(1, [1, 3, 6]), (2, [1, 1, 4])])
async def test_parallel_slots_share_the_resident_model_and_another_model_waits_for_idle(
    autojump_clock: trio.testing.MockClock, parallel: int, expected: list[int]
) -> None:
    gpu = SimulatedGPU(SimulatorConfig(parallel=parallel, load_latency=1))
    llama3, qwen2 = gpu.config.models[0], gpu.config.models[1]
    started: dict[str, float] = {}

    async def generate(name: str, model: SimModel) -> None:
        async with gpu.session(model, LoadKey.of(model, {})):
            started[name] = trio.current_time()
            await trio.sleep(2)

    async with trio.open_nursery() as nursery:
        for name, model in (("a", llama3), ("b", llama3), ("c", qwen2)):
            nursery.start_soon(generate, name, model)
            await trio.testing.wait_all_tasks_blocked()
    # a loads llama3 (1 s); b joins it when a slot is free; c's model waits for an idle GPU
    assert [started[name] for name in "abc"] == expected
    assert gpu.loads == 2


PACE = SimulatorConfig(load_latency=0.2, token_latency=0.002, tokens=8)
"""swaps.py's simulator: a 0.2 s load, 8 tokens 2 ms apart."""


async def consume(
    gpu: SimulatedGPU, model: SimModel, hold: Callable[[int], float], stall: Stall | None = None
) -> list[float]:
    """One generation on ``gpu``: when each token came, on Trio's clock. The consumer
    holds each item ``hold(n)`` seconds (the handler writing it out, a host late to
    wake it) before asking for the next."""
    job = Job("/api/chat", model, LoadKey.of(model, {}), model.name, None, 0)
    came: list[float] = []
    async with aclosing(gpu.generate(job, stall)) as output:
        async for item in output:
            if isinstance(item, str):
                came.append(trio.current_time())
            await trio.sleep(hold(len(came)))
    return came


async def test_generations_keep_the_nominal_pace_whatever_the_host_adds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each token is due on the GPU's timeline: the consumer's 0.5 ms with every item
    (the handler's, or the host's lateness to wake it) and one hiccup of 5 ms (longer
    than a token) cost the GPU nothing. Three generations queued together (the third
    for another model, so loading it) end exactly at their nominal times."""
    gpu = SimulatedGPU(PACE)
    llama3, qwen2 = PACE.models[0], PACE.models[1]
    came: dict[str, list[float]] = {}

    async def run(name: str, model: SimModel) -> None:
        came[name] = await consume(gpu, model, lambda n: 0.005 if n == 3 else 0.0005)

    began = trio.current_time()
    async with trio.open_nursery() as nursery:
        for name, model in (("a", llama3), ("b", llama3), ("c", qwen2)):
            nursery.start_soon(run, name, model)
            await trio.testing.wait_all_tasks_blocked()
    work = PACE.tokens * PACE.token_latency
    nominal = [
        PACE.load_latency + work,
        PACE.load_latency + 2 * work,
        2 * PACE.load_latency + 3 * work,
    ]
    assert [came[name][-1] - began for name in "abc"] == pytest.approx(nominal, abs=1e-9)
    records = gpu.generations
    assert [r.ended_at - records[0].started_at for r in records] == pytest.approx(nominal, abs=1e-6)
    assert [r.load_seconds for r in records] == [PACE.load_latency, 0.0, PACE.load_latency]


async def test_a_stall_holds_the_gpu_for_its_length_then_the_pace_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gpu = SimulatedGPU(PACE.model_copy(update={"load_latency": 0.0}))
    began = trio.current_time()
    came = await consume(gpu, PACE.models[0], lambda _: 0.0, Stall(after_tokens=2, seconds=1.0))
    due = [(n + 1) * PACE.token_latency + (1.0 if n >= 2 else 0.0) for n in range(PACE.tokens)]
    assert [at - began for at in came] == pytest.approx(due, abs=1e-9)
