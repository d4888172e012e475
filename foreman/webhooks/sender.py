"""One delivery attempt: POST the payload, signed, and judge the answer.

A receiver cannot hurt Foreman: redirects are not followed, at most
``RESPONSE_LIMIT`` bytes of an answer are read, and the whole exchange
(connect, send, answer) is bounded by the timeout, not each read alone, so a
receiver trickling bytes cannot keep a delivery slot for ever.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import trio

from foreman import __version__
from foreman.units import format_duration
from foreman.webhooks.policy import host_allowed, is_retryable, is_success, retry_after
from foreman.webhooks.signing import signature_headers

logger = logging.getLogger(__name__)

RESPONSE_LIMIT = 64 * 1024
"""Bytes of a receiver's answer read at most; the rest is dropped with the connection."""
ERROR_EXCERPT = 200
"""Characters of an error answer kept in the delivery's ``last_error``."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one attempt went: ``error`` is None when the receiver took it (2xx)."""

    status: int | None
    error: str | None = None
    retryable: bool = False
    retry_after: float | None = None


class Sender:
    def __init__(
        self,
        *,
        key: bytes | None,
        timeout: float,
        allowed_hosts: frozenset[str] | None,
        connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._key = key
        self.timeout = timeout
        self._allowed_hosts = allowed_hosts
        # A client of one connection per attempt in flight, rather than one client
        # pooling them all: httpcore walks its whole pool and polls every idle
        # connection on each request, which cost a third of a delivery's time.
        # They share one TLS context (httpx's default): each client building its own
        # took about 30 ms, half a second of Foreman's start for 16 of them.
        tls = httpx.create_ssl_context()
        self._clients = [
            httpx.AsyncClient(
                follow_redirects=False,
                timeout=None,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                transport=transport,
                verify=tls,
            )
            for _ in range(connections)
        ]
        self._free_send, self._free = trio.open_memory_channel[httpx.AsyncClient](connections)
        for client in self._clients:
            self._free_send.send_nowait(client)

    @property
    def signed(self) -> bool:
        return self._key is not None

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()

    async def send(self, url: str, webhook_id: str, body: bytes) -> Attempt:
        if not host_allowed(url, self._allowed_hosts):
            return Attempt(None, "the host is not in FOREMAN_WEBHOOK_ALLOWED_HOSTS")
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": f"Foreman/{__version__}",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
        }
        if self._key is not None:
            headers |= signature_headers(self._key, webhook_id, timestamp, body)
        client = await self._free.receive()
        try:
            return await self._attempt(client, url, headers, body)
        finally:
            self._free_send.send_nowait(client)

    async def _attempt(
        self, client: httpx.AsyncClient, url: str, headers: dict[str, str], body: bytes
    ) -> Attempt:
        with trio.move_on_after(self.timeout):
            try:
                return await self._post(client, url, headers, body)
            except httpx.HTTPError as error:  # the network, or the receiver's HTTP
                return Attempt(None, _described(error), retryable=True)
            except (httpx.InvalidURL, UnicodeError) as error:  # a host that cannot be named
                return Attempt(None, f"cannot send to this URL: {_described(error)}")
            except Exception as error:
                # Whatever else a receiver's answer provokes ends this delivery, not the
                # dispatcher: a notification that fails like this would fail again.
                logger.exception("webhook %s to %s failed unexpectedly", headers["webhook-id"], url)
                return Attempt(None, f"unexpected failure: {_described(error)}")
        return Attempt(None, f"no answer within {format_duration(self.timeout)}", retryable=True)

    async def _post(
        self, client: httpx.AsyncClient, url: str, headers: dict[str, str], body: bytes
    ) -> Attempt:
        async with client.stream("POST", url, content=body, headers=headers) as response:
            answer = await _read_bounded(response)
        status = response.status_code
        if is_success(status):
            return Attempt(status)
        excerpt = answer[:ERROR_EXCERPT].decode("utf-8", errors="replace").strip()
        error = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
        if response.is_redirect:
            location = response.headers.get("location", "")
            return Attempt(status, f"HTTP {status}: redirects are not followed ({location})")
        if is_retryable(status):
            after = retry_after(response.headers.get("retry-after"), datetime.now(UTC))
            return Attempt(status, error, retryable=True, retry_after=after)
        return Attempt(status, error)


def _described(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


async def _read_bounded(response: httpx.Response) -> bytes:
    answer = bytearray()
    async for chunk in response.aiter_raw():
        answer += chunk
        if len(answer) >= RESPONSE_LIMIT:
            break
    return bytes(answer[:RESPONSE_LIMIT])
