"""Foreman's HTTP API: the Ollama-compatible front door, the async job API and health,
in one FastAPI app (:func:`create_app`) that the HTTP actor serves."""

from foreman.api.app import create_app
from foreman.api.auth import Keychain
from foreman.api.batches import BatchesApi
from foreman.api.bound import Bound
from foreman.api.front_door import FrontDoor
from foreman.api.jobs import JobsApi
from foreman.api.keys import KeysApi

__all__ = ["BatchesApi", "Bound", "FrontDoor", "JobsApi", "Keychain", "KeysApi", "create_app"]
