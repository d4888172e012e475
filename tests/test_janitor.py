"""The janitor prunes finished jobs past the TTL, through the real journal and log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing

from foreman.actors.janitor import PRUNE_BATCH, Janitor
from foreman.actors.journal import Journal, JournalClient
from foreman.artifacts import ArtifactStore, new_file_id
from foreman.events.audit import verify
from foreman.events.log import EventLog
from foreman.events.reader import Reader
from foreman.events.store import open_log
from foreman.events.types import (
    BatchCreated,
    FileDeleted,
    FileStored,
    batch_stream,
    file_stream,
)
from foreman.ids import new_ulid
from tests import factories

TTL = 3600.0


async def finished_job(journal: JournalClient) -> str:
    job_id = new_ulid()
    events = [factories.submitted(), factories.started(), factories.succeeded()]
    await journal.append(job_id, events, expected_version=0)
    return job_id


async def queued_job(journal: JournalClient) -> str:
    job_id = new_ulid()
    await journal.append(job_id, [factories.submitted()], expected_version=0)
    return job_id


def remaining(db_path: Path) -> set[str]:
    log = EventLog.open(db_path, read_only=True)
    try:
        return {job_id for (job_id,) in log.conn.execute("SELECT id FROM jobs")}
    finally:
        log.close()


class Rig:
    def __init__(self, db_path: Path, journal: JournalClient, reader: Reader) -> None:
        self.db_path = db_path
        self.journal = journal
        self.reader = reader
        self.store = ArtifactStore(db_path.with_suffix(".artifacts"))
        self.now = datetime.now(UTC)

    def janitor(self, *, interval: float = 60.0, batch: int = PRUNE_BATCH) -> Janitor:
        return Janitor(
            self.journal,
            self.reader,
            self.store,
            ttl=TTL,
            interval=interval,
            batch=batch,
            clock=self.clock,
        )

    def clock(self) -> datetime:
        return self.now


@pytest.fixture
async def rig(db_path: Path, nursery: trio.Nursery) -> Rig:
    journal = await nursery.start(Journal(db_path).run)
    reader = await nursery.start(Reader(db_path).run)
    return Rig(db_path, journal, reader)


async def test_finished_jobs_older_than_the_ttl_are_pruned_and_the_log_still_verifies(
    rig: Rig,
) -> None:
    old = [await finished_job(rig.journal) for _ in range(3)]
    cutoff = datetime.now(UTC)
    recent = await finished_job(rig.journal)
    waiting = await queued_job(rig.journal)
    rig.now = cutoff + timedelta(seconds=TTL)  # the first three finished over a TTL ago

    assert await rig.janitor().sweep() == 3
    assert remaining(rig.db_path) == {recent, waiting}
    log = open_log(rig.db_path, read_only=True)
    try:
        assert [log.read_stream(job_id)[-1].type for job_id in old] == ["JobPruned"] * 3
        assert verify(log) == []
    finally:
        log.close()
    assert await rig.janitor().sweep() == 0  # nothing twice


async def test_a_backlog_is_pruned_in_batches(rig: Rig) -> None:
    for _ in range(7):
        await finished_job(rig.journal)
    rig.now += timedelta(seconds=TTL + 1)
    committed = await rig.journal.subscribe()
    assert await rig.janitor(batch=3).sweep() == 7
    sizes = []
    while True:
        try:
            sizes.append(len(committed.receive_nowait()))
        except trio.WouldBlock:
            break
    assert sum(sizes) == 7
    assert max(sizes) <= 3  # a batch at a time: never all in one transaction
    assert remaining(rig.db_path) == set()


async def test_the_janitor_sweeps_every_interval(
    rig: Rig, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    job_id = await finished_job(rig.journal)
    rig.now += timedelta(seconds=TTL + 1)
    committed = await rig.journal.subscribe()
    await nursery.start(rig.janitor(interval=600).run)
    started = trio.current_time()
    (pruned,) = await committed.receive()
    assert (pruned.stream, pruned.type) == (job_id, "JobPruned")
    assert trio.current_time() - started == pytest.approx(600)


async def test_pruning_removes_a_jobs_outputs_and_a_restart_collects_leftovers(
    rig: Rig, nursery: trio.Nursery
) -> None:
    pruned = await finished_job(rig.journal)
    kept = await finished_job(rig.journal)
    for job_id in (pruned, kept):
        rig.store.put(job_id, "content.txt", "text/plain", b"hello")
    leftover = new_ulid()  # outputs of a job pruned just before a crash
    rig.store.put(leftover, "content.txt", "text/plain", b"hello")
    await nursery.start(rig.janitor().run)  # collects the leftover as it starts
    assert rig.store.jobs() == sorted([pruned, kept])

    cutoff = datetime.now(UTC)
    await finished_job(rig.journal)
    rig.now = cutoff + timedelta(seconds=TTL)
    assert await rig.janitor().sweep() == 2
    assert rig.store.jobs() == []


async def stored_file(rig: Rig, data: bytes = b"{}\n") -> str:
    file_id = new_file_id()
    ref = rig.store.put_file(file_id, "in.jsonl", "application/jsonl", data)
    stored = FileStored(
        filename="in.jsonl", purpose="batch", bytes=ref.size, sha256=ref.sha256, requests=1
    )
    await rig.journal.append(file_stream(file_id), [stored], expected_version=0)
    return file_id


async def test_files_past_the_ttl_are_pruned_unless_a_running_batch_reads_them(
    rig: Rig, nursery: trio.Nursery
) -> None:
    old, read, gone = [await stored_file(rig, f"{n}\n".encode()) for n in range(3)]
    created = BatchCreated(
        input_file_id=read,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        window=86400,
        requests=1,
    )
    await rig.journal.append(batch_stream("batch_1"), [created], expected_version=0)
    await nursery.start(rig.janitor().run)  # the files are not leftovers
    assert len(rig.store.jobs()) == 3
    rig.now += timedelta(seconds=TTL + 1)
    async with rig.journal.clone() as journal:
        await journal.append(file_stream(gone), [FileDeleted(reason="deleted")])
    gone_dir = gone.removeprefix("file-")
    rig.store.remove(gone_dir)
    await rig.janitor().sweep()
    assert rig.store.jobs() == [read.removeprefix("file-")]
    log = EventLog.open(rig.db_path, read_only=True)
    try:
        assert verify(log) == []
        deleted = [e.event for e in log.read_stream(file_stream(old))][-1]
    finally:
        log.close()
    assert deleted == FileDeleted(reason="expired")
