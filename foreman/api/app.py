"""The FastAPI application the HTTP actor serves."""

from __future__ import annotations

import json
from http import HTTPStatus

import trio
from fastapi import FastAPI, HTTPException, Request
from starlette.responses import PlainTextResponse, Response

from foreman import __version__
from foreman.api.ollama import Gateway, ollama_routes
from foreman.upstream import Unavailable
from foreman.wire import OllamaError, OllamaJSON, error_response

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
        actors = dict.fromkeys(("journal", "scheduler", "worker", "http"), "running")
        return OllamaJSON({"status": "ok", "actors": actors, "backend": backend})

    @app.exception_handler(OllamaError)
    async def ollama_error(request: Request, error: OllamaError) -> Response:
        return error_response(error)

    @app.exception_handler(HTTPException)
    async def routing_error(request: Request, error: HTTPException) -> Response:
        """Unknown paths and wrong methods: plain text, as Ollama's router answers."""
        status = error.status_code
        phrase = "page not found" if status == 404 else HTTPStatus(status).phrase.lower()
        return PlainTextResponse(f"{status} {phrase}", status_code=status)

    return app
