"""The fleet for operators: ``GET /backends``, and drain or resume a host.

A drained host finishes the jobs it runs and is given no more (maintenance);
resumed, it takes work again. Both are recorded (``BackendDrained``,
``BackendResumed`` on the host's ``backends/NAME`` stream) and hold across a
restart. Counts (jobs done, loads) are since Foreman started.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, params

from foreman.actors import HostStatus, SchedulerClient
from foreman.api.auth import principal, require_admin
from foreman.api.errors import ApiProblem
from foreman.api.schemas import ApiError, BackendList, BackendView
from foreman.scheduling import model_of

HOSTS_ADMIN_ONLY = "draining and resuming hosts takes an admin key"


@dataclass(frozen=True, slots=True)
class BackendsApi:
    """What the fleet's routes talk to: the scheduler, and each host's URL by name."""

    scheduler: SchedulerClient
    urls: dict[str, str]


def backend_routes(api: BackendsApi, writes: params.Depends) -> APIRouter:
    """``writes``: the dependency of a route that appends (:mod:`foreman.api.writable`)."""
    router = APIRouter(prefix="/backends", tags=["backends"])
    missing: dict[int | str, dict[str, Any]] = {
        403: {"model": ApiError, "description": "Not an admin key."},
        404: {"model": ApiError, "description": "No backend of that name."},
    }

    @router.get("", operation_id="list_backends", response_model=BackendList)
    async def list_() -> BackendList:
        """Each backend host: its state, what it has loaded, what it runs and has run."""
        return BackendList(backends=[_view(api, host) for host in await api.scheduler.hosts()])

    @router.post(
        "/{name}/drain",
        operation_id="drain_backend",
        response_model=BackendView,
        responses=missing,
        dependencies=[writes],
    )
    async def drain(name: str, who: principal) -> BackendView:
        """Let the host finish what it runs and give it nothing more (admin keys)."""
        require_admin(who, HOSTS_ADMIN_ONLY)
        try:
            return _view(api, await api.scheduler.drain(name))
        except LookupError:
            raise _no_such(name) from None

    @router.post(
        "/{name}/resume",
        operation_id="resume_backend",
        response_model=BackendView,
        responses=missing,
        dependencies=[writes],
    )
    async def resume(name: str, who: principal) -> BackendView:
        """Give a drained host work again (admin keys)."""
        require_admin(who, HOSTS_ADMIN_ONLY)
        try:
            return _view(api, await api.scheduler.resume(name))
        except LookupError:
            raise _no_such(name) from None

    return router


def _view(api: BackendsApi, host: HostStatus) -> BackendView:
    return BackendView(
        name=host.name,
        url=api.urls.get(host.name, ""),
        state="down" if not host.up else "draining" if host.draining else "up",
        loaded=[] if host.loaded is None else [model_of(host.loaded)],
        installed=None if host.installed is None else sorted(host.installed),
        running=host.running,
        done=host.done,
        loads=host.loads,
    )


def _no_such(name: str) -> ApiProblem:
    return ApiProblem(404, f"no backend named {name!r}: GET /backends lists them")
