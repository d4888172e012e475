"""The simulated GPU: one model resident at a time, ``parallel`` generations of it at a time.

A generation waits its turn (a fair ``trio.Lock``, so waiting requests are
served first in, first out, as Ollama serves its queue) for a free slot
(``parallel``, Ollama's ``OLLAMA_NUM_PARALLEL``; a request for another model
waits until the GPU is idle), loads its model if the resident one differs in
name or in a load option (paying ``load_latency``), then produces its tokens
``token_latency`` apart. Output is
a pure function of the model and the prompt, so tests can predict it.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from foreman.simulator.config import LOAD_OPTION_DEFAULTS, SimModel, SimulatorConfig

# fmt: off
WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven",
    "small", "models", "wait", "their", "turn", "on", "one", "warm", "GPU", "and", "every",
    "queued", "job", "is", "written", "down", "before", "it", "runs", "so", "nothing", "is",
    "lost", "when", "the", "lights", "go", "out",
)
# fmt: on
"""The simulated vocabulary."""


@dataclass(frozen=True)
class LoadKey:
    """What must match for a loaded model to be reused: its name and its load options."""

    model: str
    options: tuple[tuple[str, object], ...]

    @classmethod
    def of(cls, model: SimModel, options: Mapping[str, object]) -> LoadKey:
        return cls(
            model.name,
            tuple(
                (name, options.get(name, default)) for name, default in LOAD_OPTION_DEFAULTS.items()
            ),
        )

    @property
    def num_ctx(self) -> int:
        value = dict(self.options)["num_ctx"]
        return value if isinstance(value, int) else int(LOAD_OPTION_DEFAULTS["num_ctx"])


@dataclass
class Resident:
    """The model in VRAM and when it was last used."""

    model: SimModel
    key: LoadKey
    last_used: float


@dataclass(frozen=True)
class Job:
    """A generation request, reduced to what the GPU needs."""

    path: str
    model: SimModel
    key: LoadKey
    prompt: str
    """The canonical text the output is derived from (chat messages are serialised)."""
    num_predict: int | None
    received_ns: int
    """``time.perf_counter_ns()`` when the request arrived: ``total_duration`` counts from it."""


@dataclass(frozen=True)
class Finished:
    """The end of a generation, with Ollama's usage figures (nanoseconds)."""

    done_reason: str
    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int


@dataclass(frozen=True)
class GenerationRecord:
    """A completed generation, for benchmarks: wall-clock (Unix) seconds."""

    path: str
    model: str
    started_at: float
    """When it got the GPU (before loading, if it had to load)."""
    ended_at: float
    load_seconds: float
    eval_count: int


def count_tokens(text: str) -> int:
    """A stand-in tokenizer: one token per word, at least one."""
    return max(1, len(text.split()))


def response_tokens(model: str, prompt: str, count: int) -> list[str]:
    """``count`` words chosen by a generator seeded from (model, prompt)."""
    seed = hashlib.sha256(f"{model}\0{prompt}".encode()).digest()
    rng = random.Random(int.from_bytes(seed[:8], "big"))
    return [(" " if i else "") + rng.choice(WORDS) for i in range(count)]


def embedding(model: str, text: str, dimensions: int) -> list[float]:
    """A unit vector derived from (model, text), as Ollama returns normalised embeddings."""
    raw = hashlib.shake_256(f"{model}\0{text}".encode()).digest(2 * dimensions)
    values = [int.from_bytes(raw[i : i + 2], "big") / 32767.5 - 1.0 for i in range(0, len(raw), 2)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


class SimulatedGPU:
    """The state machine behind the API: what is resident, who holds the GPU, what ran."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._turn = trio.Lock()
        self._active = 0
        """Generations holding a slot."""
        self._freed = trio.Event()
        self.waiting = 0
        """Requests queued for the GPU behind the one holding it."""
        self._waiting_changed = trio.Event()
        self.resident: Resident | None = None
        self.loads = 0
        self.generations: list[GenerationRecord] = []
        self._generated = trio.Event()

    async def until_waiting(self, count: int) -> None:
        """Return once ``count`` requests wait for the GPU (for tests to synchronise on)."""
        while self.waiting != count:
            await self._waiting_changed.wait()

    async def until_generated(self, count: int) -> None:
        """Return once ``count`` generations have completed (for tests to synchronise on)."""
        while len(self.generations) < count:
            await self._generated.wait()

    def _add_waiting(self, delta: int) -> None:
        self.waiting += delta
        self._waiting_changed.set()
        self._waiting_changed = trio.Event()

    def unload(self) -> None:
        self.resident = None

    def reset(self) -> None:
        """Forget the counters and unload the model, as if freshly started."""
        self.unload()
        self.loads = 0
        self.generations = []

    @asynccontextmanager
    async def session(self, model: SimModel, key: LoadKey) -> AsyncIterator[float]:
        """Hold the GPU with ``key`` loaded; yields the seconds spent loading (0 if resident)."""
        self._add_waiting(1)
        try:
            async with self._turn:  # the first in line takes the next free slot
                while self._active >= self.config.parallel or (
                    self._active and (self.resident is None or self.resident.key != key)
                ):
                    await self._freed.wait()
                self._active += 1
                try:
                    load_seconds = await self._load(model, key)
                except BaseException:
                    self._free()
                    raise
        finally:
            self._add_waiting(-1)
        try:
            yield load_seconds
        finally:
            if self.resident is not None:
                self.resident.last_used = time.time()
            self._free()

    async def _load(self, model: SimModel, key: LoadKey) -> float:
        """Make ``key`` resident (the GPU is otherwise idle); the seconds it took."""
        if self.resident is not None and self.resident.key == key:
            return 0.0
        self.resident = None  # the old model is evicted as the load starts
        started = time.perf_counter()
        await trio.sleep(self.config.load_latency)
        self.resident = Resident(model, key, time.time())
        self.loads += 1
        return time.perf_counter() - started

    def _free(self) -> None:
        self._active -= 1
        self._freed.set()
        self._freed = trio.Event()

    async def generate(self, job: Job) -> AsyncGenerator[str | Finished, None]:
        """Yield the response's tokens, then :class:`Finished`; holds the GPU throughout.

        Close the generator (``contextlib.aclosing``) to stop early and free the GPU.
        """
        count = self.config.tokens
        if job.num_predict is not None and 0 <= job.num_predict < count:
            count = job.num_predict
        async with self.session(job.model, job.key) as load_seconds:
            started_at = time.time() - load_seconds  # when it got the GPU
            eval_start = time.perf_counter_ns()
            # A GPU keeps a steady pace: each token is due one latency after the one
            # before was due, so the timer's lateness on one token does not push back
            # the rest; after a pause longer than a token (a stall) the pace starts over.
            latency, due = self.config.token_latency, trio.current_time()
            for token in response_tokens(job.model.name, job.prompt, count):
                due = max(due, trio.current_time() - latency) + latency
                await trio.sleep_until(due)
                yield token
            end = time.perf_counter_ns()
            self.generations.append(
                GenerationRecord(
                    job.path, job.model.name, started_at, time.time(), load_seconds, count
                )
            )
            self._generated.set()
            self._generated = trio.Event()
            yield Finished(
                done_reason="stop" if count == self.config.tokens else "length",
                total_duration=end - job.received_ns,
                load_duration=int(load_seconds * 1e9),
                prompt_eval_count=count_tokens(job.prompt),
                prompt_eval_duration=0,
                eval_count=count,
                eval_duration=end - eval_start,
            )
