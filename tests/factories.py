"""Events as Foreman writes them, for tests."""

from __future__ import annotations

from typing import Any

from foreman.events.types import (
    JobAttemptFailed,
    JobCancelled,
    JobFailed,
    JobPruned,
    JobRequeued,
    JobStarted,
    JobSubmitted,
    JobSucceeded,
)


def submitted(model: str = "llama3", priority: int = 0) -> JobSubmitted:
    return JobSubmitted(
        kind="chat",
        model=model,
        request={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        priority=priority,
        origin="async",
    )


def started(attempt: int = 1) -> JobStarted:
    return JobStarted(attempt=attempt, backend="gpu-0")


def succeeded(text: str = "hello") -> JobSucceeded:
    return JobSucceeded(
        result={"model": "llama3", "message": {"role": "assistant", "content": text}, "done": True}
    )


def failed(status: int | None = 500) -> JobFailed:
    return JobFailed(error="backend said no", status=status)


def attempt_failed(attempt: int = 1) -> JobAttemptFailed:
    return JobAttemptFailed(attempt=attempt, error="connection refused", retryable=True)


def requeued_retry() -> JobRequeued:
    return JobRequeued(reason="retry")


def cancelled() -> JobCancelled:
    return JobCancelled(reason="client_disconnected")


def pruned() -> JobPruned:
    return JobPruned()


PIXEL = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNk+A8AAQUBAScY42YAAAAASUVORK5CYII="
)
"""A 1x1 PNG, Ollama's own test image, in base64."""
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather",
        "parameters": {
            "type": "object",
            "required": ["location"],
            "properties": {"location": {"type": "string", "description": "The city"}},
        },
    },
}
"""An OpenAI tool definition, as Ollama's own tests use one."""
