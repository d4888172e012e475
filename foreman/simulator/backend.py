"""The simulated GPU: one model resident at a time, ``parallel`` generations of it at a time.

A generation waits its turn (a fair ``trio.Lock``, so waiting requests are
served first in, first out, as Ollama serves its queue) for a free slot
(``parallel``, Ollama's ``OLLAMA_NUM_PARALLEL``; a request for another model
waits until the GPU is idle), loads its model if the resident one differs in
name or in a load option (paying ``load_latency``), then produces its tokens
``token_latency`` apart. Output is
a pure function of the model and the prompt, so tests can predict it.

The GPU keeps its nominal pace exactly, as a GPU does: each generation runs on a
timeline (:class:`Turn`) and sleeps until absolute deadlines on it, so neither the
host timer's lateness (a millisecond on each wake-up) nor the handler's own work
lengthens it. A generation starts when it asks for the GPU, or, if it waited, when
the one before it ended on that timeline; its load ends ``load_latency`` later and
its k-th token is due ``k * token_latency`` after that. A generation that falls
behind (a late wake-up, a busy host) catches up; only a stall fault moves its
deadlines, by the stall's length.
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


@dataclass
class Turn:
    """A hold of the GPU, on the GPU's own timeline (Trio's clock)."""

    start: float
    """When it got the GPU: when it asked, or when the hold it waited for ended."""
    at: float
    """How far its work has reached: ``start``, then the end of its load, then each
    token's deadline as it is produced."""
    load_seconds: float = 0.0
    """Its load on the timeline: ``load_latency``, or 0 if the model was resident."""
    ended: bool = False
    """Its work ended at ``at`` (set by its holder): the next hold may start there,
    however late the host let it finish. Else the GPU is free when it is let go."""


@dataclass(frozen=True)
class GenerationRecord:
    """A completed generation, for benchmarks: on the GPU's timeline, in wall-clock
    (Unix) seconds."""

    path: str
    model: str
    started_at: float
    """When it got the GPU (before loading, if it had to load): when it asked for it, or
    when the generation it waited for ended."""
    ended_at: float
    """When its last token was due."""
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
        self._handover = -math.inf
        """Where the last hold let go ended on the timeline (its work's end, if it
        ended on it, else the moment it let go)."""
        self._wall: float | None = None
        """Unix time minus Trio's clock, read once: the timeline in wall-clock seconds."""

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
    async def session(self, model: SimModel, key: LoadKey) -> AsyncIterator[Turn]:
        """Hold the GPU with ``key`` loaded; yields the hold's :class:`Turn`, its load
        done (``load_seconds``: 0 if the model was resident)."""
        asked = trio.current_time()
        self._add_waiting(1)
        try:
            async with self._turn:  # the first in line takes the next free slot
                while self._active >= self.config.parallel or (
                    self._active and (self.resident is None or self.resident.key != key)
                ):
                    await self._freed.wait()
                self._active += 1
                start = min(max(asked, self._handover), trio.current_time())
                turn = Turn(start, start)
                try:
                    await self._load(model, key, turn)
                except BaseException:
                    self._free(trio.current_time())
                    raise
        finally:
            self._add_waiting(-1)
        try:
            yield turn
        finally:
            if self.resident is not None:
                self.resident.last_used = time.time()
            self._free(turn.at if turn.ended else trio.current_time())

    async def _load(self, model: SimModel, key: LoadKey, turn: Turn) -> None:
        """Make ``key`` resident (the GPU is otherwise idle), on ``turn``'s timeline."""
        if self.resident is not None and self.resident.key == key:
            return
        self.resident = None  # the old model is evicted as the load starts
        turn.load_seconds = self.config.load_latency
        turn.at += turn.load_seconds
        await trio.sleep_until(turn.at)
        self.resident = Resident(model, key, time.time())
        self.loads += 1

    def _free(self, at: float) -> None:
        self._active -= 1
        self._handover = at
        self._freed.set()
        self._freed = trio.Event()

    def wall(self, at: float) -> float:
        """A moment of the timeline (Trio's clock) in Unix seconds."""
        if self._wall is None:
            self._wall = time.time() - trio.current_time()
        return at + self._wall

    async def generate(
        self, job: Job, stall: Stall | None = None
    ) -> AsyncGenerator[str | Finished, None]:
        """Yield the response's tokens, then :class:`Finished`; holds the GPU throughout,
        each token due ``token_latency`` after the one before on the GPU's timeline.

        Close the generator (``contextlib.aclosing``) to stop early and free the GPU.
        """
        count = self.config.tokens
        if job.num_predict is not None and 0 <= job.num_predict < count:
            count = job.num_predict
        async with self.session(job.model, job.key) as turn:
            evaluated = turn.at
            for n, token in enumerate(response_tokens(job.model.name, job.prompt, count)):
                turn.at += self.config.token_latency + _stalled(stall, n)
                await trio.sleep_until(turn.at)
                yield token
            if stall is not None and stall.after_tokens >= count:  # before the end at last
                turn.at += stall.seconds
                await trio.sleep_until(turn.at)
            turn.ended = True
            end = time.perf_counter_ns()
            started, ended = self.wall(turn.start), self.wall(turn.at)
            self.generations.append(
                GenerationRecord(job.path, job.model.name, started, ended, turn.load_seconds, count)
            )
            self._generated.set()
            self._generated = trio.Event()
            yield Finished(
                done_reason="stop" if count == self.config.tokens else "length",
                total_duration=end - job.received_ns,
                load_duration=_nanoseconds(turn.load_seconds),
                prompt_eval_count=count_tokens(job.prompt),
                prompt_eval_duration=0,
                eval_count=count,
                eval_duration=_nanoseconds(turn.at - evaluated),
            )


@dataclass(frozen=True)
class Stall:
    """The GPU hangs for ``seconds`` after ``after_tokens`` tokens (before the end at
    the latest), holding it: its later deadlines move by as much."""

    after_tokens: int
    seconds: float


def _stalled(stall: Stall | None, token: int) -> float:
    """The seconds ``stall`` adds before the ``token``-th token (from 0)."""
    return stall.seconds if stall is not None and stall.after_tokens == token else 0.0


def _nanoseconds(seconds: float) -> int:
    """A duration as Ollama reports it: whole nanoseconds."""
    return round(seconds * 1e9)
