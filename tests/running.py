"""A whole Foreman in the test's nursery, over real HTTP, with the simulator as backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import ollama
import trio

from foreman.config import load_settings
from foreman.events.log import EventLog
from foreman.events.types import RecordedEvent
from foreman.simulator import SimulatorConfig
from foreman.supervisor import Running, run_foreman

T = TypeVar("T")


@dataclass
class Foreman:
    url: str
    db_path: Path
    running: Running

    async def call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A call of the official (synchronous) client, on a thread."""
        return await trio.to_thread.run_sync(partial(method, *args, **kwargs))

    def client(self) -> ollama.Client:
        return ollama.Client(host=self.url)

    def job_events(self) -> dict[str, list[str]]:
        log = EventLog.open(self.db_path, read_only=True)
        try:
            streams: dict[str, list[str]] = {}
            for event in log.read():
                streams.setdefault(event.stream, []).append(event.type)
            return streams
        finally:
            log.close()


async def start_foreman(
    nursery: trio.Nursery,
    db_path: Path,
    *,
    simulator: SimulatorConfig | None = None,
    **settings: Any,
) -> AsyncIterator[Foreman]:
    """Foreman until the test is done with it; then it stops as on SIGTERM, and the
    test's teardown waits for that (jobs still finishing record their outcome).
    ``simulator``: its backend's settings (its address is chosen here)."""
    config = load_settings(listen="127.0.0.1:0", backend="sim", db=db_path, **settings)
    stop, stopped = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[Running]) -> None:
        try:
            backend = (simulator or SimulatorConfig()).model_copy(update={"listen": "127.0.0.1:0"})
            await run_foreman(config, stop, simulator=backend, task_status=task_status)
        finally:
            stopped.set()

    running = await nursery.start(run)
    yield Foreman(running.url, db_path, running)
    stop.set()
    with trio.fail_after(30):
        await stopped.wait()


async def until_types(
    committed: trio.MemoryReceiveChannel[list[RecordedEvent]], types: list[str]
) -> None:
    """Wait until events of these types, in this order, are committed."""
    wanted = list(types)
    with trio.fail_after(10):
        async for events in committed:
            for event in events:
                if wanted and event.type == wanted[0]:
                    wanted.pop(0)
            if not wanted:
                return


async def until_recorded(
    committed: trio.MemoryReceiveChannel[list[RecordedEvent]], job_id: str, *types: str
) -> RecordedEvent:
    """The job's next committed event of one of ``types``: synchronises on the log."""
    with trio.fail_after(10):
        async for events in committed:
            for event in events:
                if event.stream == job_id and event.type in types:
                    return event
    raise AssertionError("the journal stopped")


def event_types(db_path: Path, job_id: str) -> list[str]:
    """The types of a job's events, in order, as the log holds them."""
    log = EventLog.open(db_path, read_only=True)
    try:
        return [event.type for event in log.read_stream(job_id)]
    finally:
        log.close()


async def until_succeeded(
    committed: trio.MemoryReceiveChannel[list[RecordedEvent]], db_path: Path, count: int
) -> None:
    """Until ``count`` jobs of the log have succeeded. The log is read first: jobs a
    Foreman recovered at start may have run before ``committed`` was subscribed."""
    with trio.fail_after(10):
        while succeeded_jobs(db_path) < count:
            await committed.receive()


def succeeded_jobs(db_path: Path) -> int:
    log = EventLog.open(db_path, read_only=True)
    try:
        (count,) = log.conn.execute(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded'"
        ).fetchone()
        return int(count)
    finally:
        log.close()
