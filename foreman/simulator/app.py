"""The simulator's ASGI app: Ollama's API plus the ``/_sim/`` control endpoints."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.responses import PlainTextResponse, Response

from foreman.simulator.api import ollama_routes
from foreman.simulator.control import control_routes
from foreman.simulator.state import Simulator
from foreman.wire import OllamaError, error_response


def create_app(sim: Simulator) -> FastAPI:
    # No /docs or /openapi.json: Ollama answers 404 there, so the simulator does too.
    app = FastAPI(
        title="Foreman's Ollama simulator", docs_url=None, redoc_url=None, openapi_url=None
    )
    app.include_router(ollama_routes(sim))
    app.include_router(control_routes(sim))

    @app.exception_handler(OllamaError)
    async def ollama_error(request: Request, error: OllamaError) -> Response:
        return error_response(error)

    @app.exception_handler(HTTPException)
    async def routing_error(request: Request, error: HTTPException) -> Response:
        """Unknown paths and wrong methods: plain text, as Ollama's router (gin) answers."""
        status = error.status_code
        phrase = "page not found" if status == 404 else HTTPStatus(status).phrase.lower()
        return PlainTextResponse(f"{status} {phrase}", status_code=status)

    return app
