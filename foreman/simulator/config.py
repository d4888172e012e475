"""What the simulator serves: its models, its latencies and where it listens."""

from __future__ import annotations

import hashlib
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from foreman.scheduling import model_name

LOAD_OPTION_DEFAULTS: dict[str, int | bool] = {
    "num_ctx": 4096,
    "num_batch": 512,
    "num_gpu": -1,
    "main_gpu": 0,
    "use_mmap": True,
    "num_thread": 0,
}
"""Ollama reloads a model when one of these changes; sampling options do not.

An option left out counts as its default, so ``{"num_ctx": 4096}`` and ``{}``
need the same loaded model, as in Ollama (which merges requests' options over
its defaults before comparing).
"""

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``4.7GB`` -> 4_700_000_000 bytes (decimal units, as Ollama prints sizes)."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (e.g. 4.7GB, 274MB, 1000000)")
    number, unit = match.groups()
    return int(float(number) * _UNITS[(unit or "").upper()])


class SimModel(BaseModel):
    """One model the simulator has "pulled"."""

    model_config = ConfigDict(frozen=True)

    name: str
    """Full name with tag, e.g. ``llama3:latest``."""
    size: Annotated[int, Field(gt=0)]
    """Bytes on disk, and in VRAM once loaded."""
    embedding_length: Annotated[int, Field(gt=0)] = 768

    @property
    def is_embedding_model(self) -> bool:
        """Embedding-only (no chat or generate): by convention, "embed" is in its name."""
        return "embed" in self.name

    @property
    def family(self) -> str:
        """``qwen2.5:7b`` -> ``qwen``: the base name without version digits."""
        base = self.name.split(":")[0].split("/")[-1]
        return re.sub(r"[\d.]+$", "", base) or base

    @property
    def parameter_size(self) -> str:
        """A plausible parameter count for the size, at ~4.5 bits per weight (Q4_K_M)."""
        return f"{self.size / 0.5625 / 1e9:.1f}B"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()

    @classmethod
    def parse(cls, spec: str) -> SimModel:
        """``NAME[=SIZE]``, e.g. ``qwen2:7b=4.4GB``; the size defaults to 4GB."""
        name, _, size = spec.strip().partition("=")
        if not name:
            raise ValueError(f"no model name in {spec!r}")
        return cls(name=model_name(name), size=parse_size(size) if size else 4 * 10**9)


DEFAULT_MODELS = (
    SimModel(name="llama3:latest", size=4_661_224_676),
    SimModel(name="qwen2:latest", size=4_431_400_262),
    SimModel(name="nomic-embed-text:latest", size=274_302_450),
)


def parse_models(specs: str) -> tuple[SimModel, ...]:
    """A comma-separated list of ``NAME[=SIZE]``."""
    models = tuple(SimModel.parse(spec) for spec in specs.split(",") if spec.strip())
    if not models:
        raise ValueError("no models given")
    return models


class SimulatorConfig(BaseModel):
    """The simulator's settings. The defaults suit tests: no latency at all."""

    model_config = ConfigDict(frozen=True)

    listen: str = "127.0.0.1:11434"
    """``HOST:PORT`` to bind; port 0 picks a free port (reported when started)."""
    models: tuple[SimModel, ...] = DEFAULT_MODELS
    load_latency: Annotated[float, Field(ge=0)] = 0.0
    """Seconds to load a model that is not resident (or resident with other load options)."""
    token_latency: Annotated[float, Field(ge=0)] = 0.0
    """Seconds per generated token."""
    tokens: Annotated[int, Field(ge=1)] = 8
    """Tokens per response (fewer if the request's ``num_predict`` says so)."""
    parallel: Annotated[int, Field(ge=1)] = 1
    """Generations of the resident model at once (Ollama's ``OLLAMA_NUM_PARALLEL``)."""
    version: str = "0.12.0"
    """What ``/api/version`` reports."""

    def find(self, name: str) -> SimModel | None:
        """The model called ``name`` (the tag ``latest`` may be left out), if configured."""
        wanted = model_name(name)
        return next((model for model in self.models if model.name == wanted), None)
