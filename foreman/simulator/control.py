"""The simulator's own endpoints, under ``/_sim/`` (Ollama has nothing there).

- ``GET /_sim/stats``: model loads so far, the resident model and its load
  options, how many requests wait for the GPU, and every completed generation
  with its start and end (Unix seconds). ``?until_waiting=N`` answers once N
  requests wait (a test's way to know a request has reached the GPU's queue),
  ``?until_generations=N`` once N generations have completed.
- ``POST /_sim/reset``: clear the counters and the faults, unload the model.
- ``GET|POST|DELETE /_sim/faults``: list, arm (a fault or a list of them), clear.
- ``POST /_sim/outage {"seconds": S}``: refuse connections for S seconds.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.responses import Response

from foreman.ollama_protocol import OllamaError, OllamaJSON, decode_json, parse_body
from foreman.simulator.faults import FAULT_LIST
from foreman.simulator.schemas import OutageRequest
from foreman.simulator.state import Simulator


def control_routes(sim: Simulator) -> APIRouter:
    router = APIRouter(prefix="/_sim")

    def stats() -> dict[str, Any]:
        resident = sim.gpu.resident
        return {
            "loads": sim.gpu.loads,
            "resident": resident
            and {"model": resident.model.name, "options": dict(resident.key.options)},
            "waiting": sim.gpu.waiting,
            "generations": [asdict(record) for record in sim.gpu.generations],
        }

    def faults() -> dict[str, Any]:
        return {"faults": [fault.model_dump() for fault in sim.faults.armed()]}

    @router.get("/stats")
    async def get_stats(
        until_waiting: int | None = None, until_generations: int | None = None
    ) -> Response:
        if until_waiting is not None:
            await sim.gpu.until_waiting(until_waiting)
        if until_generations is not None:
            await sim.gpu.until_generated(until_generations)
        return OllamaJSON(stats())

    @router.post("/reset")
    async def reset() -> Response:
        sim.gpu.reset()
        sim.faults.clear()
        return OllamaJSON(stats())

    @router.get("/faults")
    async def get_faults() -> Response:
        return OllamaJSON(faults())

    @router.post("/faults")
    async def arm_faults(request: Request) -> Response:
        data = decode_json(await request.body())
        try:
            armed = FAULT_LIST.validate_python(data if isinstance(data, list) else [data])
        except ValidationError as error:
            raise OllamaError(400, str(error)) from None
        sim.faults.arm(armed)
        return OllamaJSON(faults())

    @router.delete("/faults")
    async def clear_faults() -> Response:
        sim.faults.clear()
        return OllamaJSON(faults())

    @router.post("/outage")
    async def outage(request: Request) -> Response:
        body = parse_body(await request.body(), OutageRequest)

        async def begin() -> None:  # async: Starlette runs a sync task in a thread
            sim.outage.begin(body.seconds)

        # Begins once the answer is sent: the server stops listening, drops connections.
        return OllamaJSON(
            {"outage_seconds": body.seconds}, status_code=202, background=BackgroundTask(begin)
        )

    return router
