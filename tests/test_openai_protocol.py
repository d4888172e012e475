"""The OpenAI ⇄ Ollama translation against Ollama's own: the table cases of its Go tests
(``openai/openai_test.go``, ``openai/openai_encoding_format_test.go``,
``middleware/openai_test.go``, ``middleware/openai_encoding_format_test.go``) and the
examples of its ``docs/api/openai-compatibility.mdx``, plus hostile bodies."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foreman.openai_protocol import (
    ChatStream,
    CompletionStream,
    OpenAIError,
    chat_completion,
    chat_request,
    completion,
    completion_request,
    decode_body,
    embedding_list,
    embedding_request,
    from_native_error,
    include_usage,
    model_list,
    model_object,
    native_error_message,
    new_id,
    sse,
)

IMAGE = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNk+A8AAQUBAScY42YAAAAASUVORK5CYII="
)
"""Ollama's test image (a 1x1 PNG), in base64."""
DEFAULTS = {"temperature": 1.0, "top_p": 1.0}
"""The options Ollama's /v1 always sets on a chat."""
HELLO = [{"role": "user", "content": "Hello"}]
WEATHER_CALL = {
    "id": "id",
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "arguments": '{"location": "Paris, France", "format": "celsius"}',
    },
}
NATIVE_WEATHER_CALL = {
    "id": "id",
    "function": {
        "index": 0,
        "name": "get_current_weather",
        "arguments": {"location": "Paris, France", "format": "celsius"},
    },
}
QUESTION = {"role": "user", "content": "What's the weather like in Paris Today?"}
NATIVE_QUESTION = {"role": "user", "content": "What's the weather like in Paris Today?"}


def refused(translate: Any, body: object) -> OpenAIError:
    with pytest.raises(OpenAIError) as raised:
        translate(body)
    assert raised.value.status == 400
    return raised.value


def frames(stream: ChatStream | CompletionStream, *answers: dict[str, Any]) -> list[Any]:
    """The events a stream sends for ``answers``, decoded (``[DONE]`` as is)."""
    body = b"".join(stream.events(answer) for answer in answers).decode()
    events = body.split("\n\n")
    assert events[-1] == ""
    assert all(event.startswith("data: ") for event in events[:-1])
    data = [event.removeprefix("data: ") for event in events[:-1]]
    return [item if item == "[DONE]" else json.loads(item) for item in data]


def chat_stream(*, include_usage: bool = False) -> ChatStream:
    return ChatStream(id="chatcmpl-test", created=1_700_000_000, include_usage=include_usage)


def tool_call(id: str = "call_123", name: str = "get_weather", **arguments: Any) -> Any:
    return {"id": id, "function": {"index": 0, "name": name, "arguments": arguments}}


# -- errors (openai.NewError, the middleware's writeError) -------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (404, "not_found_error"),
        (500, "api_error"),
        (503, "api_error"),
    ],
)
def test_an_errors_type_follows_its_status_as_in_ollama(status: int, kind: str) -> None:
    error = OpenAIError(status, "test message")
    assert error.body() == {
        "error": {"message": "test message", "type": kind, "param": None, "code": None}
    }


def test_a_native_error_keeps_its_status_and_message() -> None:
    # TestRetrieveMiddleware: "retrieve handler error forwarding".
    error = from_native_error(400, native_error_message(b'{"error": "model not found"}'))
    assert (error.status, error.body()) == (
        400,
        {
            "error": {
                "code": None,
                "message": "model not found",
                "param": None,
                "type": "invalid_request_error",
            }
        },
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": "model \'x\' not found"}', "model 'x' not found"),
        (b"404 page not found", "404 page not found"),  # not JSON: the body itself
        (b"{}", "something went wrong, please see the ollama server logs for details"),
        (b'{"error": 5}', '{"error": 5}'),
        (b"\xff\xfe", "\ufffd\ufffd"),
    ],
)
def test_the_message_of_a_native_error_body(body: bytes, message: str) -> None:
    assert native_error_message(body) == message


def test_a_body_that_is_not_json_is_a_bad_request() -> None:
    assert decode_body(b'{"model": "m"}') == {"model": "m"}
    for raw in (b"", b"{", b"[NaN]"):
        with pytest.raises(OpenAIError) as raised:
            decode_body(raw)
        assert raised.value.status == 400


# -- chat requests (FromChatRequest, TestChatMiddleware) ---------------------------------------


def test_the_documented_basic_chat() -> None:
    body = {"messages": [{"role": "user", "content": "Say this is a test"}], "model": "gpt-oss:20b"}
    assert chat_request(body) == {
        "model": "gpt-oss:20b",
        "messages": [{"role": "user", "content": "Say this is a test"}],
        "stream": False,
        "options": DEFAULTS,
    }


def test_a_chat_with_every_option() -> None:
    body = {
        "model": "test-model",
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 999,
        "seed": 123,
        "stop": ["\n", "stop"],
        "temperature": 3.0,
        "frequency_penalty": 4.0,
        "presence_penalty": 5.0,
        "top_p": 6.0,
        "response_format": {"type": "json_object"},
    }
    assert chat_request(body) == {
        "model": "test-model",
        "messages": HELLO,
        "stream": True,
        "format": "json",
        "options": {
            "num_predict": 999,
            "seed": 123,
            "stop": ["\n", "stop"],
            "temperature": 3.0,
            "frequency_penalty": 4.0,
            "presence_penalty": 5.0,
            "top_p": 6.0,
        },
    }
    assert include_usage(body)
    assert not include_usage({"stream_options": {"include_usage": False}})


def test_max_completion_tokens_sets_num_predict_and_wins_over_max_tokens() -> None:
    # Ollama ignores max_completion_tokens (ollama/ollama#7125); Foreman honours it.
    one = chat_request({"model": "m", "messages": HELLO, "max_completion_tokens": 5})
    both = chat_request(
        {"model": "m", "messages": HELLO, "max_tokens": 9, "max_completion_tokens": 5}
    )
    assert one["options"]["num_predict"] == both["options"]["num_predict"] == 5
    assert (
        completion_request({"model": "m", "max_completion_tokens": 5})["options"]["num_predict"]
        == 5
    )


@pytest.mark.parametrize(
    ("stop", "stops"),
    [("\n", ["\n"]), (["a", 1, "b"], ["a", "b"]), (5, None), ([], None)],
)
def test_a_chats_stop_keeps_its_strings(stop: object, stops: list[str] | None) -> None:
    options = chat_request({"model": "m", "messages": HELLO, "stop": stop})["options"]
    assert options.get("stop") == stops


@pytest.mark.parametrize(
    ("response_format", "native"),
    [
        ({"type": "json_object"}, "json"),
        ({"type": " JSON_Object "}, "json"),
        (
            {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}},
            {"type": "object"},
        ),
        ({"type": "json_schema"}, None),
        ({"type": "text"}, None),
    ],
)
def test_response_format_becomes_the_native_format(
    response_format: dict[str, Any], native: object
) -> None:
    body = {"model": "m", "messages": HELLO, "response_format": response_format}
    assert chat_request(body).get("format") == native


def test_an_image_part_becomes_a_message_with_the_image() -> None:
    # TestFromChatRequest_WithImage, TestChatMiddleware "chat handler with image content".
    content = [
        {"type": "text", "text": "Hello"},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{IMAGE}"}},
    ]
    native = chat_request({"model": "m", "messages": [{"role": "user", "content": content}]})
    assert native["messages"] == [
        {"role": "user", "content": "Hello"},
        {"role": "user", "content": "", "images": [IMAGE]},
    ]


@pytest.mark.parametrize(
    "prefix", ["data:image/png;base64,", "data:image/webp;base64,", "data:;base64,"]
)
def test_the_documented_vision_example_gives_the_url_as_a_string(prefix: str) -> None:
    content = [
        {"type": "text", "text": "What's in this image?"},
        {"type": "image_url", "image_url": prefix + IMAGE},
    ]
    native = chat_request({"model": "m", "messages": [{"role": "user", "content": content}]})
    assert native["messages"][1]["images"] == [IMAGE]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://example.com/cat.png", "image URLs are not currently supported"),
        ("http://example.com/cat.png", "image URLs are not currently supported"),
        (f"data:image/gif;base64,{IMAGE}", "invalid image input"),
        ("data:image/png;base64,not base64!", "invalid image input"),
        ("data:image/png;base64,iVBORw0K\u00e9", "invalid image input"),
    ],
)
def test_images_ollama_cannot_read_are_refused(url: str, message: str) -> None:
    content = [{"type": "image_url", "image_url": {"url": url}}]
    error = refused(
        chat_request, {"model": "m", "messages": [{"role": "user", "content": content}]}
    )
    assert error.message.startswith(message)
    assert error.param == "messages[0].content[0].image_url"


def test_audio_is_passed_on_as_an_image_is() -> None:
    audio = base64.b64encode(b"RIFF....WAVE").decode()
    part = {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}
    native = chat_request({"model": "m", "messages": [{"role": "user", "content": [part]}]})
    assert native["messages"] == [{"role": "user", "content": "", "images": [audio]}]
    part["input_audio"] = {"format": "wav"}
    error = refused(chat_request, {"model": "m", "messages": [{"role": "user", "content": [part]}]})
    assert error.message == "invalid input_audio format: missing data"


@pytest.mark.parametrize(
    ("assistant", "native"),
    [
        # "chat handler with tools"
        (
            {"role": "assistant", "tool_calls": [WEATHER_CALL]},
            {"role": "assistant", "content": "", "tool_calls": [NATIVE_WEATHER_CALL]},
        ),
        # "chat handler with tools and content"
        (
            {"role": "assistant", "content": "Let's see", "tool_calls": [WEATHER_CALL]},
            {"role": "assistant", "content": "Let's see", "tool_calls": [NATIVE_WEATHER_CALL]},
        ),
        # "chat handler with tools and empty content"
        (
            {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]},
            {"role": "assistant", "content": "", "tool_calls": [NATIVE_WEATHER_CALL]},
        ),
        # "chat handler with tools and thinking content"
        (
            {"role": "assistant", "reasoning": "Let's see", "tool_calls": [WEATHER_CALL]},
            {
                "role": "assistant",
                "content": "",
                "thinking": "Let's see",
                "tool_calls": [NATIVE_WEATHER_CALL],
            },
        ),
    ],
)
def test_an_assistants_tool_calls(assistant: dict[str, Any], native: dict[str, Any]) -> None:
    body = {"model": "test-model", "messages": [QUESTION, assistant]}
    assert chat_request(body) == {
        "model": "test-model",
        "messages": [NATIVE_QUESTION, native],
        "stream": False,
        "options": DEFAULTS,
    }


def test_a_tool_result_names_its_tool_by_the_calls_id_or_by_its_name() -> None:
    call = WEATHER_CALL | {"id": "id_abc"}
    by_id = {"role": "tool", "tool_call_id": "id_abc", "content": "20 degrees"}
    native = chat_request(
        {
            "model": "m",
            "messages": [QUESTION, {"role": "assistant", "tool_calls": [call]}, by_id],
        }
    )
    assert native["messages"][2] == {
        "role": "tool",
        "content": "20 degrees",
        "tool_name": "get_current_weather",
        "tool_call_id": "id_abc",
    }
    by_name = {"role": "tool", "name": "get_current_weather", "content": "20 degrees"}
    native = chat_request(
        {
            "model": "m",
            "messages": [QUESTION, {"role": "assistant", "tool_calls": [WEATHER_CALL]}, by_name],
        }
    )
    assert native["messages"][2] == {
        "role": "tool",
        "content": "20 degrees",
        "tool_name": "get_current_weather",
    }


def test_tools_are_passed_on() -> None:
    # "chat handler with streaming tools"
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather",
            "parameters": {
                "type": "object",
                "required": ["location"],
                "properties": {
                    "location": {"type": "string", "description": "The city and state"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
            },
        },
    }
    body = {
        "model": "test-model",
        "messages": [{"role": "user", "content": "What's the weather like in Paris?"}],
        "stream": True,
        "tools": [tool],
        "tool_choice": "auto",  # a documented gap: ignored, as Ollama ignores it
    }
    assert chat_request(body) == {
        "model": "test-model",
        "messages": [{"role": "user", "content": "What's the weather like in Paris?"}],
        "stream": True,
        "tools": [tool],
        "options": DEFAULTS,
    }


@pytest.mark.parametrize(
    ("effort", "think"),
    [
        (None, None),
        ("high", "high"),
        ("medium", "medium"),
        ("low", "low"),
        ("max", "max"),
        ("minimal", "low"),
        ("xhigh", "max"),
        ("ultra", "max"),
        ("none", False),
    ],
)
def test_reasoning_effort_becomes_think(effort: str | None, think: object) -> None:
    # TestFromChatRequest_ReasoningEffort
    body = {"model": "m", "messages": HELLO, "reasoning_effort": effort}
    assert chat_request(body).get("think") == think
    nested = {"model": "m", "messages": HELLO, "reasoning": {"effort": effort}}
    assert chat_request(nested).get("think") == think


def test_reasoning_wins_over_reasoning_effort_and_an_unknown_effort_is_refused() -> None:
    body = {
        "model": "m",
        "messages": HELLO,
        "reasoning": {"effort": "low"},
        "reasoning_effort": "high",
    }
    assert chat_request(body)["think"] == "low"
    error = refused(chat_request, {"model": "m", "messages": HELLO, "reasoning_effort": "extreme"})
    assert error.message.startswith('invalid reasoning value: "extreme" (must be "minimal"')
    assert error.param == "reasoning_effort"


@pytest.mark.parametrize("top", [0, 1, 10, 20])
def test_logprobs_are_passed_on(top: int) -> None:
    # TestFromChatRequest_WithLogprobs, _LogprobsDefault, _TopLogprobsRange
    native = chat_request({"model": "m", "messages": HELLO, "logprobs": True, "top_logprobs": top})
    assert native["logprobs"] is True
    assert native.get("top_logprobs", 0) == top
    assert "logprobs" not in chat_request({"model": "m", "messages": HELLO})


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        # "chat handler error forwarding"
        (
            {"model": "m", "messages": [{"role": "user", "content": 2}]},
            "invalid message content type: float64",
            "messages[0].content",
        ),
        (
            {"model": "m", "messages": [{"role": "user"}]},
            "invalid message content type: <nil>",
            "messages[0].content",
        ),
        ({"model": "m", "messages": []}, "[] is too short - 'messages'", "messages"),
        ({"model": "m"}, "[] is too short - 'messages'", "messages"),
        ({"messages": HELLO}, "model is required", "model"),
        ({"model": "", "messages": HELLO}, "model is required", "model"),
        ({"model": 5, "messages": HELLO}, "model must be a string, not a number", "model"),
        ({"model": "m", "messages": "hi"}, "messages must be an array, not a string", "messages"),
        (
            {"model": "m", "messages": ["hi"]},
            "messages[0] must be a JSON object, not a string",
            "messages[0]",
        ),
        (
            {"model": "m", "messages": [{"role": 1, "content": "hi"}]},
            "messages[0].role must be a string, not a number",
            "messages[0].role",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": ["hi"]}]},
            "invalid message format: a content part is an object",
            "messages[0].content[0]",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "video"}]}]},
            'invalid message format: a content part\'s type is "text", "image_url" or '
            '"input_audio"',
            "messages[0].content[0].type",
        ),
        (
            {"model": "m", "messages": HELLO, "max_tokens": 1.5},
            "max_tokens must be an integer, not a number",
            "max_tokens",
        ),
        (
            {"model": "m", "messages": HELLO, "seed": 2**64},
            "seed must be an integer within 64 bits",
            "seed",
        ),
        (
            {"model": "m", "messages": HELLO, "temperature": "hot"},
            "temperature must be a number, not a string",
            "temperature",
        ),
        (
            {"model": "m", "messages": HELLO, "stream": "yes"},
            "stream must be true or false, not a string",
            "stream",
        ),
        (
            {"model": "m", "messages": HELLO, "response_format": "json"},
            "response_format must be a JSON object, not a string",
            "response_format",
        ),
        (
            {
                "model": "m",
                "messages": HELLO,
                "response_format": {"type": "json_schema", "json_schema": []},
            },
            "response_format.json_schema must be a JSON object, not an array",
            "response_format.json_schema",
        ),
        (
            {"model": "m", "messages": HELLO, "tools": [{"function": {"name": 3}}]},
            "tools[0].function.name must be a string, not a number",
            "tools[0].function.name",
        ),
        (
            {
                "model": "m",
                "messages": HELLO,
                "tools": [{"function": {"name": "f", "parameters": {"required": ["a", 1]}}}],
            },
            "tools[0].function.parameters.required[1] must be a string, not a number",
            "tools[0].function.parameters.required[1]",
        ),
        (
            {"model": "m", "messages": HELLO, "stream_options": {"include_usage": 1}},
            "stream_options.include_usage must be true or false, not a number",
            "stream_options.include_usage",
        ),
        (
            {
                "model": "m",
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [WEATHER_CALL | {"function": {"name": "f", "arguments": {}}}],
                    }
                ],
            },
            "messages[0].tool_calls[0].function.arguments must be a string, not an object",
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            {
                "model": "m",
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            WEATHER_CALL | {"function": {"name": "f", "arguments": "[1]"}}
                        ],
                    }
                ],
            },
            "invalid tool call arguments: they must be a JSON object, as text",
            "messages[0].tool_calls[0].function.arguments",
        ),
    ],
)
def test_bad_chat_bodies_are_refused_naming_the_field(
    body: object, message: str, param: str | None
) -> None:
    error = refused(chat_request, body)
    assert (error.message, error.param) == (message, param)
    assert error.body()["error"]["type"] == "invalid_request_error"


def test_a_body_that_is_not_an_object_is_refused() -> None:
    for translate in (chat_request, completion_request, embedding_request):
        error = refused(translate, [])
        assert (error.message, error.param) == (
            "the request body must be a JSON object, not an array",
            None,
        )


# -- completion and embedding requests (TestCompletionsMiddleware, TestEmbeddingsMiddleware) ---


@pytest.mark.parametrize("stream", [False, True])
def test_a_completion_request(stream: bool) -> None:
    body = {
        "model": "test-model",
        "prompt": "Hello",
        "stream": stream,
        "stream_options": {"include_usage": True},
        "temperature": 0.8,
        "stop": ["\n", "stop"],
        "suffix": "suffix",
    }
    assert completion_request(body) == {
        "model": "test-model",
        "prompt": "Hello",
        "suffix": "suffix",
        "stream": stream,
        "options": {
            "frequency_penalty": 0.0,
            "presence_penalty": 0.0,
            "temperature": 0.8,
            "top_p": 1.0,
            "stop": ["\n", "stop"],
        },
    }


def test_a_completion_request_with_logprobs_and_seed() -> None:
    native = completion_request(
        {"model": "m", "prompt": "Hello", "logprobs": 5, "seed": 1, "max_tokens": 3, "top_p": 0.5}
    )
    assert native["logprobs"] is True and native["top_logprobs"] == 5
    assert native["options"] == {
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "temperature": 1.0,
        "top_p": 0.5,
        "seed": 1,
        "num_predict": 3,
    }


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        # "completions handler error forwarding"
        (
            {"model": "m", "prompt": "Hello", "temperature": None, "stop": [1, 2]},
            "invalid type for 'stop' field: float64",
            "stop",
        ),
        (
            {"model": "m", "prompt": ["a", "b"]},
            "prompt must be a string, not an array",
            "prompt",
        ),
        ({"prompt": "hi"}, "model is required", "model"),
    ],
)
def test_bad_completion_bodies_are_refused(body: object, message: str, param: str) -> None:
    error = refused(completion_request, body)
    assert (error.message, error.param) == (message, param)


@pytest.mark.parametrize(
    ("body", "native"),
    [
        ({"input": "Hello", "model": "m"}, {"model": "m", "input": "Hello"}),
        ({"input": ["Hello", "World"], "model": "m"}, {"model": "m", "input": ["Hello", "World"]}),
        ({"input": "", "model": "m"}, {"model": "m", "input": [""]}),
        (
            {"input": "Hi", "model": "m", "dimensions": 256, "encoding_format": "BASE64"},
            {"model": "m", "input": "Hi", "dimensions": 256},
        ),
    ],
)
def test_an_embedding_request(body: dict[str, Any], native: dict[str, Any]) -> None:
    assert embedding_request(body) == native


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "m"}, "invalid input"),  # "embed handler error forwarding"
        ({"model": "m", "input": []}, "invalid input"),
        ({"model": "m", "input": [1, 2, 3]}, "invalid input type"),  # token arrays
        ({"model": "m", "input": [[1, 2], [3]]}, "invalid input type"),
        ({"model": "m", "input": 5}, "invalid input type"),
    ],
)
def test_embedding_inputs_ollama_refuses(body: dict[str, Any], message: str) -> None:
    error = refused(embedding_request, body)
    assert error.message.startswith(message)
    assert error.param == "input"


@pytest.mark.parametrize(
    ("encoding_format", "valid"),
    [
        ("float", True),
        ("base64", True),
        ("FLOAT", True),
        ("BASE64", True),
        ("Float", True),
        ("Base64", True),
        ("json", False),
        ("hex", False),
        ("invalid_format", False),
    ],
)
def test_encoding_format_is_float_or_base64(encoding_format: str, valid: bool) -> None:
    # TestEmbeddingsMiddleware_InvalidEncodingFormat
    body = {"input": "test", "model": "m", "encoding_format": encoding_format}
    if valid:
        embedding_request(body)
    else:
        error = refused(embedding_request, body)
        assert error.message == (
            f"Invalid value for 'encoding_format' = {encoding_format}. "
            "Supported values: ['float', 'base64']."
        )


# -- answers (ToChatCompletion, ToCompletion, ToEmbeddingList, ToListCompletion, ToModel) -----


def test_a_chat_answer_as_a_chat_completion() -> None:
    answer = {
        "model": "test-model",
        "created_at": "2009-02-13T23:31:30Z",
        "message": {"role": "assistant", "content": "Hello there"},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 5,
        "eval_count": 2,
    }
    assert chat_completion(answer, id="chatcmpl-1", created=7) == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1234567890,
        "model": "test-model",
        "system_fingerprint": "fp_ollama",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }
    # Without created_at, the time given.
    del answer["created_at"]
    assert chat_completion(answer, id="chatcmpl-1", created=7)["created"] == 7


def test_a_chat_answers_logprobs_and_thinking() -> None:
    logprobs = [
        {
            "token": "Hello",
            "logprob": -0.5,
            "top_logprobs": [{"token": "Hello", "logprob": -0.5}, {"token": "Hi", "logprob": -1.2}],
        }
    ]
    answer = {
        "model": "m",
        "message": {"role": "assistant", "content": "Hello", "thinking": "hmm"},
        "logprobs": logprobs,
        "done": True,
    }
    [choice] = chat_completion(answer, id="x", created=0)["choices"]
    assert choice["logprobs"] == {"content": logprobs}
    assert choice["message"] == {"role": "assistant", "content": "Hello", "reasoning": "hmm"}
    assert choice["finish_reason"] is None  # no done_reason: null, as Ollama shows it


@pytest.mark.parametrize(
    ("done_reason", "finish_reason"),
    [("length", "length"), ("stop", "tool_calls"), ("unload", "unload")],
)
def test_tool_calls_finish_a_completion_only_when_it_stopped(
    done_reason: str, finish_reason: str
) -> None:
    # TestToChatCompletion_FinishReasonPrecedence
    answer = {
        "model": "test-model",
        "message": {"role": "assistant", "tool_calls": [tool_call(location="Seattle")]},
        "done": True,
        "done_reason": done_reason,
    }
    [choice] = chat_completion(answer, id="x", created=0)["choices"]
    assert choice["finish_reason"] == finish_reason


def test_tool_calls_keep_their_ids_and_indexes() -> None:
    # TestToToolCallsPreservesIDs
    calls = [
        {
            "id": "call_abc123",
            "function": {"index": 2, "name": "get_weather", "arguments": {"location": "Seattle"}},
        },
        {
            "id": "call_def456",
            "function": {"index": 7, "name": "get_time", "arguments": {"timezone": "UTC"}},
        },
    ]
    answer = {"message": {"role": "assistant", "content": "", "tool_calls": calls}, "done": True}
    message = chat_completion(answer, id="x", created=0)["choices"][0]["message"]
    assert message["tool_calls"] == [
        {
            "id": "call_abc123",
            "index": 2,
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location":"Seattle"}'},
        },
        {
            "id": "call_def456",
            "index": 7,
            "type": "function",
            "function": {"name": "get_time", "arguments": '{"timezone":"UTC"}'},
        },
    ]
    assert calls[0]["function"]["arguments"] == {"location": "Seattle"}  # not mutated


def test_a_generate_answer_as_a_text_completion() -> None:
    answer = {
        "model": "m",
        "created_at": "2023-08-04T19:22:45.499127Z",
        "response": "Hi there",
        "done": True,
        "done_reason": "length",
        "prompt_eval_count": 10,
        "eval_count": 20,
    }
    assert completion(answer, id="cmpl-1", created=0) == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1691176965,
        "model": "m",
        "system_fingerprint": "fp_ollama",
        "choices": [{"text": "Hi there", "index": 0, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
    }


@pytest.mark.parametrize(
    ("embeddings", "encoding_format", "expected"),
    [
        ([[0.1, -0.2, 0.3]], "float", [[0.1, -0.2, 0.3]]),
        ([[0.1, -0.2, 0.3]], "base64", ["zczMPc3MTL6amZk+"]),
        ([[0.1, -0.2, 0.3]], None, [[0.1, -0.2, 0.3]]),
        ([[0.1, -0.2, 0.3]], "invalid", [[0.1, -0.2, 0.3]]),
        (
            [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]],
            "base64",
            ["zczMPc3MTD4=", "mpmZPs3MzD4=", "AAAAP5qZGT8="],
        ),
    ],
)
def test_embeddings_as_an_embedding_list(
    embeddings: list[list[float]], encoding_format: str | None, expected: list[object]
) -> None:
    # TestToEmbeddingList
    answer = {"model": "native", "embeddings": embeddings, "prompt_eval_count": 5}
    assert embedding_list(answer, model="test-model", encoding_format=encoding_format) == {
        "object": "list",
        "data": [
            {"object": "embedding", "embedding": vector, "index": index}
            for index, vector in enumerate(expected)
        ],
        "model": "test-model",
        "usage": {"prompt_tokens": 5, "total_tokens": 5},
    }


def test_base64_embeddings_are_float32_little_endian() -> None:
    # TestFloatsToBase64
    floats = [0.1, -0.2, 0.3, -0.4, 0.5, 1e39]
    packed = embedding_list({"embeddings": [floats]}, model="m", encoding_format="base64")
    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert struct.unpack("<6f", raw) == pytest.approx([*floats[:5], float("inf")], rel=1e-6)


def test_no_embeddings_show_as_ollama_shows_them() -> None:
    # "empty embeddings": Go's nil slices marshal as null.
    assert embedding_list({"model": "m", "embeddings": []}, model="m")["data"] is None
    assert embedding_list({}, model="m") == {
        "object": "",
        "data": None,
        "model": "",
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }


def test_the_model_list_uses_each_models_identity() -> None:
    # TestToListCompletionUsesModelIdentity, TestListMiddleware
    tags = {
        "models": [
            {
                "name": "legacy-name:latest",
                "model": "namespace/exposed-model:latest",
                "modified_at": "2009-02-13T23:31:30Z",
            },
            {"name": "fallback-name:latest", "modified_at": "2009-02-13T23:31:31+00:00"},
        ]
    }
    assert model_list(tags) == {
        "object": "list",
        "data": [
            {
                "id": "namespace/exposed-model:latest",
                "object": "model",
                "created": 1234567890,
                "owned_by": "namespace",
            },
            {
                "id": "fallback-name:latest",
                "object": "model",
                "created": 1234567891,
                "owned_by": "library",
            },
        ],
    }
    assert model_list({}) == {"object": "list", "data": None}  # "list handler empty output"


@pytest.mark.parametrize(
    ("name", "owner"),
    [
        ("test-model", "library"),
        ("llama3:8b", "library"),
        ("jmorgan/llama3:8b", "jmorgan"),
        ("registry.example.com/team/model:tag", "team"),
        ("host.example.com:5000/team/model", "team"),
    ],
)
def test_a_retrieved_model_is_owned_by_its_namespace(name: str, owner: str) -> None:
    # TestRetrieveMiddleware
    shown = model_object(name, {"modified_at": "2023-06-16T17:03:22Z", "details": {}})
    assert shown == {"id": name, "object": "model", "created": 1686935002, "owned_by": owner}


# -- chat streams (ToStreamChunks, FinishChunk, ChatWriter) ------------------------------------


def test_thinking_and_content_in_one_line_are_split_in_two_chunks() -> None:
    # TestChatWriter_StreamMixedThinkingAndContentEmitsSplitChunks
    line = {
        "model": "test-model",
        "message": {"thinking": "reasoning", "content": "final answer"},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 3,
        "eval_count": 2,
    }
    reasoning, content, finish, usage, done = frames(chat_stream(include_usage=True), line)
    assert reasoning["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "reasoning": "reasoning"},
            "finish_reason": None,
        }
    ]
    assert content["choices"] == [
        {"index": 0, "delta": {"content": "final answer"}, "finish_reason": None}
    ]
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert done == "[DONE]"
    for chunk in (reasoning, content, finish, usage):
        assert chunk["id"] == "chatcmpl-test"
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["system_fingerprint"] == "fp_ollama"
        assert chunk["model"] == "test-model"
        assert chunk["created"] == 1_700_000_000


def test_thinking_and_tool_calls_before_the_end_are_split_without_finishing() -> None:
    # TestChatWriter_StreamMixedThinkingAndToolCallsWithoutDoneEmitsChunksOnly
    stream = chat_stream(include_usage=True)
    line = {
        "model": "m",
        "message": {
            "thinking": "reasoning",
            "tool_calls": [tool_call("call_234", location="Portland")],
        },
        "done": False,
    }
    reasoning, calls = frames(stream, line)
    assert reasoning["choices"][0]["delta"] == {"role": "assistant", "reasoning": "reasoning"}
    assert calls["choices"][0]["delta"] == {
        "content": "",
        "tool_calls": [
            {
                "id": "call_234",
                "index": 0,
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"location":"Portland"}'},
            }
        ],
    }
    assert calls["choices"][0]["finish_reason"] is None
    assert not stream.done


@pytest.mark.parametrize(
    "message",
    [
        {"thinking": "pondering"},
        {"content": "hello"},
        {"tool_calls": [tool_call("call_456", name="get_time", timezone="UTC")]},
    ],
)
def test_a_line_with_one_kind_of_output_is_one_chunk(message: dict[str, Any]) -> None:
    # TestToStreamChunks_SingleChunkForNonMixedResponses
    assert len(frames(chat_stream(), {"model": "m", "message": message})) == 1


def test_the_role_comes_on_the_first_chunk_only_and_the_end_has_an_empty_delta() -> None:
    # TestChatWriter_StreamRoleOnlyOnFirstChunk
    lines = [
        {"model": "m", "message": {"content": "Hello"}, "done": False},
        {"model": "m", "message": {"content": " world"}, "done": False},
        {"model": "m", "message": {"content": "!"}, "done": True, "done_reason": "stop"},
    ]
    first, second, third, finish, done = frames(chat_stream(), *lines)
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "Hello"}
    assert second["choices"][0]["delta"] == {"content": " world"}
    assert third["choices"][0]["delta"] == {"content": "!"}
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert done == "[DONE]"


def test_every_chunk_shows_the_first_lines_time() -> None:
    # TestChatWriter_StreamSharesOneTimestamp
    lines = [
        {"model": "m", "created_at": "2023-11-14T22:13:20Z", "message": {"content": "Hello"}},
        {"model": "m", "created_at": "2023-11-14T22:13:30Z", "message": {"content": " world"}},
        {"model": "m", "created_at": "2023-11-14T22:13:40Z", "done": True, "done_reason": "stop"},
    ]
    chunks = frames(ChatStream(id="c", created=5, include_usage=False), *lines)
    assert len(chunks) == 4  # two chunks, the finish, [DONE]
    assert {chunk["created"] for chunk in chunks[:3]} == {1_700_000_000}


@pytest.mark.parametrize(
    ("first", "done_reason", "finish_reason"),
    [
        ({"content": "partial"}, "stop", "stop"),
        ({"content": "partial"}, "length", "length"),  # a max_tokens truncation
        ({"tool_calls": [tool_call(city="Paris")]}, "stop", "tool_calls"),
        ({"tool_calls": [tool_call(city="Paris")]}, "length", "length"),
        ({"content": "partial"}, "", "stop"),  # no reason: stop
        ({"content": "partial"}, "unload", "unload"),  # passed through
        ({"tool_calls": [tool_call(city="Paris")]}, "unload", "unload"),  # not relabelled
    ],
)
def test_the_finish_reason(first: dict[str, Any], done_reason: str, finish_reason: str) -> None:
    # TestFinishChunk, TestChatWriter_StreamFinishReasonLength, _StreamToolCallsFinishReason
    lines = [
        {"model": "m", "message": first, "done": False},
        {"model": "m", "message": {"content": ""}, "done": True, "done_reason": done_reason},
    ]
    *_, finish, done = frames(chat_stream(), *lines)
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": finish_reason}]
    assert done == "[DONE]"


def test_the_metrics_trailer_sends_no_empty_chunk() -> None:
    # TestChatWriter_StreamMetricsTrailerSkipsEmptyContentChunk
    lines = [
        {"model": "m", "message": {"content": "Hi"}},
        {
            "model": "m",
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 3,
            "eval_count": 1,
        },
    ]
    content, finish, usage, done = frames(chat_stream(include_usage=True), *lines)
    assert content["choices"][0]["delta"] == {"role": "assistant", "content": "Hi"}
    assert finish["choices"][0]["delta"] == {}
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    assert done == "[DONE]"


def test_a_last_line_with_logprobs_is_not_a_trailer() -> None:
    # TestChatWriter_StreamDoneWithLogprobsNotTreatedAsTrailer
    logprobs = [{"token": "Hi", "logprob": -0.1}]
    lines = [
        {"model": "m", "message": {"content": "Hi"}},
        {"model": "m", "done": True, "done_reason": "stop", "logprobs": logprobs},
    ]
    _, last, finish, done = frames(chat_stream(), *lines)
    assert last["choices"][0]["logprobs"] == {"content": logprobs}
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert done == "[DONE]"


def test_an_empty_completion_still_opens_with_the_role() -> None:
    # TestChatWriter_StreamEmptyCompletionStillEmitsRoleChunk, _EmptyContentChunkJSON
    role, finish, done = frames(chat_stream(), {"model": "m", "done": True, "done_reason": "stop"})
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert finish["choices"][0]["delta"] == {}
    assert done == "[DONE]"


def test_logprobs_go_on_the_first_of_split_chunks() -> None:
    # TestToStreamChunks_SplitSendsLogprobsOnlyOnFirstChunk
    line = {
        "model": "m",
        "message": {"thinking": "thinking", "content": "content"},
        "logprobs": [{"token": "tok", "logprob": -0.25}],
    }
    first, second = frames(chat_stream(), line)
    assert first["choices"][0]["logprobs"] == {"content": [{"token": "tok", "logprob": -0.25}]}
    assert "logprobs" not in second["choices"][0]


def test_an_error_line_mid_stream_is_an_openai_error_event() -> None:
    stream = chat_stream()
    lines = [{"model": "m", "message": {"content": "Hi"}}, {"error": "runner died"}]
    _, error = frames(stream, *lines)
    assert error == {
        "error": {"message": "runner died", "type": "api_error", "param": None, "code": None}
    }
    assert not stream.done  # no [DONE]: the stream broke off


# -- completion streams (CompleteWriter) -------------------------------------------------------


def test_a_completion_stream_with_usage() -> None:
    stream = CompletionStream(id="cmpl-1", created=1_700_000_000, include_usage=True)
    lines = [
        {"model": "m", "response": "Hi", "done": False},
        {
            "model": "m",
            "response": "",
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 2,
            "eval_count": 1,
        },
    ]
    first, last, usage, done = frames(stream, *lines)
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert first == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1_700_000_000,
        "choices": [{"text": "Hi", "index": 0, "finish_reason": None}],
        "model": "m",
        "system_fingerprint": "fp_ollama",
        "usage": zero,  # as Ollama: zero usage on every chunk when usage is asked for
    }
    assert last["choices"] == [{"text": "", "index": 0, "finish_reason": "stop"}]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
    assert done == "[DONE]"
    assert stream.done


def test_a_completion_stream_without_usage() -> None:
    stream = CompletionStream(id="cmpl-1", created=0, include_usage=False)
    lines = [
        {"model": "m", "response": "Hi"},
        {"model": "m", "done": True, "done_reason": "length"},
    ]
    first, last, done = frames(stream, *lines)
    assert "usage" not in first and "usage" not in last
    assert last["choices"][0]["finish_reason"] == "length"
    assert done == "[DONE]"


def test_sse_framing_and_ids() -> None:
    assert sse("[DONE]") == b"data: [DONE]\n\n"
    assert sse({"a": "é"}) == b'data: {"a":"\\u00e9"}\n\n'
    assert new_id("chatcmpl").removeprefix("chatcmpl-").isdigit()
    assert 0 <= int(new_id("cmpl").removeprefix("cmpl-")) < 999


# -- hostile bodies -----------------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
"""Any JSON value."""
NUMBER = st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
ARGUMENTS = st.sampled_from(["{}", '{"a": [1, {"b": null}]}', "[", "[1]", "NaN", "1e999", ""])
IMAGE_URL = st.sampled_from(
    [
        f"data:image/png;base64,{IMAGE}",
        f"data:;base64,{IMAGE}",
        "data:image/gif;base64,AAAA",
        "data:image/png;base64,A\u00e9==",
        "https://example.com/x.png",
    ]
)


def either(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value of the right shape (nine times in ten), else any JSON at all."""
    return st.integers(0, 9).flatmap(lambda draw: JSON if draw == 0 else valid)


PART = st.fixed_dictionaries(
    {"type": either(st.sampled_from(["text", "image_url", "input_audio", "video"]))},
    optional={
        "text": either(st.text()),
        "image_url": either(IMAGE_URL | st.fixed_dictionaries({"url": either(IMAGE_URL)})),
        "input_audio": either(st.fixed_dictionaries({}, optional={"data": either(IMAGE_URL)})),
    },
)
CALL = st.fixed_dictionaries(
    {},
    optional={
        "id": either(st.sampled_from(["a", "b"])),
        "type": either(st.just("function")),
        "index": either(st.integers()),
        "function": either(
            st.fixed_dictionaries(
                {}, optional={"name": either(st.text()), "arguments": either(ARGUMENTS)}
            )
        ),
    },
)
MESSAGE = st.fixed_dictionaries(
    {"role": either(st.sampled_from(["user", "assistant", "tool", "TOOL", "system"]))},
    optional={
        "content": either(st.text() | st.lists(either(PART), max_size=3)),
        "reasoning": either(st.text()),
        "tool_calls": either(st.lists(CALL, max_size=2)),
        "name": either(st.text()),
        "tool_call_id": either(st.sampled_from(["a", "b"])),
    },
)
EFFORT = st.sampled_from(["none", "minimal", "low", "medium", "high", "max", "xhigh", "ultra", "x"])
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "max_tokens": st.integers(),
    "max_completion_tokens": st.integers(),
    "seed": st.integers(),
    "stop": st.text() | st.lists(either(st.text()), max_size=3),
    "temperature": NUMBER,
    "frequency_penalty": NUMBER,
    "presence_penalty": NUMBER,
    "top_p": NUMBER,
    "response_format": st.fixed_dictionaries(
        {"type": st.sampled_from(["json_object", "json_schema", "text", " JSON_SCHEMA"])},
        optional={"json_schema": either(st.fixed_dictionaries({}, optional={"schema": JSON}))},
    ),
    "tools": st.lists(
        st.fixed_dictionaries(
            {"type": either(st.just("function"))},
            optional={
                "function": either(
                    st.fixed_dictionaries(
                        {"name": either(st.text())},
                        optional={
                            "description": either(st.text()),
                            "parameters": either(st.dictionaries(st.text(), JSON)),
                        },
                    )
                )
            },
        ),
        max_size=2,
    ),
    "reasoning": st.fixed_dictionaries({}, optional={"effort": either(EFFORT)}),
    "reasoning_effort": EFFORT,
    "logprobs": st.booleans() | st.integers(),
    "top_logprobs": st.integers(),
    "prompt": st.text(),
    "suffix": st.text(),
    "input": st.text() | st.lists(st.text(), max_size=3) | st.lists(st.integers(), max_size=3),
    "dimensions": st.integers(),
    "encoding_format": st.sampled_from(["float", "base64", "BASE64", "hex", ""]),
}
BODY = st.fixed_dictionaries(
    {
        "model": either(st.just("m")),
        "messages": either(st.lists(either(MESSAGE), min_size=1, max_size=3)),
    },
    optional={field: either(valid) for field, valid in FIELDS.items()},
)
"""A request body of mostly the right shape, to reach past the first check."""


@settings(max_examples=500, deadline=None)
@given(body=JSON | BODY)
def test_no_body_makes_the_translation_raise_anything_but_a_400(body: object) -> None:
    for translate in (chat_request, completion_request, embedding_request):
        try:
            native = translate(body)
        except OpenAIError as error:
            assert error.status == 400
            json.dumps(error.body(), ensure_ascii=False).encode()
        else:
            assert native["model"]
            json.dumps(native)


@settings(max_examples=200, deadline=None)
@given(
    answer=st.dictionaries(
        st.sampled_from(
            [
                "model",
                "message",
                "response",
                "done",
                "done_reason",
                "created_at",
                "prompt_eval_count",
                "eval_count",
                "logprobs",
                "embeddings",
                "models",
                "modified_at",
                "error",
            ]
        ),
        JSON,
        max_size=6,
    )
)
def test_no_native_answer_makes_the_translation_raise(answer: dict[str, Any]) -> None:
    for shown in (
        chat_completion(answer, id="x", created=0),
        completion(answer, id="x", created=0),
        embedding_list(answer, model="m", encoding_format="base64"),
        model_list(answer),
        model_object("m", answer),
        *ChatStream(id="x", created=0, include_usage=True).chunks(answer),
        *CompletionStream(id="x", created=0, include_usage=True).chunks(answer),
    ):
        json.dumps(shown, ensure_ascii=False).encode()
