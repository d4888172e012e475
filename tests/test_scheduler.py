"""The scheduler actor on its own: backoffs on Trio's clock, cancels, queue positions."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing

from foreman.actors.journal import Journal, JournalClient
from foreman.actors.scheduler import CancelOutcome, Scheduler, SchedulerClient
from foreman.actors.worker import Stop, Work
from foreman.events.types import BatchLine, JobSubmitted
from foreman.ids import new_ulid
from foreman.scheduling import QueuedJob
from tests import factories
from tests.disks import small_disk
from tests.running import event_types


@dataclass
class Rig:
    db_path: Path
    journal: JournalClient
    scheduler: SchedulerClient
    nursery: trio.Nursery
    stops: trio.MemorySendChannel[Stop]
    stops_inbox: trio.MemoryReceiveChannel[Stop]
    submitted: dict[str, JobSubmitted] = field(default_factory=dict)

    async def queued(self, model: str = "llama3", *, retried: bool = False) -> Work:
        """A job as the log holds it: submitted, or back from a failed attempt."""
        job_id = new_ulid()
        submitted = self.submitted[job_id] = factories.submitted(model)
        events = [submitted]
        if retried:
            events += [factories.started(), factories.attempt_failed(), factories.requeued_retry()]
        (first, *_) = await self.journal.append(job_id, events, expected_version=0)
        job = QueuedJob.of(job_id, first.seq, submitted, trio.current_time())
        return Work(job, "chat", json.dumps(submitted.request).encode(), attempts=int(retried))

    async def queue(self, work: Work) -> None:
        """Queue a job the log holds, as recovery does."""
        job = work.job
        await self.scheduler.requeue(
            job.job_id,
            self.submitted[job.job_id],
            arrival=job.arrival,
            attempts=work.attempts,
            waited=0,
        )

    def ready(self, host: str = "gpu") -> trio.MemoryReceiveChannel[Work]:
        """A worker of ``host`` asks for its next job, which comes on the channel
        returned."""
        send, handed = trio.open_memory_channel[Work](1)

        async def ask() -> None:
            await send.send(await self.scheduler.next_job(host, self.stops))

        self.nursery.start_soon(ask)
        return handed

    async def cancel(self, job_id: str) -> CancelOutcome:
        return await self.scheduler.cancel(job_id, "client_disconnected")

    async def position(self, job_id: str) -> int | None:
        return await self.scheduler.position(job_id)

    def events(self, job_id: str) -> list[str]:
        return event_types(self.db_path, job_id)


@pytest.fixture
async def rig(db_path: Path, nursery: trio.Nursery) -> Rig:
    journal = await nursery.start(Journal(db_path).run)
    scheduler = await nursery.start(Scheduler(journal, max_wait=600, max_queue=512).run)
    stops, stops_inbox = trio.open_memory_channel[Stop](16)
    return Rig(db_path, journal, scheduler, nursery, stops, stops_inbox)


async def test_a_retried_job_is_handed_out_exactly_when_its_backoff_ends(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    work = await rig.queued(retried=True)
    sent = trio.current_time()
    await rig.scheduler.retry(work, 2.0)
    handed = await rig.ready().receive()
    assert handed.job.job_id == work.job.job_id
    assert trio.current_time() - sent == pytest.approx(2.0)


async def test_a_job_cancelled_during_its_backoff_never_runs(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    work = await rig.queued(retried=True)
    await rig.scheduler.retry(work, 2)
    assert await rig.cancel(work.job.job_id) == "cancelled"
    handed = rig.ready()
    with trio.move_on_after(60):
        await handed.receive()
        pytest.fail("a cancelled job was handed out")
    assert rig.events(work.job.job_id)[-1] == "JobCancelled"


async def test_cancel_outcomes_for_queued_running_and_finished_jobs(rig: Rig) -> None:
    running, queued = await rig.queued(), await rig.queued()
    for work in (running, queued):
        await rig.queue(work)
    assert (await rig.ready().receive()).job.job_id == running.job.job_id
    assert await rig.cancel(queued.job.job_id) == "cancelled"
    assert await rig.cancel(running.job.job_id) == "stopping"
    assert (await rig.stops_inbox.receive()).job_id == running.job.job_id  # to its worker
    await rig.scheduler.done(running.job.job_id)
    assert await rig.cancel(running.job.job_id) == "not_found"


async def test_queue_positions_count_the_jobs_at_the_backend_and_the_rule(rig: Rig) -> None:
    first, other_model, second = (
        await rig.queued("llama3"),
        await rig.queued("qwen2"),
        await rig.queued("llama3"),
    )
    for work in (first, other_model, second):
        await rig.queue(work)
    assert [await rig.position(w.job.job_id) for w in (first, other_model, second)] == [0, 2, 1]
    await rig.ready().receive()  # first runs
    await rig.ready().receive()  # second waits behind it at the backend (same model)
    assert await rig.position(first.job.job_id) == 0
    assert await rig.position(second.job.job_id) == 1
    assert await rig.position(other_model.job.job_id) == 2
    assert await rig.position(new_ulid()) is None


async def test_a_host_down_is_passed_over_and_says_whether_another_can_run_the_job(
    db_path: Path, nursery: trio.Nursery
) -> None:
    journal = await nursery.start(Journal(db_path).run)
    hosts = {"a": None, "b": frozenset({"llama3:latest"})}
    scheduler = await nursery.start(Scheduler(journal, 600, 512, hosts).run)
    assert await scheduler.host_down("a", "refused", model="llama3:latest")  # b has it
    assert not await scheduler.host_down("a", "refused", model="qwen2:latest")  # b may not
    status = {host.name: host.up for host in await scheduler.hosts()}
    assert status == {"a": False, "b": True}
    await scheduler.host_up("a")
    assert event_types(db_path, "backends/a") == ["BackendDown", "BackendUp"]  # once each


async def test_a_fleet_of_one_host_is_never_marked_down(
    db_path: Path, nursery: trio.Nursery
) -> None:
    journal = await nursery.start(Journal(db_path).run)
    scheduler = await nursery.start(Scheduler(journal, 600, 512, {"only": None}).run)
    assert not await scheduler.host_down("only", "refused", model="llama3:latest")
    assert [host.up for host in await scheduler.hosts()] == [True]
    assert event_types(db_path, "backends/only") == []


async def test_a_batch_line_never_overtakes_a_job_whose_submission_is_being_committed(
    rig: Rig,
) -> None:
    """While a job's JobSubmitted commits, the scheduler does not know it yet, only that
    one was admitted: a batch's line waits for it, or a caller arriving just as a line
    ends would wait for two."""
    line = BatchLine(batch_id="batch_1", line=1, custom_id="a")
    (line_id,) = await rig.scheduler.submit_lines(
        [factories.submitted().model_copy(update={"origin": "batch", "batch": line})]
    )
    writer = sqlite3.connect(rig.db_path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the journal's next commit waits for this one
    submitted: list[str] = []

    async def submit() -> None:
        submitted.append((await rig.scheduler.submit(factories.submitted("qwen2"))).job_id)

    rig.nursery.start_soon(submit)
    await trio.testing.wait_all_tasks_blocked()
    handed = rig.ready()
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(trio.WouldBlock):
        handed.receive_nowait()  # the line waits: a job was admitted
    writer.execute("ROLLBACK")
    writer.close()
    first = await handed.receive()
    assert [first.job.job_id] == submitted
    await rig.scheduler.done(first.job.job_id)
    assert (await rig.ready().receive()).job.job_id == line_id


async def test_the_queue_is_answered_while_a_cancel_waits_for_the_log(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """While the log cannot be written (a full disk), a cancel's JobCancelled waits in
    the journal, and so does its answer, but not the scheduler: queue positions (GET
    /jobs/{id}) and hosts are answered meanwhile (ADR-0041)."""
    with small_disk(tmp_path / "disk") as disk:
        journal = await nursery.start(Journal(disk.root / "foreman.db").run)
        scheduler = await nursery.start(Scheduler(journal, 600, 512).run)
        first, second = [(await scheduler.submit(factories.submitted())).job_id for _ in "12"]
        disk.fill()
        outcomes: list[CancelOutcome] = []

        async def cancel() -> None:
            outcomes.append(await scheduler.cancel(first, "cancelled_by_request"))

        async with trio.open_nursery() as cancelling:
            cancelling.start_soon(cancel)
            await journal.status.changed()
            assert journal.status.fault is not None
            with trio.fail_after(5):
                assert await scheduler.position(second) == 0  # the cancelled one is out
                assert [host.name for host in await scheduler.hosts()] == []
            assert outcomes == []
            disk.free()
        assert outcomes == ["cancelled"]
        assert journal.status.fault is None
        assert event_types(disk.root / "foreman.db", first) == ["JobSubmitted", "JobCancelled"]
