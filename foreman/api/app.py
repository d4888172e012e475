"""The FastAPI application the HTTP actor serves."""

from __future__ import annotations

import json

import trio
from fastapi import FastAPI
from starlette.responses import Response

from foreman import __version__
from foreman.api.ollama import Gateway, ollama_routes
from foreman.upstream import Unavailable
from foreman.wire import OllamaJSON, answer_errors_as_ollama

HEALTH_PROBE_SECONDS = 2.0


def create_app(gateway: Gateway) -> FastAPI:
    app = FastAPI(title="Foreman", version=__version__)
    app.include_router(ollama_routes(gateway))

    @app.get("/healthz")
    async def healthz() -> Response:
        """Ready: every actor runs (one that fails stops Foreman); the backend's state."""
        backend: dict[str, object] = {"url": gateway.upstream.base_url, "reachable": False}
        with trio.move_on_after(HEALTH_PROBE_SECONDS):
            try:
                status, content, _ = await gateway.upstream.forward("GET", "/api/version")
                backend["reachable"] = status == 200
                backend["version"] = json.loads(content).get("version")
            except (Unavailable, ValueError, AttributeError) as error:
                backend["error"] = str(error)
        actors = dict.fromkeys(("journal", "scheduler", "worker", "janitor", "http"), "running")
        return OllamaJSON({"status": "ok", "actors": actors, "backend": backend})

    answer_errors_as_ollama(app)
    return app
