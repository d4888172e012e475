"""Run the simulator with Hypercorn's trio worker, inside the caller's nursery.

Start it with ``url = await nursery.start(serve_simulator, config)``. An
outage (``POST /_sim/outage``) stops Hypercorn, which closes the listening
socket (clients get ``ECONNREFUSED``) and drops open connections after
``GRACEFUL_SECONDS``; the model is unloaded, as after a crash, and Hypercorn
starts again on the same address once the outage is over.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework

from foreman.simulator.app import create_app
from foreman.simulator.config import SimulatorConfig
from foreman.simulator.state import Simulator

BACKLOG = 2048
"""Like Ollama, take a burst of connections without resetting any."""
GRACEFUL_SECONDS = 0.2
"""How long requests in flight may finish when the server stops (an outage, or shutdown)."""


async def serve_simulator(
    config: SimulatorConfig,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns (or until cancelled).

    Reports the base URL once listening, e.g. ``http://127.0.0.1:11434`` (the
    real port when ``config.listen`` asks for port 0).
    """
    sim = Simulator(config)
    # Starlette and Hypercorn describe the same ASGI interface with different types.
    app = cast(ASGIFramework, create_app(sim))
    bind = config.listen
    url: str | None = None
    async with trio.open_nursery() as nursery:
        if shutdown_trigger is not None:
            nursery.start_soon(_stop_after, shutdown_trigger, sim)
        while True:
            settings = Config()
            settings.bind = [bind]
            settings.graceful_timeout = GRACEFUL_SECONDS
            settings.backlog = BACKLOG
            async with trio.open_nursery() as run:
                urls: list[str] = await run.start(
                    partial(serve, app, settings, shutdown_trigger=sim.outage.wait)
                )
                if url is None:
                    url = urls[0]
                    bind = url.removeprefix("http://")
                    task_status.started(url)
            sim.gpu.unload()
            pause = sim.outage.take_pause()
            if pause is None:
                break
            with trio.move_on_after(pause):
                await sim.outage.wait()  # only a shutdown can end the outage early
            if sim.outage.stopping:
                break
        nursery.cancel_scope.cancel()


async def _stop_after(trigger: Callable[[], Awaitable[None]], sim: Simulator) -> None:
    await trigger()
    sim.outage.stop()
