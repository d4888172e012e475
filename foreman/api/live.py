"""``GET /events``: the events as they commit, as server-sent events, from the journal's
subscription (never by polling the log).

A client that reads slowly must not hold the journal up (a subscription that falls
behind does): each stream relays the commits into a bounded buffer of its own without
waiting, and a client that lets the buffer fill is disconnected; it reconnects and
reads the summary again. A tenant's key gets the events of its own jobs and of their
webhook deliveries only; an admin's (or anyone's, with no key in use) every event.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import trio
from fastapi import APIRouter
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from foreman.actors import JournalClient
from foreman.api.auth import Principal, principal
from foreman.events.log import EventLog
from foreman.events.reader import Reader
from foreman.events.summary import summary
from foreman.events.types import DELIVERY_STREAM_PREFIX, RecordedEvent, stored_data

CLIENT_BUFFER = 1024
"""Events a stream may hold for a slow client before it is disconnected."""
KEEPALIVE_SECONDS = 15.0
"""A comment line this often, so proxies and the page see the stream is alive."""
OWNERS_REMEMBERED = 10_000
JOB_STREAM = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")


@dataclass(frozen=True, slots=True)
class LiveApi:
    journal: JournalClient
    reader: Reader
    buffer: int = CLIENT_BUFFER


def live_routes(api: LiveApi) -> APIRouter:
    router = APIRouter(tags=["dashboard"])

    # Not in the OpenAPI schema: a stream that never ends is no operation a client
    # generator (or schemathesis) can call and check; ADR-0046 describes it.
    @router.get("/events", include_in_schema=False)
    async def follow(who: principal) -> Response:
        """Every event from now on as it commits (``text/event-stream``; each ``data``
        a JSON object: seq, stream, type, recorded_at, summary); a tenant's key gets its
        own jobs' events. A client that falls far behind is disconnected."""
        return EventStream(api, who)

    return router


class EventStream(Response):
    """The response: subscribes when sent, relays, writes, and stops with the client."""

    media_type = "text/event-stream"

    def __init__(self, api: LiveApi, who: Principal) -> None:
        super().__init__(
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            media_type=self.media_type,
        )
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.api = api
        self.who = who
        self.owners: dict[str, str | None] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        committed = await self.api.journal.subscribe()
        frames, pending = trio.open_memory_channel[bytes](self.api.buffer)
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": b": following\n\n", "more_body": True})
        async with committed, trio.open_nursery() as nursery:
            nursery.start_soon(self._relay, committed, frames, nursery.cancel_scope)
            nursery.start_soon(_write, pending, send, nursery.cancel_scope)
            nursery.start_soon(_until_gone, receive, nursery.cancel_scope)

    async def _relay(
        self,
        committed: trio.MemoryReceiveChannel[list[RecordedEvent]],
        frames: trio.MemorySendChannel[bytes],
        done: trio.CancelScope,
    ) -> None:
        async for events in committed:
            for event in events:
                if await self._visible(event) and not _offer(frames, _frame(event)):
                    done.cancel()  # the client lags: let it go, not the journal
                    return
        done.cancel()  # the journal stopped

    async def _visible(self, event: RecordedEvent) -> bool:
        tenant = self.who.sees
        if tenant is None:
            return True
        job = event.stream.removeprefix(DELIVERY_STREAM_PREFIX)
        if not JOB_STREAM.fullmatch(job):
            return False
        if job not in self.owners:
            if len(self.owners) >= OWNERS_REMEMBERED:
                self.owners.clear()
            self.owners[job] = await self._owner(event, job)
        return self.owners[job] == tenant

    async def _owner(self, event: RecordedEvent, job: str) -> str | None:
        if event.type == "JobSubmitted":
            return _tenant_of(stored_data(event.data))
        return await self.api.reader.read(_job_tenant, job)


def _tenant_of(data: object) -> str | None:
    tenant = data.get("tenant") if isinstance(data, dict) else None
    return tenant if isinstance(tenant, str) else None


def _job_tenant(log: EventLog, job: str) -> str | None:
    row = log.conn.execute("SELECT tenant FROM jobs WHERE id = ?", (job,)).fetchone()
    return None if row is None else row[0]


def _offer(frames: trio.MemorySendChannel[bytes], frame: bytes) -> bool:
    """Whether the frame fit in the client's buffer."""
    try:
        frames.send_nowait(frame)
    except trio.WouldBlock:
        return False
    return True


def _frame(event: RecordedEvent) -> bytes:
    data = {
        "seq": event.seq,
        "stream": event.stream,
        "type": event.type,
        "recorded_at": event.recorded_at,
        "summary": summary(event.type, stored_data(event.data)),
    }
    return f"id: {event.seq}\ndata: {json.dumps(data)}\n\n".encode()


async def _write(
    pending: trio.MemoryReceiveChannel[bytes], send: Send, done: trio.CancelScope
) -> None:
    while True:
        frame = b": keepalive\n\n"
        with trio.move_on_after(KEEPALIVE_SECONDS):
            frame = await pending.receive()
        try:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        except OSError:
            done.cancel()
            return


async def _until_gone(receive: Receive, done: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    done.cancel()
