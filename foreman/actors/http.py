"""The HTTP actor: Hypercorn's trio server hosting the FastAPI app, in the nursery."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import cast

import trio
from fastapi import FastAPI
from hypercorn.config import Config, Sockets
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework

GRACEFUL_SECONDS = 3.0
"""How long open requests may finish once the server stops accepting."""
BACKLOG = 2048
"""Connections the kernel holds before they are accepted: a burst of callers (each
waiting on a queued job) must not be reset, as Hypercorn's default of 100 lets happen."""
HEADER_TIMEOUT_SECONDS = 5.0
"""Hypercorn's own keep-alive, made explicit: FOREMAN_HEADER_TIMEOUT's default."""


class _Config(Config):
    """Hypercorn's config, its listening sockets bounding how long data sent may go
    unacknowledged (``TCP_USER_TIMEOUT``, which accepted connections inherit; Linux
    applies it to a peer's zero window too): a caller that stops reading is cut by the
    kernel, since Hypercorn's writes to a socket cannot be cancelled."""

    def __init__(self, send_timeout: float | None) -> None:
        super().__init__()
        self.send_timeout = send_timeout

    def create_sockets(self) -> Sockets:
        sockets = super().create_sockets()
        option = getattr(socket, "TCP_USER_TIMEOUT", None)  # Linux only
        if option is not None and self.send_timeout is not None:
            for listening in sockets.insecure_sockets + sockets.secure_sockets:
                listening.setsockopt(socket.IPPROTO_TCP, option, int(self.send_timeout * 1000))
        return sockets


async def serve_http(
    app: FastAPI,
    bind: str,
    *,
    send_timeout: float | None = None,
    header_timeout: float = HEADER_TIMEOUT_SECONDS,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``bind`` (``host:port``) until ``shutdown_trigger`` returns;
    reports the URL once listening.
    A connection whose data goes unacknowledged ``send_timeout`` seconds is cut
    (None: the kernel's own bound, many minutes).

    A connection is closed when it has not sent a whole request head
    ``header_timeout`` seconds after it opened or after its previous response: that
    is Hypercorn's keep-alive timer, which runs from then until a head is complete
    (bytes arriving do not reset it). So it bounds a client dribbling its headers,
    and is how long an idle connection is kept alive. (Hypercorn's ``read_timeout``
    would not do: it restarts at every byte.)"""
    config = _Config(send_timeout)
    config.keep_alive_timeout = header_timeout
    config.bind = [bind]
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
