"""One delivery attempt: POST the payload, signed, and judge the answer.

A receiver cannot hurt Foreman: redirects are not followed, at most
``RESPONSE_LIMIT`` bytes of an answer are read, and the whole exchange
(connect, send, answer) is bounded by the timeout, not each read alone, so a
receiver trickling bytes cannot keep a delivery slot for ever. Nor can a
submitter aim Foreman at its own network: connections go through
:class:`~foreman.webhooks.guard.GuardedNetwork`, to public addresses only
(ADR-0040).

The requests go through httpcore, httpx's own transport, since httpx takes no
network backend; httpx still reads the URL (IDNA), as the submission did. So no
proxy variable applies: a proxy would resolve the name itself, after the check.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpcore
import httpx
import trio

from foreman import __version__
from foreman.units import format_duration
from foreman.webhooks.policy import is_retryable, is_success, retry_after
from foreman.webhooks.signing import signature_headers
from foreman.webhooks.targets import TargetRefused

logger = logging.getLogger(__name__)

RESPONSE_LIMIT = 64 * 1024
"""Bytes of a receiver's answer read at most; the rest is dropped with the connection."""
ERROR_EXCERPT = 200
"""Characters of an error answer kept in the delivery's ``last_error``."""
REDIRECTS = frozenset({301, 302, 303, 307, 308})
TRANSPORT_ERRORS = (httpcore.NetworkError, httpcore.TimeoutException, httpcore.ProtocolError)
"""httpcore's failures of the connection or of the receiver's HTTP: worth another try."""


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
        network: httpcore.AsyncNetworkBackend,
        connections: int,
    ) -> None:
        """``network`` makes the connections: Foreman's is a
        :class:`~foreman.webhooks.guard.GuardedNetwork`."""
        self._key = key
        self.timeout = timeout
        # A pool of one connection per attempt in flight, rather than one pool of them
        # all: httpcore walks its whole pool and polls every idle connection on each
        # request, which cost a third of a delivery's time. They share one TLS
        # context (httpx's default): each building its own took about 30 ms, half a
        # second of Foreman's start for 16 of them.
        tls = httpx.create_ssl_context()
        self._pools = [
            httpcore.AsyncConnectionPool(
                ssl_context=tls,
                max_connections=1,
                max_keepalive_connections=1,
                network_backend=network,
            )
            for _ in range(connections)
        ]
        self._free_send, self._free = trio.open_memory_channel[httpcore.AsyncConnectionPool](
            connections
        )
        for pool in self._pools:
            self._free_send.send_nowait(pool)

    @property
    def signed(self) -> bool:
        return self._key is not None

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()

    async def send(self, url: str, webhook_id: str, body: bytes) -> Attempt:
        timestamp = int(time.time())
        headers = [
            (b"content-type", b"application/json"),
            (b"user-agent", f"Foreman/{__version__}".encode()),
            (b"webhook-id", webhook_id.encode()),
            (b"webhook-timestamp", str(timestamp).encode()),
        ]
        if self._key is not None:
            signatures = signature_headers(self._key, webhook_id, timestamp, body)
            headers += [(name.encode(), value.encode()) for name, value in signatures.items()]
        pool = await self._free.receive()
        try:
            return await self._attempt(pool, url, webhook_id, headers, body)
        finally:
            self._free_send.send_nowait(pool)

    async def _attempt(
        self,
        pool: httpcore.AsyncConnectionPool,
        url: str,
        webhook_id: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> Attempt:
        with trio.move_on_after(self.timeout):
            try:
                return await self._post(pool, url, headers, body)
            except TargetRefused as refused:  # it would be refused again
                return Attempt(None, str(refused))
            except TRANSPORT_ERRORS as error:  # the network, or the receiver's HTTP
                return Attempt(None, _described(error), retryable=True)
            except (httpx.InvalidURL, UnicodeError) as error:  # a host that cannot be named
                return Attempt(None, f"cannot send to this URL: {_described(error)}")
            except Exception as error:
                # Whatever else a receiver's answer provokes ends this delivery, not the
                # dispatcher: a notification that fails like this would fail again.
                logger.exception("webhook %s to %s failed unexpectedly", webhook_id, url)
                return Attempt(None, f"unexpected failure: {_described(error)}")
        return Attempt(None, f"no answer within {format_duration(self.timeout)}", retryable=True)

    async def _post(
        self,
        pool: httpcore.AsyncConnectionPool,
        url: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> Attempt:
        parsed = httpx.URL(url)
        target = httpcore.URL(
            scheme=parsed.raw_scheme, host=parsed.raw_host, port=parsed.port, target=parsed.raw_path
        )
        headers = [(b"host", parsed.netloc), *headers]
        async with pool.stream("POST", target, headers=headers, content=body) as response:
            answer = await _read_bounded(response)
        status = response.status
        if is_success(status):
            return Attempt(status)
        excerpt = answer[:ERROR_EXCERPT].decode("utf-8", errors="replace").strip()
        error = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
        location = _header(response, b"location")
        if status in REDIRECTS and location is not None:
            return Attempt(status, f"HTTP {status}: redirects are not followed ({location})")
        if is_retryable(status):
            after = retry_after(_header(response, b"retry-after"), datetime.now(UTC))
            return Attempt(status, error, retryable=True, retry_after=after)
        return Attempt(status, error)


def _described(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def _header(response: httpcore.Response, name: bytes) -> str | None:
    """The first ``name`` header of the answer (lower case), or None."""
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _read_bounded(response: httpcore.Response) -> bytes:
    answer = bytearray()
    async for chunk in response.aiter_stream():
        answer += chunk
        if len(answer) >= RESPONSE_LIMIT:
            break
    return bytes(answer[:RESPONSE_LIMIT])
