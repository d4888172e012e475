"""What every request goes through before any route sees it.

- A body over ``FOREMAN_MAX_BODY`` is refused with 413: at once when its
  ``Content-Length`` says so, else as soon as the bytes received pass the limit
  (a chunked body is never read whole). A few paths have their own limit
  (uploads: ``POST /v1/files`` takes a batch input of up to 200 MB).
- A body that has not all arrived ``FOREMAN_BODY_TIMEOUT`` after its request's
  head is refused with 408. (The head itself is bounded by Hypercorn's idle
  timer: ``FOREMAN_HEADER_TIMEOUT``, in :mod:`foreman.actors.http`.) Both
  refusals close the connection.
- An exception no route handled is logged with its traceback and a request id;
  the client gets a JSON 500 naming that id, never the traceback.
- The response's last message always finishes: see :meth:`_Exchange.send`.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping

import trio
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from foreman.api.errors import error_response
from foreman.units import format_duration

logger = logging.getLogger(__name__)

TOO_LARGE = "request body is over the {limit}-byte limit (FOREMAN_MAX_BODY)"
TOO_LARGE_UPLOAD = "upload is over the {limit}-byte limit of this endpoint"
TOO_SLOW = "request body did not arrive within {timeout} (FOREMAN_BODY_TIMEOUT)"
INTERNAL = "internal error: see Foreman's log (request {request_id})"
CLOSE = {"Connection": "close"}


class RequestGuard:
    """ASGI middleware enforcing the body limits and answering JSON for any failure."""

    def __init__(
        self,
        app: ASGIApp,
        max_body: int,
        body_timeout: float,
        uploads: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.body_timeout = body_timeout
        self.uploads = dict(uploads or {})
        """Paths whose POST body has its own limit, in bytes."""

    def _limit(self, scope: Scope) -> tuple[int, str]:
        upload = self.uploads.get(scope["path"]) if scope["method"] == "POST" else None
        if upload is None:
            return self.max_body, TOO_LARGE.format(limit=self.max_body)
        return upload, TOO_LARGE_UPLOAD.format(limit=upload)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, too_large = self._limit(scope)
        exchange = _Exchange(receive, send, limit, too_large, self.body_timeout)
        try:
            if _declared_length(scope) > limit:
                raise exchange.refuse(413, too_large)
            await self.app(scope, exchange.receive, exchange.send)
        except Exception as error:  # every failure is answered; none reaches Hypercorn
            await _answer_failure(scope, exchange, error)


async def _answer_failure(scope: Scope, exchange: _Exchange, error: Exception) -> None:
    """Our own 413/408 (even inside an exception group), or a logged 500. A response
    already begun cannot change: it is left unfinished, so Hypercorn cuts it."""
    refused = exchange.refused
    if refused is None:
        request_id = secrets.token_hex(6)
        logger.error(
            "http: %s %s failed (request %s)",
            scope["method"],
            scope["path"],
            request_id,
            exc_info=error,
        )
        refused = HTTPException(500, INTERNAL.format(request_id=request_id))
    if exchange.started:
        return
    response = error_response(
        scope["path"], refused.status_code, str(refused.detail), refused.headers
    )
    await response(scope, exchange.receive, exchange.send)


def _declared_length(scope: Scope) -> int:
    declared = Headers(scope=scope).get("content-length", "")
    return int(declared) if declared.isdigit() else 0


class _Exchange:
    """One request's ``receive`` and ``send`` as the app sees them."""

    def __init__(
        self, receive: Receive, send: Send, max_body: int, too_large: str, body_timeout: float
    ) -> None:
        self._receive = receive
        self._send = send
        self._max_body = max_body
        self._too_large = too_large
        self._body_timeout = body_timeout
        self._deadline = trio.current_time() + body_timeout
        self._received = 0
        self._body_complete = False
        self._last_sent: trio.Event | None = None
        self.started = False
        """The response has begun: its status can no longer change."""
        self.refused: HTTPException | None = None

    def refuse(self, status: int, message: str) -> HTTPException:
        """The refusal to raise; FastAPI re-raises an HTTPException met while reading a
        body, and the app's handler answers it."""
        self.refused = HTTPException(status, message, headers=CLOSE)
        return self.refused

    async def receive(self) -> Message:
        if self._body_complete or self.started:
            return await self._after_body()
        with trio.move_on_at(self._deadline):
            message = await self._receive()
            self._count(message)
            return message
        raise self.refuse(408, TOO_SLOW.format(timeout=format_duration(self._body_timeout)))

    def _count(self, message: Message) -> None:
        if message["type"] != "http.request":
            self._body_complete = True  # disconnected: nothing more comes
            return
        self._received += len(message.get("body", b""))
        if self._received > self._max_body:
            raise self.refuse(413, self._too_large)
        self._body_complete = not message.get("more_body", False)

    async def _after_body(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect" and self._last_sent is not None:
            await self._last_sent.wait()
        return message

    async def send(self, message: Message) -> None:
        """Send; the response's last message is sent to its end, whatever the app does
        meanwhile.

        Hypercorn queues ``http.disconnect`` for the app from inside the app's own last
        send, then decides whether to close the connection or wait for the next
        request. Starlette's ``FileResponse`` and ``StreamingResponse`` cancel their
        sender when a disconnect comes, which would stop Hypercorn half-way: the
        connection neither closed nor timed, held for ever. So that disconnect waits
        for the send to return (:meth:`_after_body`). And a body the app left unread is
        drained meanwhile, or Hypercorn's full queue to the app would block that send.
        """
        if message["type"] == "http.response.start":
            self.started = True
        if message["type"] != "http.response.body" or message.get("more_body", False):
            await self._send(message)
            return
        self._last_sent = trio.Event()
        try:
            if self._body_complete:
                await self._send(message)
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._drain)
                await self._send(message)
                nursery.cancel_scope.cancel()
        finally:
            self._last_sent.set()

    async def _drain(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
