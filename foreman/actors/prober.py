"""The prober: what each backend host has loaded and installed, and whether it
answers, told to the scheduler.

At start, before any worker asks for a job, and then every ``interval`` seconds
(FOREMAN_PROBE_INTERVAL: people also use the hosts directly), it asks each host
``/api/ps`` (the model loaded: its first) and ``/api/tags`` (the models it has),
all hosts at once, on the backend clients' probe connections. A host that does
not answer is marked down (a worker whose call it dropped marks it down too); a
down host is probed again after 0.5 s, then twice as long each time up to 30 s,
and takes work again once it answers.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import trio

from foreman.actors.scheduler import SchedulerClient
from foreman.backend import Backend, BackendUnreachable
from foreman.scheduling import model_key, model_name

logger = logging.getLogger(__name__)

FIRST_REVIVAL = 0.5
LONGEST_REVIVAL = 30.0
"""A down host is probed after FIRST_REVIVAL seconds, then twice as long each time."""


class Prober:
    def __init__(
        self,
        backends: dict[str, Backend],
        scheduler: SchedulerClient,
        *,
        interval: float,
    ) -> None:
        self._backends = backends
        self._scheduler = scheduler
        self.interval = interval

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probe every host, report ready, then probe again every ``interval``."""
        await self.probe()
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._revive)
            while True:
                await trio.sleep(self.interval)
                await self.probe()

    async def probe(self) -> None:
        async with trio.open_nursery() as nursery:
            for name, backend in self._backends.items():
                nursery.start_soon(self._probe, name, backend)

    async def _probe(self, name: str, backend: Backend) -> bool:
        """Probe one host and tell the scheduler; whether it answered."""
        try:
            running = _models(*await backend.probe("/api/ps"))
            installed = _models(*await backend.probe("/api/tags"))
        except (BackendUnreachable, ValueError, TypeError) as error:
            logger.warning("backend %s (%s) did not answer a probe: %s", name, backend, error)
            await self._scheduler.host_down(name, f"a probe found no answer: {error}")
            return False
        loaded = model_key(running[0]) if running else None
        await self._scheduler.host_seen(
            name, loaded=loaded, installed=frozenset(map(model_name, installed))
        )
        await self._scheduler.host_up(name)
        return True

    async def _revive(self) -> None:
        """Probe each down host, with backoff, until it answers."""
        waits: dict[str, float] = {}
        due: dict[str, float] = {}
        while True:
            await trio.sleep(FIRST_REVIVAL)
            now = trio.current_time()
            down = {host.name for host in await self._scheduler.hosts() if not host.up}
            for name in down - waits.keys():
                waits[name], due[name] = FIRST_REVIVAL, now
            for name in list(waits):
                if name not in down:
                    del waits[name], due[name]
                elif due[name] <= now and not await self._probe(name, self._backends[name]):
                    waits[name] = min(2 * waits[name], LONGEST_REVIVAL)
                    due[name] = trio.current_time() + waits[name]


def _models(status: int, content: bytes, _media_type: str | None) -> list[str]:
    """The model names an Ollama ``/api/ps`` or ``/api/tags`` answer lists."""
    if status != 200:
        raise ValueError(f"HTTP {status}")
    answer: Any = json.loads(content)
    models = answer.get("models") if isinstance(answer, dict) else None
    if not isinstance(models, list):
        raise TypeError("no model list in the answer")
    return [str(model["name"]) for model in models if isinstance(model, dict) and "name" in model]
