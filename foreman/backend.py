"""The backend Foreman runs jobs on: one Ollama (or the simulator), over HTTP.

:meth:`Backend.generate` sends a job's request body as it was submitted and
relays every NDJSON line the backend streams, as it arrives. It sorts failures
the way the worker must treat them:

- :class:`BackendUnreachable`: no answer at all (connection refused or reset, a
  timeout before the response began). Retryable: the job has not run.
- :class:`BackendError`: the backend answered with an error status, or ended
  its stream with an ``{"error": ...}`` line or by dropping the connection.
  Final: the job ran, or the backend refused it.

Three kinds of traffic never wait for each other's connections: the worker's
jobs, the pass-through routes (bounded by the caller: FOREMAN_MAX_PASSTHROUGH)
and the health probe each have a client, and so a connection pool, of their own.
The jobs' calls go through httpcore, httpx's own transport, without httpx's
client layer on top: a third less CPU per call on the hot path (ADR-0038).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpcore
import httpx

ENDPOINTS = {"chat": "/api/chat", "generate": "/api/generate", "embed": "/api/embed"}
ERROR_BODY_LIMIT = 64 * 1024
"""Bytes of an error answer kept: enough for any message, bounded for a hostile one."""

CONNECT_SECONDS = 10.0
PROBE_SECONDS = 2.0
"""The longest a probe (``/healthz``, the loaded model at start) waits for anything."""
JOB_TIMEOUTS = {"connect": CONNECT_SECONDS, "read": None, "write": None, "pool": None}
"""No read timeout: a generation takes as long as it takes (FOREMAN_JOB_TIMEOUT bounds
an attempt as a whole, in the worker)."""
JOB_CONNECTIONS = 2
"""Per slot: each slot's worker has two calls at the backend at most (ADR-0026)."""
SPARE_JOB_CONNECTIONS = 2
PROBE_CONNECTIONS = 2
IDLE_PASSTHROUGH_CONNECTIONS = 16

Relay = Callable[[bytes], Awaitable[None]]


class BackendUnreachable(Exception):
    """The backend could not be reached, or did not start answering in time."""


class BackendError(Exception):
    """The backend answered with an error; ``status`` is None for one mid-stream."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class BackendLost(BackendError):
    """The connection broke off in the middle of the answer: the host went away."""

    def __init__(self, message: str) -> None:
        super().__init__(message, None)


class Backend:
    """An HTTP client for one Ollama backend (or the simulator)."""

    def __init__(self, base_url: str, *, slots: int = 1) -> None:
        """``slots``: the jobs the host runs at once (a worker each)."""
        self.base_url = base_url
        tls = httpx.create_ssl_context()  # httpx's default, built once: ~30 ms each
        self._jobs = httpcore.AsyncConnectionPool(
            ssl_context=tls, max_connections=JOB_CONNECTIONS * slots + SPARE_JOB_CONNECTIONS
        )
        base = httpx.URL(base_url)
        self._job_urls = {kind: _url(base, path) for kind, path in ENDPOINTS.items()}
        self._job_headers = [(b"Host", base.netloc), (b"Content-Type", b"application/json")]
        # Unbounded pool: the routes bound how many calls are in flight, and a call
        # ends with its caller (foreman.api.ollama).
        self._passthrough = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(None, connect=CONNECT_SECONDS),
            limits=httpx.Limits(
                max_connections=None, max_keepalive_connections=IDLE_PASSTHROUGH_CONNECTIONS
            ),
            verify=tls,
        )
        self._probe = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(PROBE_SECONDS),
            limits=httpx.Limits(max_connections=PROBE_CONNECTIONS),
            verify=tls,
        )

    def __str__(self) -> str:
        return self.base_url

    async def aclose(self) -> None:
        await self._jobs.aclose()
        for client in (self._passthrough, self._probe):
            await client.aclose()

    async def generate(self, kind: str, body: bytes, relay: Relay) -> dict[str, Any]:
        """Run one chat, generate or embed request; each line of the answer goes to
        ``relay`` (one line for ``stream: false`` and for embed), but an error line is
        raised instead. Returns the final response, a stream's content joined into it
        as Ollama's non-streaming answer holds it."""
        headers = [*self._job_headers, (b"Content-Length", b"%d" % len(body))]
        request = httpcore.Request(
            "POST",
            self._job_urls[kind],
            headers=headers,
            content=body,
            extensions={"timeout": JOB_TIMEOUTS},
        )
        try:
            response = await self._jobs.handle_async_request(request)
        except (httpcore.ConnectError, httpcore.ConnectTimeout, httpcore.ReadTimeout) as error:
            raise BackendUnreachable(f"{self.base_url}: {error!r}") from error
        except (httpcore.RemoteProtocolError, httpcore.NetworkError) as error:
            raise BackendUnreachable(f"{self.base_url} closed the connection: {error!r}") from error
        try:
            if response.status >= 400:
                raise await _error_answer(response)
            return await _relay_answer(response, relay)
        except (httpcore.ProtocolError, httpcore.NetworkError, httpcore.TimeoutException) as error:
            raise BackendLost(f"the backend's answer broke off: {error!r}") from error
        finally:
            await response.aclose()

    async def forward(
        self, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, bytes, str | None]:
        """Pass a request through: the backend's status, body and content type."""
        return await self._call(self._passthrough, method, path, body)

    async def probe(self, path: str) -> tuple[int, bytes, str | None]:
        """``GET path`` on connections of its own, within :data:`PROBE_SECONDS` each
        step: what the backend is doing, even while pass-through calls crowd it."""
        return await self._call(self._probe, "GET", path, None)

    async def _call(
        self, client: httpx.AsyncClient, method: str, path: str, body: bytes | None
    ) -> tuple[int, bytes, str | None]:
        headers = {"content-type": "application/json"} if body is not None else None
        try:
            response = await client.request(method, path, content=body, headers=headers)
        except httpx.TransportError as error:
            raise BackendUnreachable(f"{self.base_url}: {error!r}") from error
        return response.status_code, response.content, response.headers.get("content-type")


def _url(base: httpx.URL, path: str) -> httpcore.URL:
    """``path`` under ``base``'s own path, as httpx's ``base_url`` joins them."""
    target = base.raw_path.rstrip(b"/") + path.encode()
    return httpcore.URL(scheme=base.raw_scheme, host=base.raw_host, port=base.port, target=target)


async def _error_answer(response: httpcore.Response) -> BackendError:
    body = b""
    async for piece in response.aiter_stream():
        body += piece
        if len(body) >= ERROR_BODY_LIMIT:
            break
    body = body[:ERROR_BODY_LIMIT]
    try:
        message = str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        reason = response.extensions.get("reason_phrase", b"")
        message = body.decode(errors="replace") or reason.decode(errors="replace")
    return BackendError(message, response.status)


async def _lines(response: httpcore.Response) -> AsyncIterator[bytes]:
    """The answer's NDJSON lines, without their line ends."""
    pending = bytearray()
    async for piece in response.aiter_stream():
        pending += piece
        if b"\n" in piece:
            *complete, rest = pending.split(b"\n")
            pending = rest
            for line in complete:
                yield bytes(line)
    if pending:
        yield bytes(pending)


async def _relay_answer(response: httpcore.Response, relay: Relay) -> dict[str, Any]:
    final: dict[str, Any] | None = None
    content: list[str] = []
    async for line in _lines(response):
        if not line.strip():
            continue
        try:
            chunk = json.loads(line)
        except ValueError:
            raise BackendError(
                f"the backend answered a line that is not JSON: {line[:200]!r}", None
            ) from None
        if not isinstance(chunk, dict):
            raise BackendError(
                f"the backend answered a line that is not an object: {line[:200]!r}", None
            )
        if "error" in chunk:
            raise BackendError(str(chunk["error"]), None)
        await relay(line + b"\n")
        content.append(_text(chunk))
        if chunk.get("done", True):
            final = chunk
    if final is None:
        raise BackendError("the backend's answer ended before it was done", None)
    return _joined(final, "".join(content))


def _text(chunk: dict[str, Any]) -> str:
    message = chunk.get("message")
    if isinstance(message, dict):
        return str(message.get("content") or "")
    return str(chunk.get("response") or "")


def _joined(final: dict[str, Any], content: str) -> dict[str, Any]:
    """The final chunk with the whole content, as a non-streaming answer holds it."""
    if isinstance(final.get("message"), dict):
        return {**final, "message": {**final["message"], "content": content}}
    if "response" in final:
        return {**final, "response": content}
    return final
