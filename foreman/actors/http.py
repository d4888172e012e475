"""The HTTP actor: Hypercorn's trio server hosting the FastAPI app, in the nursery."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import cast

import trio
from fastapi import FastAPI
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework

from foreman.config import Address

GRACEFUL_SECONDS = 3.0
"""How long open requests may finish once the server stops accepting."""
BACKLOG = 2048
"""Connections the kernel holds before they are accepted: a burst of callers (each
waiting on a queued job) must not be reset, as Hypercorn's default of 100 lets happen."""


async def serve_http(
    app: FastAPI,
    address: Address,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``shutdown_trigger`` returns; reports the URL once listening."""
    config = Config()
    config.bind = [str(address)]
    config.graceful_timeout = GRACEFUL_SECONDS
    config.backlog = BACKLOG
    config.accesslog = None
    # Starlette and Hypercorn describe the same ASGI interface with different types.
    asgi = cast(ASGIFramework, app)
    async with trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(
            partial(serve, asgi, config, shutdown_trigger=shutdown_trigger)
        )
        task_status.started(urls[0])
