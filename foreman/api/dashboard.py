"""``GET /summary``: the picture the dashboard and ``foreman top`` draw, in one read.

The queue by model, priority and tenant and the last hour per minute come from the jobs
projection (:mod:`foreman.events.activity`); the hosts, what they have loaded and how
many jobs they run, from the scheduler. A tenant's key sees its own jobs only: its
queue, its running jobs, its throughput and busy time; the hosts and their model swaps
are the fleet's, as ``GET /backends`` shows them to any key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from foreman.actors import SchedulerClient
from foreman.api.auth import principal
from foreman.events.activity import Hour, QueueGroup, RunningJob, last_hour, queue_groups
from foreman.events.activity import running_jobs as running_now
from foreman.events.log import EventLog, unix_time, utc_now
from foreman.events.reader import Reader
from foreman.scheduling import model_of


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QueueRow(_Model):
    model: str
    priority: int
    tenant: str | None
    queued: int
    running: int


class RunningView(_Model):
    id: str
    model: str
    tenant: str | None
    started_at: str | None
    elapsed: float | None = Field(description="Seconds since it started.")


class HostView(_Model):
    name: str
    state: str = Field(description="up, down or draining.")
    loaded: str | None = Field(description="The model it has loaded, as far as Foreman knows.")
    running: int = Field(description="Jobs at it now, everyone's.")
    jobs: list[RunningView] = Field(description="The jobs at it this key may see.")
    done: int
    loads: int


class HourView(_Model):
    until: str = Field(description="The end of the hour; each list is per minute, oldest first.")
    finished: list[int]
    swaps: list[int] = Field(description="Jobs started on a host after one of another model.")
    busy: list[float] = Field(description="Seconds of each minute the hosts ran jobs, summed.")


class Summary(_Model):
    at: str
    queue: list[QueueRow]
    backends: list[HostView]
    hour: HourView


@dataclass(frozen=True, slots=True)
class DashboardApi:
    scheduler: SchedulerClient
    reader: Reader


def dashboard_routes(api: DashboardApi) -> APIRouter:
    router = APIRouter(tags=["dashboard"])

    @router.get("/summary", operation_id="get_summary", response_model=Summary)
    async def summary(who: principal) -> Summary:
        """The queue by model, priority and tenant, each host with what it runs, and the
        last hour per minute; a tenant's key sees its own jobs."""
        hosts = await api.scheduler.hosts()
        at = utc_now()
        now = unix_time(at)
        groups, running, hour = await api.reader.read(_read, who.sees, now)
        by_host: dict[str | None, list[RunningView]] = {}
        for job in running:
            if who.owns(job.tenant):
                by_host.setdefault(job.backend, []).append(_running(job, now))
        return Summary(
            at=at,
            queue=[QueueRow(**asdict(group)) for group in groups],
            backends=[
                HostView(
                    name=host.name,
                    state="down" if not host.up else "draining" if host.draining else "up",
                    loaded=None if host.loaded is None else model_of(host.loaded),
                    running=host.running,
                    jobs=by_host.get(host.name, []),
                    done=host.done,
                    loads=host.loads,
                )
                for host in hosts
            ],
            hour=HourView(
                until=at,
                finished=hour.finished,
                swaps=hour.swaps,
                busy=[round(seconds, 3) for seconds in hour.busy],
            ),
        )

    return router


def _read(
    log: EventLog, tenant: str | None, now: float
) -> tuple[list[QueueGroup], list[RunningJob], Hour]:
    return queue_groups(log, tenant), running_now(log), last_hour(log, tenant, now)


def _running(job: RunningJob, now: float) -> RunningView:
    started = job.started_at
    return RunningView(
        id=job.id,
        model=job.model,
        tenant=job.tenant,
        started_at=started,
        elapsed=None if started is None else round(max(0.0, now - unix_time(started)), 1),
    )
