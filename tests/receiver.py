"""A webhook receiver over real HTTP, for the tests: it records every request and
answers from a script (a status, headers, a stall), then with 200.

It runs in the test's nursery on Hypercorn, as Foreman's HTTP actor does. A
receiver that is "down" is one not started yet: :func:`free_port` picks the
port Foreman is told about before anything listens there.
"""

from __future__ import annotations

import json
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import trio
from fastapi import FastAPI

from foreman.actors.http import serve_http

RECEIVER_HOST = "127.0.0.1"


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    stall: float = 0.0
    """Seconds to wait before answering."""
    trickle: int = 0
    """Answer with this many 16 KiB chunks, 10 ms apart, instead of a short body."""


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    """Trio's clock when the request arrived."""

    @property
    def payload(self) -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(self.body))

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    def __init__(self, *answers: Answer, stall_between: Callable[[], float] | None = None) -> None:
        self.script = deque(answers)
        self.received: list[Received] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self._stall_between = stall_between
        self._arrived = trio.Event()
        self.url = ""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {name.decode().lower(): value.decode() for name, value in scope["headers"]}
        self.received.append(Received(headers, body, trio.current_time()))
        self._arrived.set()
        self._arrived = trio.Event()
        answer = self.script.popleft() if self.script else Answer()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await trio.sleep(answer.stall + (self._stall_between() if self._stall_between else 0))
        finally:
            self.in_flight -= 1
        raw_headers = [(k.encode(), v.encode("latin-1")) for k, v in answer.headers.items()]
        await send({"type": "http.response.start", "status": answer.status, "headers": raw_headers})
        for _ in range(answer.trickle):
            await send({"type": "http.response.body", "body": bytes(16384), "more_body": True})
            await trio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"ok" if answer.status < 300 else b"no"})

    async def until(self, count: int) -> list[Received]:
        """Every request so far, once at least ``count`` have arrived."""
        with trio.fail_after(20):
            while len(self.received) < count:
                await self._arrived.wait()
        return self.received

    def by_job(self) -> dict[str, list[str]]:
        """Each job's notification types, in the order they arrived (first tries only)."""
        seen: set[str] = set()
        types: dict[str, list[str]] = {}
        for request in self.received:
            if request.id not in seen:
                seen.add(request.id)
                payload = request.payload
                types.setdefault(payload["job"]["id"], []).append(payload["type"])
        return types


def free_port(host: str = RECEIVER_HOST) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.bind((host.strip("[]"), 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def serving(
    receiver: Receiver, port: int = 0, host: str = RECEIVER_HOST
) -> AsyncIterator[Receiver]:
    """``receiver`` listening on ``host:port`` (an IPv6 host in brackets) until the
    block ends; then it stops at once, answers it was still stalling or trickling cut
    off."""
    async with trio.open_nursery() as nursery:
        base = await nursery.start(
            partial(
                serve_http,
                cast(FastAPI, receiver),
                f"{host}:{port}",
                shutdown_trigger=trio.sleep_forever,
            )
        )
        receiver.url = f"{base}/hook"
        yield receiver
        nursery.cancel_scope.cancel()
