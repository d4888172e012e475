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

    def events_of(self, stream: str) -> list[RecordedEvent]:
        """The stream's events as the log holds them now."""
        log = EventLog.open(self.db_path, read_only=True)
        try:
            return [event for event in log.read() if event.stream == stream]
        finally:
            log.close()

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
    if "backend" not in settings and "config" not in settings:
        settings["backend"] = "sim"
    settings.setdefault("listen", "127.0.0.1:0")
    config = load_settings(db=db_path, **settings)
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


Done = Callable[[RecordedEvent], bool]
"""Whether the wait is over, asked of each committed event in turn."""

ENDS = ("JobSucceeded", "JobFailed", "JobCancelled")
"""The types of a job's last event (before any JobPruned)."""


async def until(
    committed: trio.MemoryReceiveChannel[list[RecordedEvent]], done: Done, *, within: float = 10
) -> RecordedEvent:
    """The first committed event for which ``done(event)`` is true: synchronises on the
    log. Fails the test after ``within`` seconds or if the journal stops. The rest of
    that event's batch is not seen by a later wait."""
    with trio.fail_after(within):
        async for events in committed:
            for event in events:
                if done(event):
                    return event
    raise AssertionError("the journal stopped")


def of_type(*types: str) -> Done:
    """The next event of one of ``types``, whoever's."""
    return lambda event: event.type in types


def recorded(stream: str, *types: str) -> Done:
    """The stream's (a job's, or its deliveries') next event of one of ``types``."""
    return lambda event: event.stream == stream and event.type in types


def in_order(*types: str) -> Done:
    """Events of these types, in this order (others may come between them): true on
    the one that completes them."""
    wanted = list(types)

    def done(event: RecordedEvent) -> bool:
        if wanted and event.type == wanted[0]:
            wanted.pop(0)
        return not wanted

    return done


def counted(count: int, done: Done) -> Done:
    """True on the ``count``-th event for which ``done`` is true."""
    seen = 0

    def nth(event: RecordedEvent) -> bool:
        nonlocal seen
        seen += done(event)
        return seen >= count

    return nth


def event_types(db_path: Path, job_id: str) -> list[str]:
    """The types of a job's events, in order, as the log holds them."""
    log = EventLog.open(db_path, read_only=True)
    try:
        return [event.type for event in log.read_stream(job_id)]
    finally:
        log.close()


def jobs_succeeded(db_path: Path, count: int) -> Callable[..., bool]:
    """Whether the log holds ``count`` succeeded jobs, whatever the event. Ask it once
    before waiting too: jobs a Foreman recovered at start may have run before the
    subscription."""
    return lambda *_event: succeeded_jobs(db_path) >= count


def succeeded_jobs(db_path: Path) -> int:
    log = EventLog.open(db_path, read_only=True)
    try:
        (count,) = log.conn.execute(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded'"
        ).fetchone()
        return int(count)
    finally:
        log.close()
