"""``GET /metrics``: Prometheus' text format, for an admin key or the scrape token.

Its labels name tenants, so a tenant's key is refused (403); a scraper is given
``FOREMAN_METRICS_TOKEN``, which opens this route and no other (ADR-0044).
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from foreman.actors import CONTENT_TYPE, MetricsClient
from foreman.api.auth import SCRAPER, principal
from foreman.api.errors import ApiProblem
from foreman.api.schemas import ApiError

ADMIN_OR_SCRAPER = "metrics name every tenant: they take an admin key, or FOREMAN_METRICS_TOKEN"


def metrics_routes(metrics: MetricsClient) -> APIRouter:
    router = APIRouter(tags=["metrics"])

    @router.get(
        "/metrics",
        operation_id="get_metrics",
        response_class=Response,
        responses={
            200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus' text format."},
            403: {"model": ApiError, "description": "A tenant's key."},
        },
    )
    async def scrape(who: principal) -> Response:
        """Every metric (queue, jobs, latencies, tokens, backends, webhooks, journal,
        log), read now: see docs/operations.md."""
        if not (who.admin or who == SCRAPER):
            raise ApiProblem(403, ADMIN_OR_SCRAPER)
        return Response(await metrics.scrape(), media_type=CONTENT_TYPE)

    return router
