"""``GET /usage``: each tenant's jobs, tokens and GPU time since a moment, from the log.

A tenant's key sees its own use; an admin's, every tenant's (or one, ``?tenant=``).
The fold reads the log (:mod:`foreman.events.usage`) on the listings' reader and
counts as one of FOREMAN_MAX_LISTINGS: a client asking in a loop cannot hold up
job polls.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from foreman.api.auth import principal
from foreman.api.jobs import JobsApi, listing
from foreman.api.schemas import ApiError
from foreman.events.log import format_timestamp
from foreman.events.usage import Usage, usage_since

DEFAULT_SPAN = timedelta(days=1)


class TenantUsage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str | None = Field(description="null: work submitted when no key was in use.")
    jobs: int = Field(description="Jobs that ended: succeeded, failed or cancelled.")
    succeeded: int
    failed: int
    cancelled: int
    prompt_tokens: int = Field(description="As the backend counted them (prompt_eval_count).")
    completion_tokens: int = Field(description="As the backend counted them (eval_count).")
    gpu_seconds: float = Field(description="The backend's total_duration of the jobs.")


class UsageReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: str
    tenants: list[TenantUsage]


def usage_routes(api: JobsApi) -> APIRouter:
    router = APIRouter(tags=["usage"])

    @router.get(
        "/usage",
        operation_id="get_usage",
        response_model=UsageReport,
        responses={
            422: {"model": ApiError, "description": "A query parameter is invalid."},
            503: {"model": ApiError, "description": "Too many listings at once."},
        },
    )
    async def usage(
        who: principal,
        since: Annotated[
            AwareDatetime | None,
            Query(description="ISO-8601 with its offset; default: a day ago."),
        ] = None,
        tenant: Annotated[str | None, Query(description="One tenant's (admin keys).")] = None,
    ) -> UsageReport:
        """Each tenant's use by the jobs that ended after ``since``."""
        start = since or datetime.now(UTC) - DEFAULT_SPAN
        chosen = who.sees or tenant
        with listing(api):
            found = await api.listing_reader.read(usage_since, start, chosen)
        return report(start, found, chosen)

    return router


def report(since: datetime, found: list[Usage], tenant: str | None) -> UsageReport:
    """The report of what :func:`usage_since` found (one tenant's: a row even if empty)."""
    if not found and tenant is not None:
        found = [Usage(tenant)]
    return UsageReport(
        since=format_timestamp(since.astimezone(UTC)), tenants=[_view(u) for u in found]
    )


def _view(usage: Usage) -> TenantUsage:
    return TenantUsage(
        tenant=usage.tenant,
        jobs=usage.jobs,
        succeeded=usage.succeeded,
        failed=usage.failed,
        cancelled=usage.cancelled,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        gpu_seconds=round(usage.gpu_seconds, 6),
    )
