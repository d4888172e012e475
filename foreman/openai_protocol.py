"""OpenAI's API (chat completions, completions, embeddings, models) translated to Ollama's
native API and back, as Ollama's own ``/v1`` does it (ADR-0036).

A port of Ollama's ``openai/openai.go`` and ``middleware/openai.go``: a request body
becomes the body of ``/api/chat``, ``/api/generate`` or ``/api/embed``, and the native
answer (one object, or one NDJSON line at a time) becomes OpenAI's. Pure functions
over decoded JSON; the callers (Foreman's ``/v1`` routes, its Batch API, the
simulator) do the I/O.

A body Ollama's decoder would refuse (a field of the wrong type) is refused here with
an :class:`OpenAIError` naming the field in ``param``. A field Ollama ignores
(``tool_choice``, ``logit_bias``, ``user``, ``n``, ...) is ignored here too: Foreman
passes Ollama's gaps on rather than inventing what Ollama does not do. One addition:
``max_completion_tokens``, which Ollama ignores (ollama/ollama#7125), sets
``num_predict`` as ``max_tokens`` does and wins over it (as in ollama/ollama#14464),
so a client that uses OpenAI's current name cannot hold the GPU without a bound.
"""

from __future__ import annotations

import base64
import json
import math
import random
import struct
from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from foreman.events.values import readable
from foreman.ollama_protocol import OllamaError, decode_json

__all__ = [
    "SYSTEM_FINGERPRINT",
    "ChatStream",
    "CompletionStream",
    "OpenAIError",
    "chat_completion",
    "chat_request",
    "completion",
    "completion_request",
    "decode_body",
    "embedding_list",
    "embedding_request",
    "from_native_error",
    "include_usage",
    "model_list",
    "model_object",
    "native_error_message",
    "new_id",
    "sse",
]

SYSTEM_FINGERPRINT: Final = "fp_ollama"
NATIVE_ERROR_DEFAULT: Final = "something went wrong, please see the ollama server logs for details"
"""Ollama's message for an error answer that says nothing (``api.StatusError``)."""
GO_ZERO_TIME: Final = -62_135_596_800
"""``time.Time{}.Unix()``: the ``created`` Ollama shows for a model without ``modified_at``."""
MISSING_PART: Final = "!MISSING!"
"""What Ollama's name parser puts for a part a separator promised but left empty."""
IMAGE_TYPES: Final = ("jpeg", "jpg", "png", "webp")
THINK_LEVELS: Final[Mapping[str, bool | str]] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}
"""``reasoning_effort`` to native ``think``: efforts past Ollama's ends are clamped."""
_INT64 = range(-(2**63), 2**63)


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: ``status`` and ``{"error": {...}}``."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        message = readable(message)  # it may quote the client's text
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    @property
    def type(self) -> str:
        """As Ollama's ``openai.NewError`` names it: 400 and 404 have names, the rest
        are ``api_error``; and a bad key (401, which Ollama never answers) as OpenAI."""
        names = {400: "invalid_request_error", 401: "invalid_request_error", 404: "not_found_error"}
        return names.get(self.status, "api_error")

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def from_native_error(status: int, message: str) -> OpenAIError:
    """A native error answer (``status``, ``{"error": message}``) as Ollama's middleware
    passes it on: the same status and message, in OpenAI's shape."""
    return OpenAIError(status, message)


def native_error_message(body: bytes) -> str:
    """The message of a native error answer: its ``error``, or the body itself when it
    is not Ollama's JSON, as Ollama's middleware reads it."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return body.decode(errors="replace")
    if not isinstance(value, dict) or not isinstance(value.get("error", ""), str):
        return body.decode(errors="replace")
    return str(value.get("error") or NATIVE_ERROR_DEFAULT)


def decode_body(raw: bytes) -> object:
    """The JSON value of a request body, or a 400 saying why it is not JSON."""
    try:
        return decode_json(raw)
    except OllamaError as error:
        raise OpenAIError(error.status, error.message) from None


def new_id(prefix: str) -> str:
    """An id as Ollama makes one: ``chatcmpl-123``, ``cmpl-7`` (a random number below 999)."""
    return f"{prefix}-{random.randrange(999)}"


def sse(data: Mapping[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line (``sse("[DONE]")`` ends
    a stream)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def include_usage(body: object) -> bool:
    """Whether a request body asked for the usage chunk (``stream_options.include_usage``)."""
    options = body.get("stream_options") if isinstance(body, dict) else None
    return isinstance(options, dict) and options.get("include_usage") is True


# -- reading a request, as Go's decoder reads it ---------------------------------------------


def _kind(value: object) -> str:
    """A JSON value's kind, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _go_type(value: object) -> str:
    """The name Go's ``%T`` gives a decoded JSON value, which some of Ollama's messages show."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "float64"
    if isinstance(value, str):
        return "string"
    return "[]interface {}" if isinstance(value, list) else "map[string]interface {}"


class _Object:
    """A JSON object of the request, read field by field as Go's decoder reads a struct:
    a missing field and ``null`` are the zero value, a value of another type is refused."""

    def __init__(self, value: object, where: str = "") -> None:
        if not isinstance(value, dict):
            what = where or "the request body"
            raise OpenAIError(
                400, f"{what} must be a JSON object, not {_kind(value)}", param=where or None
            )
        self.fields: dict[str, object] = value
        self.where = where

    def at(self, name: str) -> str:
        """The ``param`` naming one of its fields, e.g. ``messages[0].content``."""
        return f"{self.where}.{name}" if self.where else name

    def refuse(self, name: str, expected: str) -> OpenAIError:
        where = self.at(name)
        found = _kind(self.fields.get(name))
        return OpenAIError(400, f"{where} must be {expected}, not {found}", param=where)

    def string(self, name: str) -> str:
        value = self.fields.get(name)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.refuse(name, "a string")
        return value

    def boolean(self, name: str) -> bool:
        value = self.fields.get(name)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self.refuse(name, "true or false")
        return value

    def integer(self, name: str) -> int | None:
        value = self.fields.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.refuse(name, "an integer")
        if value not in _INT64:
            raise OpenAIError(
                400, f"{self.at(name)} must be an integer within 64 bits", param=self.at(name)
            )
        return value

    def number(self, name: str) -> float | None:
        value = self.fields.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.refuse(name, "a number")
        try:
            number = float(value)
        except OverflowError:  # an integer of hundreds of digits
            number = math.inf
        if not math.isfinite(number):
            raise OpenAIError(400, f"{self.at(name)} is out of range", param=self.at(name))
        return number

    def array(self, name: str) -> list[object]:
        value = self.fields.get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.refuse(name, "an array")
        return value

    def require_strings(self, name: str) -> None:
        """Refuse the field unless it is missing or an array of strings."""
        for index, item in enumerate(self.array(name)):
            if not isinstance(item, str):
                where = f"{self.at(name)}[{index}]"
                raise OpenAIError(400, f"{where} must be a string, not {_kind(item)}", param=where)

    def object(self, name: str) -> _Object | None:
        value = self.fields.get(name)
        return None if value is None else _Object(value, self.at(name))

    def objects(self, name: str) -> list[_Object]:
        return [
            _Object(item, f"{self.at(name)}[{index}]")
            for index, item in enumerate(self.array(name))
        ]


def _model(request: _Object) -> str:
    model = request.string("model")
    if not model:
        raise OpenAIError(400, "model is required", param="model")
    return model


def _stops(request: _Object, *, strict: bool) -> list[str]:
    """``stop`` as a list: a string is one stop; in a list, chat skips what is not a string
    and completions refuse it (Ollama's two translations differ)."""
    stop = request.fields.get("stop")
    if isinstance(stop, str):
        return [stop]
    if not isinstance(stop, list):
        return []  # Ollama ignores a stop of any other type
    if strict:
        for item in stop:
            if not isinstance(item, str):
                raise OpenAIError(
                    400, f"invalid type for 'stop' field: {_go_type(item)}", param="stop"
                )
    return [item for item in stop if isinstance(item, str)]


def _max_tokens(request: _Object) -> int | None:
    max_tokens = request.integer("max_tokens")
    max_completion_tokens = request.integer("max_completion_tokens")
    return max_tokens if max_completion_tokens is None else max_completion_tokens


def _stream_options(request: _Object) -> None:
    options = request.object("stream_options")
    if options is not None:
        options.boolean("include_usage")


# -- chat -------------------------------------------------------------------------------------


def chat_request(body: object) -> dict[str, Any]:
    """An OpenAI chat completions body as the native ``/api/chat`` body (Ollama's
    ``FromChatRequest``)."""
    request = _Object(body)
    model = _model(request)
    messages = request.objects("messages")
    if not messages:
        raise OpenAIError(400, "[] is too short - 'messages'", param="messages")
    stream = request.boolean("stream")
    _stream_options(request)
    native: dict[str, Any] = {
        "model": model,
        "messages": _native_messages(messages),
        "stream": stream,
    }
    response_format = _format(request)
    if response_format is not None:
        native["format"] = response_format
    tools = _tools(request)
    if tools:
        native["tools"] = tools
    native["options"] = _chat_options(request)
    think = _think(request)
    if think is not None:
        native["think"] = think
    if request.boolean("logprobs"):
        native["logprobs"] = True
    top_logprobs = request.integer("top_logprobs")
    if top_logprobs:
        native["top_logprobs"] = top_logprobs
    return native


def _sampling(request: _Object, *, strict_stops: bool) -> dict[str, Any]:
    """The native options chat and completions set alike: ``stop``, ``num_predict``,
    ``temperature`` (1.0 unless given) and ``seed``."""
    options: dict[str, Any] = {}
    stops = _stops(request, strict=strict_stops)
    if stops:
        options["stop"] = stops
    max_tokens = _max_tokens(request)
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    temperature = request.number("temperature")
    options["temperature"] = 1.0 if temperature is None else temperature
    seed = request.integer("seed")
    if seed is not None:
        options["seed"] = seed
    return options


def _chat_options(request: _Object) -> dict[str, Any]:
    options = _sampling(request, strict_stops=False)
    for penalty in ("frequency_penalty", "presence_penalty"):
        value = request.number(penalty)
        if value is not None:
            options[penalty] = value
    top_p = request.number("top_p")
    options["top_p"] = 1.0 if top_p is None else top_p
    return options


def _format(request: _Object) -> object:
    """``response_format`` as native ``format``: ``json_object`` is ``"json"``, ``json_schema``
    its schema; any other type (``text``) asks for nothing."""
    response_format = request.object("response_format")
    if response_format is None:
        return None
    kind = response_format.string("type").strip().lower()
    json_schema = response_format.object("json_schema")
    if kind == "json_object":
        return "json"
    if kind == "json_schema" and json_schema is not None:
        return json_schema.fields.get("schema")
    return None


def _tools(request: _Object) -> list[object]:
    """The tools, passed on as given once their shape is one Ollama reads."""
    tools = request.objects("tools")
    for tool in tools:
        tool.string("type")
        function = tool.object("function")
        if function is not None:
            function.string("name")
            function.string("description")
            parameters = function.object("parameters")
            if parameters is not None:
                parameters.string("type")
                parameters.require_strings("required")
                parameters.object("properties")
    return [tool.fields for tool in tools]


def _think(request: _Object) -> bool | str | None:
    reasoning = request.object("reasoning")
    reasoning_effort = request.string("reasoning_effort")
    effort = reasoning.string("effort") if reasoning is not None else reasoning_effort
    if not effort:
        return None  # the model's default
    if effort not in THINK_LEVELS:
        where = "reasoning.effort" if reasoning is not None else "reasoning_effort"
        raise OpenAIError(
            400,
            f"invalid reasoning value: {json.dumps(effort)} (must be "
            '"minimal", "low", "medium", "high", "xhigh", "ultra", "max", or "none")',
            param=where,
        )
    return THINK_LEVELS[effort]


class _ToolCall:
    def __init__(self, call: _Object) -> None:
        self.id = call.string("id")
        call.integer("index")
        call.string("type")
        function = call.object("function")
        self.name = function.string("name") if function is not None else ""
        self.arguments = function.string("arguments") if function is not None else ""
        self.where = function.at("arguments") if function is not None else call.at("function")

    def native(self) -> dict[str, Any]:
        """As ``FromCompletionToolCall`` makes it: the arguments' JSON text must be an object."""
        try:
            arguments = json.loads(self.arguments, parse_constant=_not_json)
        except (ValueError, RecursionError):
            arguments = None
        if not isinstance(arguments, dict):
            raise OpenAIError(
                400,
                "invalid tool call arguments: they must be a JSON object, as text",
                param=self.where,
            )
        call: dict[str, Any] = {"id": self.id} if self.id else {}
        call["function"] = {"index": 0, "name": self.name, "arguments": arguments}
        return call


def _not_json(constant: str) -> object:
    raise ValueError(f"{constant} is not JSON")


class _Message:
    def __init__(self, message: _Object) -> None:
        self.where = message.where
        self.role = message.string("role")
        self.content = message.fields.get("content")
        self.reasoning = message.string("reasoning")
        self.name = message.string("name")
        self.tool_call_id = message.string("tool_call_id")
        self.tool_calls = (
            None
            if message.fields.get("tool_calls") is None
            else [_ToolCall(call) for call in message.objects("tool_calls")]
        )

    def native_tool_calls(self) -> list[dict[str, Any]]:
        return [call.native() for call in self.tool_calls or []]


def _native_message(
    role: str,
    content: str = "",
    *,
    thinking: str = "",
    images: list[str] | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    tool_name: str = "",
    tool_call_id: str = "",
) -> dict[str, Any]:
    """A native message; its optional fields only when set, as Go's ``omitempty`` writes it."""
    message: dict[str, Any] = {"role": role, "content": content}
    optional = (
        ("thinking", thinking),
        ("images", images),
        ("tool_calls", tool_calls),
        ("tool_name", tool_name),
        ("tool_call_id", tool_call_id),
    )
    message.update((key, value) for key, value in optional if value)
    return message


def _native_messages(objects: list[_Object]) -> list[dict[str, Any]]:
    messages = [_Message(item) for item in objects]
    native: list[dict[str, Any]] = []
    for message in messages:
        tool_name = ""
        if message.role.lower() == "tool":
            tool_name = message.name or _tool_name(messages, message.tool_call_id)
        content = message.content
        if isinstance(content, str):
            native.append(
                _native_message(
                    message.role,
                    content,
                    thinking=message.reasoning,
                    tool_calls=message.native_tool_calls(),
                    tool_name=tool_name,
                    tool_call_id=message.tool_call_id,
                )
            )
        elif isinstance(content, list):
            # Each part becomes a message of its own; tool calls go on the last one.
            native.extend(
                _content_part(message.role, part, f"{message.where}.content[{index}]")
                for index, part in enumerate(content)
            )
            if native and message.tool_calls:
                last = native[-1]
                for key, value in (
                    ("tool_calls", message.native_tool_calls()),
                    ("tool_name", tool_name),
                    ("tool_call_id", message.tool_call_id),
                    ("thinking", message.reasoning),
                ):
                    last.pop(key, None)
                    if value:
                        last[key] = value
        elif message.tool_calls is not None:  # content may be left out when tools are called
            native.append(
                _native_message(
                    message.role,
                    thinking=message.reasoning,
                    tool_calls=message.native_tool_calls(),
                    tool_call_id=message.tool_call_id,
                )
            )
        else:
            raise OpenAIError(
                400,
                f"invalid message content type: {_go_type(content)}",
                param=f"{message.where}.content",
            )
    return native


def _tool_name(messages: list[_Message], tool_call_id: str) -> str:
    """The name of the function a tool result answers, from the call with its id (the
    last such call, should ids repeat)."""
    if not tool_call_id:
        return ""
    for message in reversed(messages):
        for call in message.tool_calls or []:
            if call.id == tool_call_id:
                return call.name
    return ""


def _content_part(role: str, value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise OpenAIError(400, "invalid message format: a content part is an object", param=where)
    part = _Object(value, where)
    kind = part.fields.get("type")
    if kind == "text":
        text = part.fields.get("text")
        if not isinstance(text, str):
            raise OpenAIError(
                400, "invalid message format: a text part needs its text", param=part.at("text")
            )
        return _native_message(role, text)
    if kind == "image_url":
        image = part.fields.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str):
            raise OpenAIError(
                400,
                "invalid message format: an image_url part needs its url",
                param=part.at("image_url"),
            )
        return _native_message(role, images=[_image(url, part.at("image_url"))])
    if kind == "input_audio":
        return _native_message(role, images=[_audio(part)])
    raise OpenAIError(
        400,
        'invalid message format: a content part\'s type is "text", "image_url" or "input_audio"',
        param=part.at("type"),
    )


def _image(url: str, where: str) -> str:
    """A data URL's image as native ``images`` carries it: base64, as Ollama's
    ``decodeImageURL`` reads it. Ollama fetches no remote image, and neither does Foreman."""
    if url.startswith(("http://", "https://")):
        raise OpenAIError(
            400,
            "image URLs are not currently supported, please use base64 encoded data instead",
            param=where,
        )
    prefixes = ("data:;base64,", *(f"data:image/{kind};base64," for kind in IMAGE_TYPES))
    prefix = next((prefix for prefix in prefixes if url.startswith(prefix)), None)
    decoded = None if prefix is None else _base64(url.removeprefix(prefix))
    if decoded is None:
        raise OpenAIError(
            400,
            "invalid image input: expected a base64 data URL (data:image/png;base64,... "
            "or jpeg, jpg, webp)",
            param=where,
        )
    return base64.b64encode(decoded).decode()


def _audio(part: _Object) -> str:
    audio = part.fields.get("input_audio")
    if not isinstance(audio, dict):
        raise OpenAIError(400, "invalid input_audio format", param=part.at("input_audio"))
    data = audio.get("data")
    if not isinstance(data, str):
        raise OpenAIError(
            400, "invalid input_audio format: missing data", param=part.at("input_audio.data")
        )
    decoded = _base64(data)
    if decoded is None:
        raise OpenAIError(400, "invalid input_audio base64 data", param=part.at("input_audio.data"))
    return base64.b64encode(decoded).decode()


def _base64(text: str) -> bytes | None:
    """Standard padded base64, line breaks ignored, as Go's ``StdEncoding`` decodes it."""
    try:
        return base64.b64decode(text.replace("\r", "").replace("\n", ""), validate=True)
    except ValueError:  # binascii.Error, or a character outside ASCII
        return None


# -- completions and embeddings ---------------------------------------------------------------


def completion_request(body: object) -> dict[str, Any]:
    """An OpenAI completions body as the native ``/api/generate`` body (Ollama's
    ``FromCompleteRequest``). ``prompt`` is one string: Ollama takes no list of prompts."""
    request = _Object(body)
    model = _model(request)
    prompt = request.string("prompt")
    options = _sampling(request, strict_stops=True)
    options["frequency_penalty"] = request.number("frequency_penalty") or 0.0
    options["presence_penalty"] = request.number("presence_penalty") or 0.0
    options["top_p"] = request.number("top_p") or 1.0  # Go cannot tell 0 from unset here
    stream = request.boolean("stream")
    _stream_options(request)
    native: dict[str, Any] = {"model": model, "prompt": prompt}
    suffix = request.string("suffix")
    if suffix:
        native["suffix"] = suffix
    native |= {"stream": stream, "options": options}
    logprobs = request.integer("logprobs")
    if logprobs is not None and logprobs > 0:
        native |= {"logprobs": True, "top_logprobs": logprobs}
    return native


def embedding_request(body: object) -> dict[str, Any]:
    """An OpenAI embeddings body as the native ``/api/embed`` body (Ollama's
    ``EmbeddingsMiddleware``). ``input`` is a string or a list of strings: Ollama refuses
    token arrays."""
    request = _Object(body)
    model = _model(request)
    encoding_format = request.string("encoding_format")
    if encoding_format and encoding_format.casefold() not in ("float", "base64"):
        raise OpenAIError(
            400,
            f"Invalid value for 'encoding_format' = {encoding_format}. "
            "Supported values: ['float', 'base64'].",
            param="encoding_format",
        )
    dimensions = request.integer("dimensions")
    given = request.fields.get("input")
    if given is None or given == []:
        raise OpenAIError(400, "invalid input", param="input")
    if given == "":
        given = [""]
    if not isinstance(given, str) and not (
        isinstance(given, list) and all(isinstance(item, str) for item in given)
    ):
        raise OpenAIError(
            400,
            "invalid input type: input is a string or a list of strings "
            "(Ollama takes no token arrays)",
            param="input",
        )
    native: dict[str, Any] = {"model": model, "input": given}
    if dimensions:
        native["dimensions"] = dimensions
    return native


# -- answers ----------------------------------------------------------------------------------


def _text(value: object) -> str:
    """A string of a native answer; anything else reads as empty, as Go's zero value."""
    return readable(value) if isinstance(value, str) else ""


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _unix(value: object) -> int | None:
    """An RFC 3339 time (``created_at``, ``modified_at``) in Unix seconds."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return None if moment.tzinfo is None else math.floor(moment.timestamp())


def _usage(answer: Mapping[str, Any]) -> dict[str, int]:
    prompt = _count(answer.get("prompt_eval_count"))
    completion = _count(answer.get("eval_count"))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _message(answer: Mapping[str, Any]) -> Mapping[str, Any]:
    message = answer.get("message")
    return message if isinstance(message, dict) else {}


def _tool_calls(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Native tool calls as OpenAI's: the arguments object becomes its JSON text."""
    calls = message.get("tool_calls")
    converted = []
    for call in calls if isinstance(calls, list) else []:
        if not isinstance(call, dict):
            continue
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        arguments = function.get("arguments")
        arguments = arguments if isinstance(arguments, dict) else {}
        converted.append(
            {
                "id": _text(call.get("id")),
                "index": _count(function.get("index")),
                "type": "function",
                "function": {
                    "name": _text(function.get("name")),
                    "arguments": json.dumps(arguments, separators=(",", ":")),
                },
            }
        )
    return converted


def _logprobs(answer: Mapping[str, Any]) -> dict[str, Any] | None:
    logprobs = answer.get("logprobs")
    return {"content": logprobs} if isinstance(logprobs, list) and logprobs else None


def chat_completion(answer: Mapping[str, Any], *, id: str, created: int) -> dict[str, Any]:
    """A native non-streamed ``/api/chat`` answer as a ``chat.completion`` (Ollama's
    ``ToChatCompletion``). ``created`` is the answer's ``created_at`` when it has one
    (as Ollama shows it), else the ``created`` given."""
    message = _message(answer)
    tool_calls = _tool_calls(message)
    reason = _text(answer.get("done_reason"))
    if reason == "stop" and tool_calls:
        reason = "tool_calls"
    shown: dict[str, Any] = {
        "role": _text(message.get("role")),
        "content": _text(message.get("content")),
    }
    thinking = _text(message.get("thinking"))
    if thinking:
        shown["reasoning"] = thinking
    if tool_calls:
        shown["tool_calls"] = tool_calls
    choice: dict[str, Any] = {"index": 0, "message": shown, "finish_reason": reason or None}
    logprobs = _logprobs(answer)
    if logprobs is not None:
        choice["logprobs"] = logprobs
    return {
        "id": id,
        "object": "chat.completion",
        "created": _created(answer, created),
        "model": _text(answer.get("model")),
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [choice],
        "usage": _usage(answer),
    }


def completion(answer: Mapping[str, Any], *, id: str, created: int) -> dict[str, Any]:
    """A native non-streamed ``/api/generate`` answer as a ``text_completion`` (Ollama's
    ``ToCompletion``); ``created`` as in :func:`chat_completion`."""
    return {
        "id": id,
        "object": "text_completion",
        "created": _created(answer, created),
        "model": _text(answer.get("model")),
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {
                "text": _text(answer.get("response")),
                "index": 0,
                "finish_reason": _text(answer.get("done_reason")) or None,
            }
        ],
        "usage": _usage(answer),
    }


def _created(answer: Mapping[str, Any], fallback: int) -> int:
    created = _unix(answer.get("created_at"))
    return fallback if created is None else created


def _stream_error(answer: Mapping[str, Any]) -> dict[str, Any]:
    """A native mid-stream error line as an OpenAI error event, which OpenAI's clients
    raise. (Ollama itself sends an empty chunk and stops, a truncated answer that looks
    like a finished one.)"""
    error = answer.get("error")
    message = error if isinstance(error, str) and error else NATIVE_ERROR_DEFAULT
    return OpenAIError(500, message).body()


class _Stream(ABC):
    """The translation of one native stream, line by line, as Ollama's middleware writers
    keep it: every chunk shows the ``created`` of the first line."""

    def __init__(self, *, id: str, created: int, include_usage: bool) -> None:
        self.id = id
        self.created = created
        """Shown when the first line carries no ``created_at``."""
        self.include_usage = include_usage
        self.done = False
        """Whether the ``done`` line was translated (then the stream is over: ``[DONE]``)."""
        self._pinned: int | None = None

    @abstractmethod
    def chunks(self, answer: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The chunks to send for one native line, in order."""

    def events(self, answer: Mapping[str, Any]) -> bytes:
        """The server-sent events for one native line: its chunks, then ``[DONE]`` after
        the ``done`` line."""
        was_done = self.done
        events = b"".join(sse(chunk) for chunk in self.chunks(answer))
        return (events + sse("[DONE]")) if self.done and not was_done else events

    def _pin(self, answer: Mapping[str, Any]) -> int:
        if self._pinned is None:
            self._pinned = _created(answer, self.created)
        return self._pinned


class ChatStream(_Stream):
    """A native ``/api/chat`` stream as ``chat.completion.chunk`` events (Ollama's
    ``ChatWriter``): the role on the first chunk only, thinking and content split into two
    chunks, a finish chunk with an empty delta, then the usage chunk if asked for."""

    def __init__(self, *, id: str, created: int, include_usage: bool) -> None:
        super().__init__(id=id, created=created, include_usage=include_usage)
        self._started = False
        self._tool_call_sent = False

    def chunks(self, answer: Mapping[str, Any]) -> list[dict[str, Any]]:
        if "error" in answer:
            return [_stream_error(answer)]
        created = self._pin(answer)
        model = _text(answer.get("model"))
        message = _message(answer)
        content = _text(message.get("content"))
        thinking = _text(message.get("thinking"))
        tool_calls = _tool_calls(message)
        logprobs = _logprobs(answer)
        done = answer.get("done") is True
        chunks = []
        # The done line of a stream is a trailer of metrics: no empty chunk for it
        # (unless nothing came before it, so the stream still opens with the role).
        trailer = done and self._started and not (content or thinking or tool_calls or logprobs)
        if not trailer:
            for choice in self._choices(content, thinking, tool_calls, logprobs):
                chunks.append(self._chunk(model, created, [choice]))
            self._tool_call_sent = self._tool_call_sent or bool(tool_calls)
            self._started = True
        if done:
            self.done = True
            reason = _text(answer.get("done_reason")) or "stop"
            if reason == "stop" and self._tool_call_sent:
                reason = "tool_calls"
            finish = {"index": 0, "delta": {}, "finish_reason": reason}
            chunks.append(self._chunk(model, created, [finish]))
            if self.include_usage:
                chunks.append(self._chunk(model, created, [], usage=_usage(answer)))
        return chunks

    def _choices(
        self,
        content: str,
        thinking: str,
        tool_calls: list[dict[str, Any]],
        logprobs: dict[str, Any] | None,
    ) -> list[dict[str, Any]]:
        """One choice, or two when thinking comes with content or tool calls: the thinking
        first (with the role and the logprobs), then the rest."""
        role = {} if self._started else {"role": "assistant"}
        rest: dict[str, Any] = {"content": content}
        if tool_calls:
            rest["tool_calls"] = tool_calls
        if thinking and (content or tool_calls):
            deltas = [role | {"reasoning": thinking}, rest]
        else:
            delta = role | {"content": content}
            if thinking:
                delta["reasoning"] = thinking
            deltas = [delta | rest]
        choices = [{"index": 0, "delta": delta, "finish_reason": None} for delta in deltas]
        if logprobs is not None:
            choices[0]["logprobs"] = logprobs
        return choices

    def _chunk(
        self,
        model: str,
        created: int,
        choices: list[dict[str, Any]],
        *,
        usage: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = usage
        return chunk


class CompletionStream(_Stream):
    """A native ``/api/generate`` stream as ``text_completion`` events (Ollama's
    ``CompleteWriter``): a chunk per line, then the usage chunk if asked for. As in
    Ollama, asking for usage puts zero usage on every chunk before it."""

    def chunks(self, answer: Mapping[str, Any]) -> list[dict[str, Any]]:
        if "error" in answer:
            return [_stream_error(answer)]
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion",
            "created": self._pin(answer),
            "choices": [
                {
                    "text": _text(answer.get("response")),
                    "index": 0,
                    "finish_reason": _text(answer.get("done_reason")) or None,
                }
            ],
            "model": _text(answer.get("model")),
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        if self.include_usage:
            chunk["usage"] = _usage({})
        chunks = [chunk]
        if answer.get("done") is True:
            self.done = True
            if self.include_usage:
                chunks.append(chunk | {"choices": [], "usage": _usage(answer)})
        return chunks


def embedding_list(
    answer: Mapping[str, Any], *, model: str, encoding_format: str | None = None
) -> dict[str, Any]:
    """A native ``/api/embed`` answer as OpenAI's embedding list (Ollama's
    ``ToEmbeddingList``): ``model`` as the request named it, each vector as numbers or,
    with ``encoding_format`` ``base64``, as its little-endian float32 bytes in base64."""
    embeddings = answer.get("embeddings")
    if not isinstance(embeddings, list):  # Ollama shows an empty list object
        return {"object": "", "data": None, "model": "", "usage": _embedding_usage(0)}
    as_base64 = (encoding_format or "").casefold() == "base64"
    data = []
    for index, vector in enumerate(embeddings):
        numbers = _vector(vector)
        data.append(
            {
                "object": "embedding",
                "embedding": _float32_base64(numbers) if as_base64 else numbers,
                "index": index,
            }
        )
    return {
        "object": "list",
        "data": data or None,  # Go's nil slice: no embeddings show as null
        "model": readable(model),
        "usage": _embedding_usage(_count(answer.get("prompt_eval_count"))),
    }


def _embedding_usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": tokens, "total_tokens": tokens}


def _vector(value: object) -> list[float]:
    items = value if isinstance(value, list) else []
    return [item for item in items if isinstance(item, int | float) and not isinstance(item, bool)]


def _float32_base64(vector: list[float]) -> str:
    try:
        packed = struct.pack(f"<{len(vector)}f", *vector)
    except OverflowError:  # beyond float32: rounds to infinity, as a float32 cast does
        packed = b"".join(_float32(value) for value in vector)
    return base64.b64encode(packed).decode()


def _float32(value: float) -> bytes:
    try:
        return struct.pack("<f", value)
    except OverflowError:
        return struct.pack("<f", math.copysign(math.inf, value))


# -- models -----------------------------------------------------------------------------------


def model_list(tags: Mapping[str, Any]) -> dict[str, Any]:
    """A native ``/api/tags`` answer as OpenAI's model list (Ollama's ``ToListCompletion``)."""
    models = tags.get("models")
    data = []
    for model in models if isinstance(models, list) else []:
        if isinstance(model, dict):
            name = _text(model.get("model")) or _text(model.get("name"))
            data.append(_model_object(name, model.get("modified_at")))
    return {"object": "list", "data": data or None}  # no models: null, as Ollama shows it


def model_object(name: str, show: Mapping[str, Any]) -> dict[str, Any]:
    """A native ``/api/show`` answer for ``name`` as OpenAI's model object (Ollama's
    ``ToModel``)."""
    return _model_object(readable(name), show.get("modified_at"))


def _model_object(name: str, modified_at: object) -> dict[str, Any]:
    created = _unix(modified_at)
    return {
        "id": name,
        "object": "model",
        "created": GO_ZERO_TIME if created is None else created,
        "owned_by": _namespace(name),
    }


def _namespace(name: str) -> str:
    """The namespace in a model name, as Ollama's ``model.ParseName`` finds it (``library``
    when there is none): ``jmorgan/llama3:8b`` is owned by ``jmorgan``."""
    if name.rfind(":") > name.rfind("/"):
        name = name[: name.rfind(":")] or MISSING_PART
    before, slash, _ = name.rpartition("/")
    if not slash:
        return "library"
    _, slash, namespace = (before or MISSING_PART).rpartition("/")
    return (namespace or MISSING_PART) if slash else namespace
