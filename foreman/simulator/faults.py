"""Injectable faults, armed at run time through ``POST /_sim/faults``.

Per-request faults (``status``, ``drop_mid_stream``, ``stall``, ``answer``) each apply to
the next ``times`` Ollama API requests that match their optional ``path`` and
``model`` (``times: null``: every one, until ``DELETE /_sim/faults``). The
first armed fault that matches a request is the one it gets.

Refused connections cannot be a per-request fault: a request the app sees has
already been accepted. They are an *outage* instead (``POST /_sim/outage``):
the server closes its listening socket and drops open connections, so clients
get a real ``ECONNREFUSED``, then listens again on the same port
(:mod:`foreman.simulator.server`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import trio
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from foreman.scheduling import model_name

GENERATION_PATHS = frozenset({"/api/chat", "/api/generate"})


class _Fault(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = None
    """Only requests to this path (e.g. ``/api/chat``); any Ollama API path if null."""
    model: str | None = None
    """Only requests for this model (``llama3`` matches ``llama3:latest``)."""
    times: Annotated[int, Field(ge=1)] | None = 1
    """How many matching requests it applies to; null: all of them, until cleared."""

    def matches(self, path: str, model: str | None) -> bool:
        if self.path is not None and self.path != path:
            return False
        return self.model is None or (
            model is not None and model_name(self.model) == model_name(model)
        )


class StatusFault(_Fault):
    """Answer with ``status`` and Ollama's error body before doing anything."""

    kind: Literal["status"]
    status: Annotated[int, Field(ge=400, le=599)] = 500
    error: str = "simulated failure"


class DropFault(_Fault):
    """On chat/generate only: after ``after_tokens`` tokens, stop.

    Without ``error`` the connection is cut (a chunked body that never ends,
    as when the backend dies): clients see a protocol error. With ``error``,
    a stream ends with Ollama's mid-stream error line ``{"error": ...}`` under
    status 200, and a non-streaming request gets 500 ``{"error": ...}``, which
    is what Ollama does when its runner fails.
    """

    kind: Literal["drop_mid_stream"]
    after_tokens: Annotated[int, Field(ge=0)] = 0
    error: str | None = None


class StallFault(_Fault):
    """Wait ``seconds``: before answering at all, or, on chat/generate, after
    ``after_tokens`` tokens (holding the GPU, like a hung runner)."""

    kind: Literal["stall"]
    seconds: Annotated[float, Field(ge=0)]
    after_tokens: Annotated[int, Field(ge=0)] | None = None

    @property
    def before_answering(self) -> bool:
        return self.after_tokens is None


class AnswerFault(_Fault):
    """Answer ``body`` verbatim with ``status`` instead of doing anything: a backend that
    misbehaves, e.g. with JSON nested too deep for Foreman's log."""

    kind: Literal["answer"]
    status: Annotated[int, Field(ge=200, le=599)] = 200
    body: str
    content_type: str = "application/json; charset=utf-8"


class Answered(Exception):
    """Raised by a route when an :class:`AnswerFault` answers for it."""

    def __init__(self, fault: AnswerFault) -> None:
        super().__init__(fault.body)
        self.fault = fault


Fault = Annotated[StatusFault | DropFault | StallFault | AnswerFault, Field(discriminator="kind")]
FAULT_LIST: TypeAdapter[list[Fault]] = TypeAdapter(list[Fault])


@dataclass
class _Armed:
    fault: Fault
    remaining: int | None


class FaultBoard:
    """The armed faults, in the order they were armed."""

    def __init__(self) -> None:
        self._armed: list[_Armed] = []

    def arm(self, faults: list[Fault]) -> None:
        self._armed.extend(_Armed(fault, fault.times) for fault in faults)

    def clear(self) -> None:
        self._armed.clear()

    def armed(self) -> list[Fault]:
        """What is armed, each with the number of requests it still applies to as ``times``."""
        return [entry.fault.model_copy(update={"times": entry.remaining}) for entry in self._armed]

    def take(self, path: str, model: str | None) -> Fault | None:
        """The fault for this request, if any, counting it as used once.

        ``drop_mid_stream`` and a stall after some tokens only apply to
        chat/generate: other requests have no tokens to count.
        """
        generating = path in GENERATION_PATHS
        for entry in self._armed:
            fault = entry.fault
            applies = (
                generating
                or isinstance(fault, StatusFault | AnswerFault)
                or (isinstance(fault, StallFault) and fault.before_answering)
            )
            if applies and fault.matches(path, model):
                if entry.remaining is not None:
                    entry.remaining -= 1
                    if entry.remaining == 0:
                        self._armed.remove(entry)
                return fault
        return None


class Outage:
    """How the app asks the server to stop listening for a while, and how it is stopped.

    The server passes :meth:`wait` to Hypercorn as its shutdown trigger; once
    Hypercorn has stopped, :meth:`take_pause` says how long to stay down.
    """

    def __init__(self) -> None:
        self._changed = trio.Event()
        self._pause: float | None = None
        self.stopping = False

    def begin(self, seconds: float) -> None:
        if not self._changed.is_set():
            self._pause = seconds
            self._changed.set()

    def stop(self) -> None:
        self.stopping = True
        self._changed.set()

    async def wait(self) -> None:
        await self._changed.wait()

    def take_pause(self) -> float | None:
        """Seconds to stay down, or ``None`` to stop for good (:meth:`stop` was called, or
        the server stopped by itself); re-arms :meth:`wait`."""
        pause = None if self.stopping else self._pause
        self._pause = None
        self._changed = trio.Event()
        return pause
