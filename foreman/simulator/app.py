"""The simulator's ASGI app: Ollama's API, its OpenAI-compatible ``/v1``, and the ``/_sim/``
control endpoints."""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.responses import Response

from foreman.ollama_protocol import answer_errors_as_ollama
from foreman.simulator.api import ollama_routes
from foreman.simulator.control import control_routes
from foreman.simulator.faults import Answered
from foreman.simulator.openai import answer_errors_as_openai, openai_routes
from foreman.simulator.state import Simulator


def create_app(sim: Simulator) -> FastAPI:
    # No /docs or /openapi.json: Ollama answers 404 there, so the simulator does too.
    app = FastAPI(
        title="Foreman's Ollama simulator", docs_url=None, redoc_url=None, openapi_url=None
    )
    app.include_router(ollama_routes(sim))
    app.include_router(openai_routes(sim))
    app.include_router(control_routes(sim))

    answer_errors_as_ollama(app)
    answer_errors_as_openai(app)

    async def verbatim(request: Request, error: Exception) -> Response:
        assert isinstance(error, Answered)
        fault = error.fault
        return Response(fault.body, fault.status, media_type=fault.content_type)

    app.add_exception_handler(Answered, verbatim)
    return app
