"""The FastAPI application the HTTP actor serves."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import trio
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from foreman import __version__
from foreman.actors import MetricsClient
from foreman.api.auth import KeyGuard
from foreman.api.backends import BackendsApi, backend_routes
from foreman.api.batches import MAX_UPLOAD, BatchesApi, batch_routes
from foreman.api.browsers import BrowserGuard, origins_pattern
from foreman.api.dashboard import DashboardApi, dashboard_routes
from foreman.api.errors import install_error_handlers
from foreman.api.front_door import FrontDoor
from foreman.api.guard import RequestGuard
from foreman.api.jobs import JobsApi, job_routes
from foreman.api.keys import KeysApi, key_routes
from foreman.api.live import LiveApi, live_routes
from foreman.api.metrics import metrics_routes
from foreman.api.ollama import ollama_routes
from foreman.api.openai import openai_routes
from foreman.api.schemas import ApiError
from foreman.api.ui import ui_routes
from foreman.api.usage import usage_routes
from foreman.api.writable import log_writable, refusal, retry_after
from foreman.backend import Backend, BackendUnreachable
from foreman.ollama_protocol import OllamaJSON
from foreman.views import WebhookPayload

HEALTH_PROBE_SECONDS = 2.0


DESCRIPTION = """Foreman queues LLM work for GPUs in front of Ollama.

The async job API is described here. The Ollama-compatible endpoints
(`/api/chat`, `/api/generate`, `/api/embed`, ...) follow Ollama's own API, and the
OpenAI-compatible ones (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
`/v1/models`, `/v1/files`, `/v1/batches`) OpenAI's: they are not repeated here. Point
an Ollama or OpenAI client at Foreman."""


def create_app(
    door: FrontDoor,
    jobs: JobsApi,
    batches: BatchesApi,
    keys: KeysApi,
    metrics: MetricsClient,
    *,
    max_body: int,
    body_timeout: float,
    origins: Sequence[str] = (),
    loopback: bool = True,
    scrape_token: str | None = None,
) -> FastAPI:
    """The app; ``/docs`` serves its own Swagger UI assets (no CDN, no internet).
    Every request's body must be at most ``max_body`` bytes and arrive within
    ``body_timeout`` seconds
    (:class:`~foreman.api.guard.RequestGuard`), and carry a live key once keys are in
    use (:class:`~foreman.api.auth.KeyGuard`, checked before the body is read). A
    browser's request is taken only from the loopback origins, the app schemes and
    ``origins``, and on ``loopback`` only for this machine's names; ``scrape_token``
    reads ``/metrics`` and nothing else
    (:class:`~foreman.api.browsers.BrowserGuard`). No path is redirected to another
    (``/x/`` to ``/x``): a redirect would be built from the request's own ``Host``."""
    app = FastAPIOffline(
        title="Foreman",
        version=__version__,
        description=DESCRIPTION,
        redirect_slashes=False,
    )
    app.add_middleware(
        RequestGuard,
        max_body=max_body,
        body_timeout=body_timeout,
        uploads={"/v1/files": max(max_body, MAX_UPLOAD)},
    )
    app.add_middleware(KeyGuard, keychain=keys.keychain, scrape_token=scrape_token)
    allowed = origins_pattern(origins)
    app.add_middleware(
        CORSMiddleware,
        allow_origin_regex=allowed,
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["Retry-After", "ETag", "Location"],
    )
    app.add_middleware(BrowserGuard, origins=allowed, loopback=loopback)
    status = jobs.journal.status
    writes = log_writable(status)
    app.include_router(ollama_routes(door, writes), include_in_schema=False)
    app.include_router(openai_routes(door, writes), include_in_schema=False)
    app.include_router(batch_routes(batches, writes), include_in_schema=False)
    keyed: dict[int | str, dict[str, Any]] = {
        401: {"model": ApiError, "description": "No live API key (once keys are in use)."}
    }
    app.include_router(job_routes(jobs, writes), responses=keyed)
    urls = {name: str(backend) for name, backend in door.backends.items()}
    app.include_router(backend_routes(BackendsApi(door.scheduler, urls), writes), responses=keyed)
    app.include_router(key_routes(keys, writes), responses=keyed)
    app.include_router(usage_routes(jobs), responses=keyed)
    app.include_router(metrics_routes(metrics), responses=keyed)
    app.include_router(dashboard_routes(DashboardApi(door.scheduler, jobs.reader)), responses=keyed)
    app.include_router(live_routes(LiveApi(jobs.journal, jobs.reader)), responses=keyed)
    app.include_router(ui_routes())

    @app.get("/healthz", tags=["health"])
    async def healthz() -> Response:
        """Ready: every actor runs (one that fails stops Foreman) and the event log can
        be written; each backend's state. While the log cannot be written, 503 with the
        reason (and ``Retry-After``): Foreman takes no new work, though it still answers
        reads, so a load balancer should send new work elsewhere. A restart would not
        help (ADR-0041): use it for readiness, not liveness."""
        backends: list[dict[str, object]] = [
            {"name": name, "url": str(backend)} for name, backend in door.backends.items()
        ]
        async with trio.open_nursery() as nursery:
            for entry, backend in zip(backends, door.backends.values(), strict=True):
                nursery.start_soon(_health, entry, backend)
        actors = dict.fromkeys(
            (
                "journal",
                "scheduler",
                "prober",
                "workers",
                "janitor",
                "batcher",
                "http",
                "dispatcher",
            ),
            "running",
        )
        fault = status.fault
        if fault is None:
            log: dict[str, Any] = {"writable": True}
            return OllamaJSON({"status": "ok", "log": log, "actors": actors, "backends": backends})
        actors["journal"] = "waiting for the storage"
        log = {
            "writable": False,
            "reason": fault.reason,
            "since": fault.since,
            "failed_attempts": fault.attempts,
            "retry_in": retry_after(fault),
        }
        body = {"status": refusal(fault), "log": log, "actors": actors, "backends": backends}
        return OllamaJSON(body, status_code=503, headers={"Retry-After": str(log["retry_in"])})

    @app.webhooks.post("job-state", tags=["webhooks"])
    def job_state(payload: WebhookPayload) -> None:
        """Sent to a job's ``state_webhook_url`` on each state change, at least once:
        deduplicate by ``webhook-id``. With FOREMAN_WEBHOOK_SECRET set it carries the
        Standard Webhooks headers (``webhook-id``, ``webhook-timestamp``,
        ``webhook-signature``) and ``X-Foreman-Signature: sha256=<hex HMAC of the
        body>``. Answer any 2xx to acknowledge."""

    install_error_handlers(app)
    return app


async def _health(entry: dict[str, object], backend: Backend) -> None:
    """Whether ``backend`` answers, and its version, into ``entry``."""
    entry["reachable"] = False
    with trio.move_on_after(HEALTH_PROBE_SECONDS):
        try:
            status, content, _ = await backend.probe("/api/version")
            entry["reachable"] = status == 200
            entry["version"] = json.loads(content).get("version")
        except (BackendUnreachable, ValueError, AttributeError) as error:
            entry["error"] = str(error)
