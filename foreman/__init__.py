"""Foreman: a durable, event-sourced job queue in front of Ollama."""

__version__ = "0.1.0"
