"""A stand-in for Ollama and its GPU, for tests and demos (ADR-0023).

A real HTTP server speaking Ollama's API, with one model resident at a time,
simulated load and token latencies, deterministic output and injectable
faults. ``foreman simulate`` runs it alone; :func:`serve_simulator` runs it in
a Trio nursery.
"""

from foreman.simulator.config import SimModel, SimulatorConfig, parse_models
from foreman.simulator.server import serve_simulator

__all__ = ["SimModel", "SimulatorConfig", "parse_models", "serve_simulator"]
