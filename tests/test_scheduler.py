"""The scheduler actor on its own: backoffs on Trio's clock, cancels, queue positions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

from foreman.actors.journal import Journal, JournalClient
from foreman.actors.reply import Reply
from foreman.actors.scheduler import (
    Cancel,
    CancelOutcome,
    Done,
    Message,
    Position,
    Ready,
    Scheduler,
    Work,
)
from foreman.ids import new_ulid
from foreman.scheduling import QueuedJob
from tests import factories
from tests.running import event_types


@dataclass
class Rig:
    db_path: Path
    journal: JournalClient
    inbox: trio.MemorySendChannel[Message]
    control: trio.MemorySendChannel[Cancel]
    control_inbox: trio.MemoryReceiveChannel[Cancel]

    async def queued(self, model: str = "llama3", *, retried: bool = False) -> Work:
        """A job as the log holds it: submitted, or back from a failed attempt."""
        job_id = new_ulid()
        submitted = factories.submitted(model)
        events = [submitted]
        if retried:
            events += [factories.started(), factories.attempt_failed(), factories.requeued_retry()]
        (first, *_) = await self.journal.append(job_id, events, expected_version=0)
        job = QueuedJob.of(job_id, first.seq, submitted, trio.current_time())
        return Work(job, "chat", json.dumps(submitted.request).encode(), attempts=int(retried))

    async def ready(self, loaded: str | None = None) -> Reply[Work]:
        reply: Reply[Work] = Reply()
        await self.inbox.send(Ready(loaded, reply, self.control))
        return reply

    async def cancel(self, job_id: str) -> CancelOutcome:
        outcome: Reply[CancelOutcome] = Reply()
        await self.inbox.send(Cancel(job_id, "client_disconnected", outcome))
        return await outcome.wait()

    async def position(self, job_id: str) -> int | None:
        reply: Reply[int | None] = Reply()
        await self.inbox.send(Position(job_id, reply))
        return await reply.wait()

    def events(self, job_id: str) -> list[str]:
        return event_types(self.db_path, job_id)


@pytest.fixture
async def rig(db_path: Path, nursery: trio.Nursery) -> Rig:
    journal = await nursery.start(Journal(db_path).run)
    send, receive = trio.open_memory_channel[Message](64)
    await nursery.start(Scheduler(journal, max_wait=600, max_queue=512).run, receive)
    control, control_inbox = trio.open_memory_channel[Cancel](16)
    return Rig(db_path, journal, send, control, control_inbox)


async def test_a_retried_job_is_handed_out_exactly_when_its_backoff_ends(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    work = await rig.queued(retried=True)
    sent = trio.current_time()
    await rig.inbox.send(Work(work.job, work.kind, work.body, 1, not_before=sent + 2.0))
    handed = await (await rig.ready()).wait()
    assert handed.job == work.job
    assert trio.current_time() - sent == pytest.approx(2.0)


async def test_a_job_cancelled_during_its_backoff_never_runs(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    work = await rig.queued(retried=True)
    await rig.inbox.send(
        Work(work.job, work.kind, work.body, 1, not_before=trio.current_time() + 2)
    )
    assert await rig.cancel(work.job.job_id) == "cancelled"
    reply = await rig.ready()
    with trio.move_on_after(60):
        await reply.wait()
        pytest.fail("a cancelled job was handed out")
    assert rig.events(work.job.job_id)[-1] == "JobCancelled"


async def test_cancel_outcomes_for_queued_running_and_finished_jobs(rig: Rig) -> None:
    running, queued = await rig.queued(), await rig.queued()
    for work in (running, queued):
        await rig.inbox.send(work)
    assert (await (await rig.ready()).wait()).job == running.job
    assert await rig.cancel(queued.job.job_id) == "cancelled"
    assert await rig.cancel(running.job.job_id) == "stopping"
    assert (await rig.control_inbox.receive()).job_id == running.job.job_id  # to its worker
    await rig.inbox.send(Done(running.job.job_id))
    assert await rig.cancel(running.job.job_id) == "not_found"


async def test_queue_positions_count_the_jobs_at_the_backend_and_the_rule(rig: Rig) -> None:
    first, other_model, second = (
        await rig.queued("llama3"),
        await rig.queued("qwen2"),
        await rig.queued("llama3"),
    )
    for work in (first, other_model, second):
        await rig.inbox.send(work)
    assert [await rig.position(w.job.job_id) for w in (first, other_model, second)] == [0, 2, 1]
    await (await rig.ready()).wait()  # first runs
    await (await rig.ready()).wait()  # second waits behind it at the backend (same model)
    assert await rig.position(first.job.job_id) == 0
    assert await rig.position(second.job.job_id) == 1
    assert await rig.position(other_model.job.job_id) == 2
    assert await rig.position(new_ulid()) is None
