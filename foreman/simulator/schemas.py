"""The request bodies the simulator reads: only the fields it acts on.

Everything else Ollama accepts (``keep_alive``, ``format``, ``tools``,
``images``, …) is accepted and ignored.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from foreman.ollama_protocol import Body


class Message(Body):
    role: str = ""
    content: str = ""


class _ModelRequest(Body):
    model: str = ""
    options: dict[str, Any] | None = None

    @property
    def num_predict(self) -> int | None:
        value = (self.options or {}).get("num_predict")
        return value if isinstance(value, int) else None


class ChatRequest(_ModelRequest):
    messages: list[Message] = Field(default_factory=list)
    stream: bool | None = None


class GenerateRequest(_ModelRequest):
    prompt: str = ""
    system: str = ""
    stream: bool | None = None


class EmbedRequest(_ModelRequest):
    input: str | list[str] | None = None
    dimensions: Annotated[int, Field(ge=0)] = 0


class EmbeddingsRequest(_ModelRequest):
    prompt: str = ""


class ShowRequest(Body):
    model: str = ""
    name: str = ""
    """The legacy spelling of ``model``."""


class OutageRequest(Body):
    seconds: Annotated[float, Field(gt=0)]
