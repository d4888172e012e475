"""Foreman's OpenAI-compatible front door, driven by the official ``openai`` client
unchanged but for ``base_url``: chat and completions are durable jobs on the same queue
as Ollama's API, and every answer is what the backend's own ``/v1`` gives for the same
request, field by field (the simulator serves ``/v1`` as Ollama does)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest
import trio

from foreman.simulator import SimulatorConfig, serve_simulator
from tests.factories import PIXEL, WEATHER_TOOL
from tests.running import Foreman, event_types, of_type, recorded, start_foreman, until

T = TypeVar("T")
HELLO: list[Any] = [{"role": "user", "content": "why is the sky blue?"}]
VARYING = ("id", "created")
"""What differs between two answers to the same request."""


@dataclass
class Pair:
    """Foreman, and the simulator behind it, each with an ``openai`` client."""

    foreman: Foreman
    via_foreman: openai.OpenAI
    direct: openai.OpenAI

    async def both(self, call: Callable[[openai.OpenAI], T]) -> tuple[T, T]:
        """The same call through Foreman, then straight to the backend."""
        through = await trio.to_thread.run_sync(call, self.via_foreman)
        return through, await trio.to_thread.run_sync(call, self.direct)


@pytest.fixture
async def pair(db_path: Path, nursery: trio.Nursery) -> AsyncIterator[Pair]:
    sim = await nursery.start(serve_simulator, SimulatorConfig(listen="127.0.0.1:0"))
    async for foreman in start_foreman(nursery, db_path, backend=sim):
        yield Pair(
            foreman,
            openai.OpenAI(base_url=f"{foreman.url}/v1", api_key="unused", max_retries=0),
            openai.OpenAI(base_url=f"{sim}/v1", api_key="unused", max_retries=0),
        )


def same_but_ids(a: Any, b: Any) -> None:
    first, second = a.model_dump(), b.model_dump()
    for field in VARYING:
        first.pop(field, None), second.pop(field, None)
    assert first == second


async def test_chat_is_a_job_answered_as_the_backend_answers_it(pair: Pair) -> None:
    committed = await pair.foreman.running.journal.subscribe()

    def chat(client: openai.OpenAI) -> Any:
        return client.chat.completions.create(model="llama3", messages=HELLO, seed=7)

    through, direct = await pair.both(chat)
    same_but_ids(through, direct)
    assert through.object == "chat.completion" and through.choices[0].message.content
    assert through.usage is not None and through.usage.total_tokens > 0
    job_id = through.id.removeprefix("chatcmpl-")
    await until(committed, recorded(job_id, "JobSucceeded"))
    assert event_types(pair.foreman.db_path, job_id) == [
        "JobSubmitted",
        "JobStarted",
        "JobSucceeded",
    ]


async def test_a_streamed_chat_is_server_sent_events_ending_with_done(pair: Pair) -> None:
    def chunks(client: openai.OpenAI) -> list[Any]:
        stream = client.chat.completions.create(
            model="llama3",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
        return list(stream)

    through, direct = await pair.both(chunks)
    assert len(through) == len(direct) > 3
    for a, b in zip(through, direct, strict=True):
        same_but_ids(a, b)
    assert through[0].choices[0].delta.role == "assistant"
    assert through[-2].choices[0].finish_reason == "stop"
    assert through[-1].choices == [] and through[-1].usage is not None
    answer = await trio.to_thread.run_sync(
        partial(pair.via_foreman.chat.completions.create, model="llama3", messages=HELLO)
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in through if c.choices)
    assert streamed == answer.choices[0].message.content

    async with httpx.AsyncClient(base_url=pair.foreman.url) as http:
        body = {"model": "llama3", "messages": HELLO, "stream": True}
        response = await http.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("data: [DONE]\n\n")


async def test_tools_json_schema_and_images_translate_as_ollama_translates_them(
    pair: Pair,
) -> None:
    def with_tools(client: openai.OpenAI) -> Any:
        weather = [{"role": "user", "content": "What is the weather in Paris?"}]
        return client.chat.completions.create(
            model="llama3", messages=weather, tools=[WEATHER_TOOL]
        )

    def with_schema(client: openai.OpenAI) -> Any:
        schema = {"type": "object", "properties": {"sky": {"type": "string"}}}
        return client.chat.completions.create(
            model="llama3",
            messages=HELLO,
            response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
        )

    def with_image(client: openai.OpenAI) -> Any:
        image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}
        text = {"type": "text", "text": "what is this?"}
        messages: Any = [{"role": "user", "content": [text, image]}]
        return client.chat.completions.create(model="llama3", messages=messages)

    for call in (with_tools, with_schema, with_image):
        through, direct = await pair.both(call)
        same_but_ids(through, direct)


async def test_completions_embeddings_and_models_match_the_backend(pair: Pair) -> None:
    def complete(client: openai.OpenAI) -> Any:
        return client.completions.create(model="qwen2", prompt="hello", max_tokens=8)

    def embed(client: openai.OpenAI) -> Any:
        return client.embeddings.create(model="nomic-embed-text", input=["a", "b"])

    def models(client: openai.OpenAI) -> Any:
        return client.models.list()

    def model(client: openai.OpenAI) -> Any:
        return client.models.retrieve("llama3")

    for call in (complete, embed, models, model):
        through, direct = await pair.both(call)
        if call is models:
            assert [m.model_dump() for m in through] == [m.model_dump() for m in direct]
        else:
            same_but_ids(through, direct)


async def test_errors_have_openais_shape_and_the_clients_exceptions(pair: Pair) -> None:
    client = pair.via_foreman

    async def raises(error: type[Exception], call: Callable[[], Any]) -> Any:
        with pytest.raises(error) as caught:
            await trio.to_thread.run_sync(call)
        return caught.value

    missing = await raises(
        openai.NotFoundError,
        partial(client.chat.completions.create, model="no-such-model", messages=HELLO),
    )
    assert "no-such-model" in missing.message
    bad = await raises(
        openai.BadRequestError,
        partial(client.chat.completions.create, model="llama3", messages="not a list"),  # type: ignore[arg-type]
    )
    assert bad.body["type"] == "invalid_request_error" and "messages" in bad.message
    async with httpx.AsyncClient(base_url=pair.foreman.url) as http:
        for method, path, body in (
            ("POST", "/v1/chat/completions", b"{nope"),
            ("POST", "/v1/completions", b"[]"),
            ("POST", "/v1/embeddings", b'{"model": "nomic-embed-text", "input": [[1, 2]]}'),
            ("GET", "/v1/nothing-here", b""),
            ("DELETE", "/v1/models", b""),
        ):
            response = await http.request(method, path, content=body)
            assert response.status_code in (400, 404, 405), (path, response.text)
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}, response.text
            assert error["message"]


async def test_a_streamed_caller_that_hangs_up_cancels_its_job(
    db_path: Path, nursery: trio.Nursery
) -> None:
    slow = SimulatorConfig(listen="127.0.0.1:0", token_latency=0.05)
    async for foreman in start_foreman(nursery, db_path, simulator=slow):
        committed = await foreman.running.journal.subscribe()
        async with httpx.AsyncClient(base_url=foreman.url) as http:
            body = {"model": "llama3", "messages": HELLO, "stream": True, "max_tokens": 500}
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        job_id = json.loads(line[6:])["id"].removeprefix("chatcmpl-")
                        break
        cancelled = await until(committed, of_type("JobCancelled"))
        assert cancelled.stream == job_id
        assert cancelled.event.reason == "client_disconnected"  # type: ignore[attr-defined]


async def test_an_error_mid_stream_ends_the_events_with_an_error_the_client_raises(
    pair: Pair,
) -> None:
    committed = await pair.foreman.running.journal.subscribe()
    sim = str(pair.direct.base_url).removesuffix("/v1/")
    async with httpx.AsyncClient() as http:
        drop = {"kind": "drop_mid_stream", "after_tokens": 2, "error": "the GPU fell over"}
        await http.post(f"{sim}/_sim/faults", json=drop)

    def chunks() -> list[Any]:
        stream = pair.via_foreman.chat.completions.create(
            model="llama3", messages=HELLO, stream=True
        )
        return list(stream)

    with pytest.raises(openai.APIError, match="the GPU fell over"):
        await trio.to_thread.run_sync(chunks)
    failed = await until(committed, of_type("JobFailed"))
    assert event_types(pair.foreman.db_path, failed.stream)[-1] == "JobFailed"
