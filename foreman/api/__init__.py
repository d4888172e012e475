"""Foreman's HTTP API: the Ollama-compatible front door, health, and (later) async jobs."""
