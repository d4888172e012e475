"""Tenants through the real scheduler: fair share by weight, ``max_queued`` and
``batch_share`` (ADR-0042)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
import trio
import trio.testing

from foreman.actors import TenantQueueFull
from foreman.actors.journal import Journal, JournalClient
from foreman.actors.scheduler import Scheduler, SchedulerClient
from foreman.actors.worker import Stop, Work, Worker
from foreman.backend import Backend
from foreman.events.log import EventLog
from foreman.events.tenants import NO_LIMITS, Limits
from foreman.events.types import BatchLine, JobSubmitted
from foreman.simulator import SimulatorConfig, serve_simulator
from tests import factories
from tests.running import counted, of_type, recorded, until


def job_of(tenant: str | None, model: str = "llama3") -> JobSubmitted:
    return factories.submitted(model).model_copy(update={"tenant": tenant})


def line_of(tenant: str, number: int) -> JobSubmitted:
    line = BatchLine(batch_id=f"batch_{tenant}", line=number, custom_id=f"{tenant}-{number}")
    return job_of(tenant).model_copy(update={"origin": "batch", "batch": line})


async def start(
    nursery: trio.Nursery,
    journal: JournalClient,
    limits: Mapping[str | None, Limits],
    hosts: dict[str, frozenset[str] | None] | None = None,
    *,
    max_queue: int = 512,
) -> SchedulerClient:
    scheduler = Scheduler(
        journal, 600, max_queue, hosts, limits=lambda tenant: limits.get(tenant, NO_LIMITS)
    )
    client: SchedulerClient = await nursery.start(scheduler.run)
    return client


class Slot:
    """A worker slot of a host, as the scheduler sees it: it asks for a job, and says
    when its call is done."""

    def __init__(self, scheduler: SchedulerClient, host: str = "gpu") -> None:
        self.scheduler = scheduler
        self.host = host
        self.stops, _ = trio.open_memory_channel[Stop](16)

    async def next(self, nursery: trio.Nursery) -> trio.MemoryReceiveChannel[Work]:
        """Ask for the next job; it comes on the channel returned."""
        send, handed = trio.open_memory_channel[Work](1)

        async def ask() -> None:
            await send.send(await self.scheduler.next_job(self.host, self.stops))

        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        return handed

    async def take(self, nursery: trio.Nursery) -> Work:
        """Ask for the next job, and get it."""
        with trio.fail_after(5):
            return await (await self.next(nursery)).receive()


async def test_a_tenant_behind_a_thousand_jobs_starts_after_at_most_one_more_of_them(
    db_path: Path, nursery: trio.Nursery
) -> None:
    """Issue 14's case, on the simulator: A has 1,000 jobs queued for the loaded
    model when B submits one. Counted in the log's JobStarted order from B's
    JobSubmitted: the job of A's already sent behind the running one (ADR-0026), then
    at most one more of A's, then B's."""
    journal = await nursery.start(Journal(db_path).run)
    simulator = SimulatorConfig(listen="127.0.0.1:0", token_latency=0.002)
    url = await nursery.start(serve_simulator, simulator)
    scheduler = await start(nursery, journal, {}, max_queue=2000)
    backlog: list[str] = []

    async def submit_many(count: int) -> None:
        for _ in range(count):
            backlog.append((await scheduler.submit(job_of("acme"))).job_id)

    async with trio.open_nursery() as submitters:  # concurrently: commits are shared
        for _ in range(20):
            submitters.start_soon(submit_many, 50)
    committed = await journal.subscribe()
    async with trio.open_nursery() as working:  # stopped before the journal, as Foreman does
        working.start_soon(Worker(Backend(url), journal, scheduler.clone(), max_attempts=1).run)
        await until(committed, counted(5, of_type("JobStarted")))
        await trio.sleep(0.008)  # into the running job: its JobStarted is committed
        queued = await scheduler.submit(job_of("bravo"))
        await until(committed, recorded(queued.job_id, "JobSucceeded"))
        working.cancel_scope.cancel()

    log = EventLog.open(db_path, read_only=True)
    try:
        events = list(log.read())
    finally:
        log.close()
    (submitted,) = [e.seq for e in events if e.stream == queued.job_id and e.type == "JobSubmitted"]
    started = [e.stream for e in events if e.type == "JobStarted" and e.seq > submitted]
    ahead = started[: started.index(queued.job_id)]
    assert len(backlog) == 1000
    assert set(ahead) <= set(backlog)
    assert len(ahead) <= 2  # the one sent behind the running one, and at most one more
    assert queued.position is not None and queued.position <= 3  # and the running one


async def test_weights_share_a_model_between_tenants(db_path: Path, nursery: trio.Nursery) -> None:
    journal = await nursery.start(Journal(db_path).run)
    scheduler = await start(nursery, journal, {"acme": Limits(weight=2.0)})
    tenant_of = {}
    for tenant in ["acme"] * 6 + ["bravo"] * 3:
        tenant_of[(await scheduler.submit(job_of(tenant))).job_id] = tenant
    slot, order = Slot(scheduler), []
    for _ in range(6):
        work = await slot.take(nursery)
        order.append(tenant_of[work.job.job_id][0])
        await scheduler.done(work.job.job_id)
    assert "".join(order) == "abaaba"  # tags: a 0, b 0, a 1/2, a 1, b 1, a 3/2


async def test_a_tenant_with_its_max_queued_waiting_is_refused_the_next(
    db_path: Path, nursery: trio.Nursery
) -> None:
    """Refused before anything is recorded; a job sent to wait behind the running one
    still counts, one that runs does not; other tenants, and the tenant's batch
    lines, are not affected."""
    journal = await nursery.start(Journal(db_path).run)
    scheduler = await start(nursery, journal, {"acme": Limits(max_queued=2)})
    first, second = [await scheduler.submit(job_of("acme")) for _ in range(2)]
    with pytest.raises(TenantQueueFull) as refused:
        await scheduler.submit(job_of("acme"))
    assert (refused.value.tenant, refused.value.limit) == ("acme", 2)
    slot = Slot(scheduler)
    assert (await slot.take(nursery)).job.job_id == first.job_id  # runs
    assert (await slot.take(nursery)).job.job_id == second.job_id  # behind
    await scheduler.submit(job_of("acme"))
    with pytest.raises(TenantQueueFull):
        await scheduler.submit(job_of("acme"))
    await scheduler.submit(job_of("bravo"))
    await scheduler.submit(job_of(None))
    await scheduler.submit_lines([line_of("acme", n) for n in range(1, 4)])
    log = EventLog.open(db_path, read_only=True)
    try:
        assert sum(e.type == "JobSubmitted" for e in log.read()) == 3 + 2 + 3
    finally:
        log.close()


async def test_a_tenants_batch_lines_hold_at_most_its_share_of_the_slots(
    db_path: Path, nursery: trio.Nursery
) -> None:
    """acme may hold ceil(0.5 x 2 slots) = 1 slot with its lines: while one runs, the
    host's other slot runs another tenant's line, or waits."""
    journal = await nursery.start(Journal(db_path).run)
    scheduler = await start(nursery, journal, {"acme": Limits(batch_share=0.5)}, {"gpu": None})
    await scheduler.submit_lines([line_of("acme", n) for n in range(1, 4)])
    (bravo,) = await scheduler.submit_lines([line_of("bravo", 1)])
    one, two = Slot(scheduler), Slot(scheduler)
    on_one = await one.take(nursery)
    on_two = await two.take(nursery)
    assert (on_one.job.tenant, on_two.job.job_id) == ("acme", bravo)
    await scheduler.done(bravo)
    waiting = await two.next(nursery)
    with pytest.raises(trio.WouldBlock):
        waiting.receive_nowait()  # acme holds its share; nothing else is queued
    await scheduler.done(on_one.job.job_id)
    with trio.fail_after(5):
        assert (await waiting.receive()).job.tenant == "acme"  # its next line, on two
    held = await one.next(nursery)
    with pytest.raises(trio.WouldBlock):
        held.receive_nowait()
