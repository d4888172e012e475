"""The simulator's OpenAI-compatible ``/v1``, driven by the official ``openai`` client as
applications drive Ollama's: the same simulated GPU as the native API, in OpenAI's shapes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import openai
import pytest
import trio

from foreman.simulator import SimulatorConfig, serve_simulator
from tests.factories import PIXEL, WEATHER_TOOL

T = TypeVar("T")
HELLO: list[Any] = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def url(nursery: trio.Nursery) -> str:
    config = SimulatorConfig(listen="127.0.0.1:0")
    started: str = await nursery.start(serve_simulator, config)
    return started


@pytest.fixture
def client(url: str) -> openai.OpenAI:
    # No retries: a 5xx must reach the test as it was answered.
    return openai.OpenAI(base_url=f"{url}/v1", api_key="ignored", max_retries=0)


async def off_thread(call: Callable[[], T]) -> T:
    """The client is synchronous: run it on a thread, so the simulator keeps serving."""
    return await trio.to_thread.run_sync(call)


async def native_chat(url: str, **body: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/api/chat", json={"stream": False, **body})
        answer: dict[str, Any] = response.json()
        return answer


async def arm(url: str, *faults: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.post("/_sim/faults", json=list(faults))).status_code == 200


# -- chat ------------------------------------------------------------------------------------


async def test_a_chat_completion_is_the_native_answer_in_openais_shape(
    url: str, client: openai.OpenAI
) -> None:
    answer = await off_thread(
        lambda: client.chat.completions.create(model="llama3", messages=HELLO)
    )
    native = await native_chat(url, model="llama3", messages=HELLO)
    assert answer.id.startswith("chatcmpl-")
    assert answer.object == "chat.completion"
    assert answer.model == "llama3"
    assert answer.system_fingerprint == "fp_ollama"
    [choice] = answer.choices
    assert choice.index == 0 and choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == native["message"]["content"]
    assert answer.usage is not None
    assert answer.usage.completion_tokens == native["eval_count"] == 8
    assert answer.usage.prompt_tokens == native["prompt_eval_count"]
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 8


@pytest.mark.parametrize("limit", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_bounds_the_answer(client: openai.OpenAI, limit: str) -> None:
    answer = await off_thread(
        lambda: client.chat.completions.create(
            model="llama3", messages=HELLO, **{limit: 3}, seed=7, temperature=0.2
        )
    )
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 3


async def test_a_streamed_chat_opens_with_the_role_and_ends_with_finish_and_usage(
    client: openai.OpenAI,
) -> None:
    def stream() -> list[Any]:
        return list(
            client.chat.completions.create(
                model="llama3",
                messages=HELLO,
                stream=True,
                stream_options={"include_usage": True},
            )
        )

    chunks = await off_thread(stream)
    whole = await off_thread(lambda: client.chat.completions.create(model="llama3", messages=HELLO))
    *content, finish, usage = chunks
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk.id for chunk in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert len({chunk.created for chunk in chunks}) == 1
    assert content[0].choices[0].delta.role == "assistant"
    assert all(chunk.choices[0].delta.role is None for chunk in content[1:])
    assert "".join(c.choices[0].delta.content for c in content) == whole.choices[0].message.content
    assert all(chunk.choices[0].finish_reason is None for chunk in content)
    assert finish.choices[0].finish_reason == "stop"
    assert finish.choices[0].delta.content is None and finish.choices[0].delta.role is None
    assert usage.choices == []
    assert usage.usage is not None and usage.usage.completion_tokens == 8


async def test_a_stream_is_server_sent_events_ending_with_done(url: str) -> None:
    body = {"model": "llama3", "messages": HELLO, "stream": True}
    async with (
        httpx.AsyncClient(base_url=url) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = (await response.aread()).decode()
    events = text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(event.startswith("data: ") for event in events[:-1])
    # Without include_usage: a content chunk per token, the finish chunk, and no usage.
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert len(chunks) == 8 + 1
    assert all("usage" not in chunk for chunk in chunks)
    assert chunks[-1]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]


async def test_tools_and_a_tool_conversation_are_accepted(client: openai.OpenAI) -> None:
    messages: Any = [
        {"role": "user", "content": "What's the weather like in Paris?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "20 degrees Celsius"},
    ]
    answer = await off_thread(
        lambda: client.chat.completions.create(
            model="llama3", messages=messages, tools=[WEATHER_TOOL], tool_choice="auto"
        )
    )
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop"


async def test_tool_call_arguments_that_are_not_a_json_object_are_refused(
    client: openai.OpenAI,
) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "Paris"}}
    messages: Any = [*HELLO, {"role": "assistant", "tool_calls": [call]}]
    with pytest.raises(openai.BadRequestError) as raised:
        await off_thread(lambda: client.chat.completions.create(model="llama3", messages=messages))
    assert raised.value.param == "messages[1].tool_calls[0].function.arguments"
    assert raised.value.type == "invalid_request_error"


async def test_a_json_response_format_and_an_image_are_accepted(client: openai.OpenAI) -> None:
    content: Any = [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
    ]
    answer = await off_thread(
        lambda: client.chat.completions.create(
            model="llama3",
            messages=[{"role": "user", "content": content}],
            response_format={"type": "json_object"},
        )
    )
    assert answer.choices[0].message.content


async def test_a_remote_image_is_refused_as_ollama_refuses_it(client: openai.OpenAI) -> None:
    content: Any = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(openai.BadRequestError) as raised:
        await off_thread(
            lambda: client.chat.completions.create(
                model="llama3", messages=[{"role": "user", "content": content}]
            )
        )
    assert "image URLs are not currently supported" in raised.value.message


async def test_an_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        await off_thread(lambda: client.chat.completions.create(model="nope", messages=HELLO))
    assert raised.value.body == {
        "message": "model 'nope' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }


async def test_an_embedding_model_cannot_chat(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await off_thread(
            lambda: client.chat.completions.create(model="nomic-embed-text", messages=HELLO)
        )
    assert raised.value.body == {
        "message": '"nomic-embed-text" does not support chat',
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


async def test_a_bad_body_is_a_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await off_thread(lambda: client.chat.completions.create(model="llama3", messages=[]))
    assert raised.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as raised:
        await off_thread(
            lambda: client.chat.completions.create(
                model="llama3", messages=HELLO, reasoning_effort="extreme"
            )
        )
    assert "invalid reasoning value" in raised.value.message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "missing request body"),
        (b"{", None),
        (b"[]", "the request body must be a JSON object, not an array"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model is required"),
    ],
)
async def test_bodies_that_are_not_requests_are_refused_in_openais_shape(
    url: str, body: bytes, message: str | None
) -> None:
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/v1/chat/completions", content=body)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}
    if message is not None:
        assert error["message"] == message


async def test_a_status_fault_is_answered_in_openais_shape(url: str, client: openai.OpenAI) -> None:
    await arm(url, {"kind": "status", "status": 503, "error": "server busy", "path": "/api/chat"})
    with pytest.raises(openai.InternalServerError) as raised:
        await off_thread(lambda: client.chat.completions.create(model="llama3", messages=HELLO))
    assert raised.value.status_code == 503
    assert raised.value.body == {
        "message": "server busy",
        "type": "api_error",
        "param": None,
        "code": None,
    }


async def test_an_error_mid_stream_reaches_the_client(url: str, client: openai.OpenAI) -> None:
    await arm(url, {"kind": "drop_mid_stream", "after_tokens": 2, "error": "runner died"})

    def stream() -> list[Any]:
        chunks = []
        with pytest.raises(openai.APIError, match="runner died"):
            for chunk in client.chat.completions.create(
                model="llama3", messages=HELLO, stream=True
            ):
                chunks.append(chunk)
        return chunks

    chunks = await off_thread(stream)
    assert len(chunks) == 2


@pytest.mark.parametrize("stream", [False, True])
async def test_a_cut_connection_is_a_connection_error(
    url: str, client: openai.OpenAI, stream: bool
) -> None:
    await arm(url, {"kind": "drop_mid_stream", "after_tokens": 2})

    def call() -> None:
        answer = client.chat.completions.create(model="llama3", messages=HELLO, stream=stream)
        if stream:
            list(answer)  # type: ignore[call-overload]

    with pytest.raises(openai.APIConnectionError):
        await off_thread(call)


# -- completions, embeddings, models ----------------------------------------------------------


async def test_completions_streamed_and_not(client: openai.OpenAI) -> None:
    whole = await off_thread(lambda: client.completions.create(model="qwen2", prompt="Say hi"))
    assert whole.id.startswith("cmpl-") and whole.object == "text_completion"
    assert whole.system_fingerprint == "fp_ollama"
    assert whole.choices[0].text and whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and whole.usage.completion_tokens == 8

    def stream() -> list[Any]:
        return list(
            client.completions.create(
                model="qwen2",
                prompt="Say hi",
                stream=True,
                stream_options={"include_usage": True},
            )
        )

    *chunks, usage = await off_thread(stream)
    assert "".join(chunk.choices[0].text for chunk in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert usage.choices == []
    assert usage.usage is not None and usage.usage.completion_tokens == 8


async def test_an_empty_prompt_streams_one_chunk_that_loads_the_model(url: str) -> None:
    body = {"model": "qwen2", "prompt": "", "stream": True}
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/v1/completions", json=body)
    events = response.text.split("\n\n")
    assert events[1:] == ["data: [DONE]", ""]
    chunk = json.loads(events[0].removeprefix("data: "))
    assert chunk["choices"] == [{"text": "", "index": 0, "finish_reason": "load"}]


async def test_embeddings_as_floats_and_as_base64(url: str, client: openai.OpenAI) -> None:
    # The client asks for base64 (float32 bytes) unless told otherwise, and decodes it.
    listed = await off_thread(
        lambda: client.embeddings.create(model="nomic-embed-text", input=["a cat", "a dog"])
    )
    assert listed.object == "list" and listed.model == "nomic-embed-text"
    assert [item.index for item in listed.data] == [0, 1]
    assert listed.usage.prompt_tokens == listed.usage.total_tokens == 4
    async with httpx.AsyncClient(base_url=url) as http:
        native = (
            await http.post("/api/embed", json={"model": "nomic-embed-text", "input": "a cat"})
        ).json()
        body = {"model": "nomic-embed-text", "input": "a cat", "encoding_format": "float"}
        floats = (await http.post("/v1/embeddings", json=body)).json()["data"][0]["embedding"]
    assert floats == native["embeddings"][0] and len(floats) == 768
    assert listed.data[0].embedding == pytest.approx(floats, rel=1e-6)


async def test_embeddings_refuse_token_arrays_and_unknown_formats(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await off_thread(lambda: client.embeddings.create(model="nomic-embed-text", input=[1, 2]))
    assert raised.value.param == "input"
    with pytest.raises(openai.BadRequestError, match="encoding_format"):
        await off_thread(
            lambda: client.embeddings.create(
                model="nomic-embed-text",
                input="hi",
                encoding_format="hex",  # type: ignore[arg-type]
            )
        )


async def test_models_are_listed_and_retrieved(client: openai.OpenAI) -> None:
    listed = await off_thread(lambda: list(client.models.list()))
    assert [model.id for model in listed] == [
        "llama3:latest",
        "qwen2:latest",
        "nomic-embed-text:latest",
    ]
    assert {(model.object, model.owned_by) for model in listed} == {("model", "library")}
    assert listed[0].created == 1717243200  # 2024-06-01T12:00:00Z, the simulator's modified_at
    model = await off_thread(lambda: client.models.retrieve("llama3"))
    assert (model.id, model.object, model.created, model.owned_by) == (
        "llama3",
        "model",
        1717243200,
        "library",
    )
    with pytest.raises(openai.NotFoundError, match="model 'nope' not found"):
        await off_thread(lambda: client.models.retrieve("nope"))
