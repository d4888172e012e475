from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing

from foreman.actors.journal import Journal, JournalClient, JournalFailed, StorageFault
from foreman.events.audit import verify
from foreman.events.jobs import JobsProjection
from foreman.events.log import ConcurrencyError, Durability, EventLog
from foreman.events.projection import IllegalTransition
from foreman.events.store import open_log
from foreman.events.types import RecordedEvent
from foreman.ids import new_ulid
from tests.disks import small_disk
from tests.factories import started, submitted, succeeded


async def test_concurrent_writers_are_committed_together(
    db_path: Path, nursery: trio.Nursery
) -> None:
    client: JournalClient = await nursery.start(Journal(db_path, durability=Durability.FULL).run)
    committed: list[RecordedEvent] = []

    async def writer() -> None:
        job = new_ulid()
        async with client.clone() as own:
            committed.extend(await own.append(job, [submitted()], expected_version=0))
            committed.extend(await own.append(job, [started()], expected_version=1))
            committed.extend(await own.append(job, [succeeded()], expected_version=2))

    async with trio.open_nursery() as writers:
        for _ in range(50):
            writers.start_soon(writer)
    await client.aclose()

    assert sorted(e.seq for e in committed) == list(range(1, 151))
    # Every commit stamps its events with one recorded_at: fewer stamps than
    # appends means appends from different writers shared a transaction.
    assert len({e.recorded_at for e in committed}) < 150 / 2
    log = open_log(db_path, read_only=True)
    assert verify(log) == []
    assert {job.state for job in JobsProjection().load_all(log.conn).values()} == {"succeeded"}


async def test_a_refused_append_raises_in_its_writer_only(
    db_path: Path, nursery: trio.Nursery
) -> None:
    client: JournalClient = await nursery.start(Journal(db_path).run)
    job = new_ulid()
    await client.append(job, [submitted()], expected_version=0)
    with pytest.raises(IllegalTransition, match="must be running"):
        await client.append(job, [succeeded()])
    with pytest.raises(ConcurrencyError):
        await client.append(job, [started()], expected_version=0)
    (event,) = await client.append(job, [started()], expected_version=1)
    assert (event.seq, event.version) == (2, 2)


async def test_the_journal_stops_when_its_clients_are_closed(db_path: Path) -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            client: JournalClient = await nursery.start(Journal(db_path).run)
            await client.append(new_ulid(), [submitted()])
            await client.aclose()
    assert EventLog.open(db_path, read_only=True).head()[0] == 1


async def test_a_writer_cancelled_while_waiting_does_not_stop_the_journal(
    db_path: Path, nursery: trio.Nursery
) -> None:
    client: JournalClient = await nursery.start(Journal(db_path).run)
    with trio.CancelScope() as scope:
        scope.cancel()  # cancelled before the reply: the journal finds the reply closed
        await client.append(new_ulid(), [submitted()])
    (event,) = await client.append(new_ulid(), [submitted()])
    assert event.seq in (1, 2)


async def test_writers_queued_when_the_journal_stops_are_told(db_path: Path) -> None:
    outcomes: list[BaseException] = []

    async def doomed_writer(client: JournalClient) -> None:
        try:
            await client.append(new_ulid(), [submitted()])
        except JournalFailed as error:
            outcomes.append(error)

    async with trio.open_nursery() as nursery:
        journal_scope = trio.CancelScope()

        async def journal(task_status: trio.TaskStatus[JournalClient]) -> None:
            with journal_scope:
                await Journal(db_path).run(task_status=task_status)

        client: JournalClient = await nursery.start(journal)
        journal_scope.cancel()
        async with trio.open_nursery() as writers:
            for _ in range(3):
                writers.start_soon(doomed_writer, client)
    assert len(outcomes) == 3
    assert all("stopped" in str(error) for error in outcomes)


async def test_subscribers_get_every_commit_in_order(db_path: Path, nursery: trio.Nursery) -> None:
    client: JournalClient = await nursery.start(Journal(db_path).run)
    await client.append(new_ulid(), [submitted()])  # before the subscription: not sent
    committed = await client.subscribe()
    job = new_ulid()
    await client.append(job, [submitted()])
    await client.append(job, [started()])
    with pytest.raises(IllegalTransition):
        await client.append(job, [started()])  # refused: never published
    await client.append(job, [succeeded()])
    seen = []
    with trio.fail_after(5):
        while len(seen) < 3:
            seen += await committed.receive()
    assert [(e.seq, e.type) for e in seen] == [
        (2, "JobSubmitted"),
        (3, "JobStarted"),
        (4, "JobSucceeded"),
    ]
    await committed.aclose()  # unsubscribed: the journal goes on
    await client.append(new_ulid(), [submitted()])


async def test_lazy_appends_wait_for_company_and_an_eager_one_takes_them_along(
    db_path: Path, nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    """A batch line's events are appended lazily (ADR-0038): they neither wake the
    journal nor commit alone before its linger, unless an append that is not lazy
    arrives, which commits them with it, in the order they were handed over."""
    client: JournalClient = await nursery.start(Journal(db_path, linger=10).run)
    lines = [new_ulid() for _ in range(3)]
    replies = [await client.enqueue(job, [submitted()], lazy=True) for job in lines[:2]]
    await trio.testing.wait_all_tasks_blocked()
    assert _committed(db_path) == []  # waiting for company: the clock has not moved

    job = new_ulid()
    (eager,) = await client.append(job, [submitted()])
    together = [*(await replies[0].wait()), *(await replies[1].wait()), eager]
    assert [e.stream for e in together] == [*lines[:2], job]
    assert len({e.recorded_at for e in together}) == 1  # one transaction

    late = await client.enqueue(lines[2], [submitted()], lazy=True)
    await trio.testing.wait_all_tasks_blocked()
    assert len(_committed(db_path)) == 3
    mock_clock.jump(10)  # the linger is over: it commits alone
    (alone,) = await late.wait()
    assert alone.stream == lines[2]


async def test_a_lazy_append_waits_no_longer_than_it_allows(
    db_path: Path, nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    """An answered caller's job end waits a few milliseconds for company (ADR-0050),
    not the journal's whole linger: a commit waits as long as its most pressed lazy
    append allows."""
    client: JournalClient = await nursery.start(Journal(db_path, linger=10).run)
    began = trio.current_time()
    line = await client.enqueue(new_ulid(), [submitted()], lazy=True)
    end = await client.enqueue(new_ulid(), [submitted()], lazy=True, within=0.005)
    await trio.testing.wait_all_tasks_blocked()
    mock_clock.jump(0.004)
    await trio.testing.wait_all_tasks_blocked()
    assert _committed(db_path) == []  # within its wait: still waiting for company
    mock_clock.autojump_threshold = 0  # the clock moves on whenever all tasks wait
    together = [*(await line.wait()), *(await end.wait())]
    assert trio.current_time() - began < 1  # 5 ms, not the linger's 10 s
    assert len({e.recorded_at for e in together}) == 1  # both, in one commit


async def test_a_lazy_append_that_may_wait_less_ends_a_longer_linger(
    db_path: Path, nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    """A job's end that may wait 5 ms (ADR-0050) arriving while the journal lingers for
    a batch's line does not wait out that linger: it has company, and both commit."""
    client: JournalClient = await nursery.start(Journal(db_path, linger=10).run)
    began = trio.current_time()
    line = await client.enqueue(new_ulid(), [submitted()], lazy=True)
    await trio.testing.wait_all_tasks_blocked()  # the journal lingers for company
    end = await client.enqueue(new_ulid(), [submitted()], lazy=True, within=0.005)
    mock_clock.autojump_threshold = 0  # the clock moves on whenever all tasks wait
    together = [*(await line.wait()), *(await end.wait())]
    assert trio.current_time() - began < 1  # not the line's 10 s
    assert len({e.recorded_at for e in together}) == 1


async def test_appends_the_storage_refuses_wait_and_go_through_in_order_once_it_takes_them(
    tmp_path: Path,
    nursery: trio.Nursery,
    mock_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A full disk does not stop the journal (ADR-0041): its status says why, it tries
    the same appends again 1, 2, 4, 8, then every 10 s (on Trio's clock), its writers
    wait, appends handed over meanwhile wait behind them, and once there is room all
    are committed in the order they were handed over. One warning, one info line."""
    with small_disk(tmp_path / "disk") as disk:
        path = disk.root / "foreman.db"
        client: JournalClient = await nursery.start(Journal(path).run)
        status = client.status
        job = new_ulid()
        await client.append(job, [submitted()])
        disk.fill()
        with caplog.at_level(logging.INFO, logger="foreman.actors.journal"):
            refused = [
                await client.enqueue(job, [started()]),
                await client.enqueue(new_ulid(), [submitted()]),
            ]
            await status.changed()
            fault = status.fault
            assert fault is not None
            assert fault.reason.startswith("foreman.db cannot be written: the disk is full")
            later = await client.enqueue(new_ulid(), [submitted()])  # behind the refused
            waits = []
            for _ in range(6):
                waits.append(fault.retry_at - trio.current_time())
                mock_clock.jump(waits[-1])
                await status.changed()
                retried = status.fault
                assert isinstance(retried, StorageFault)
                assert (retried.attempts, retried.since) == (fault.attempts + 1, fault.since)
                fault = retried
            assert waits == pytest.approx([1, 2, 4, 8, 10, 10])
            assert _committed(path) == [job]

            disk.free()
            mock_clock.jump(fault.retry_at - trio.current_time())
            await status.changed()
            assert status.fault is None
            events = [event for reply in [*refused, later] for event in await reply.wait()]
        assert [event.seq for event in events] == [2, 3, 4]
        assert [event.type for event in events] == ["JobStarted", "JobSubmitted", "JobSubmitted"]
        journal_lines = [(r.levelname, r.getMessage()) for r in caplog.records]
        assert [level for level, _ in journal_lines] == ["WARNING", "INFO"]
        assert "Foreman takes no new work" in journal_lines[0][1]
        assert "after 7 failed attempts" in journal_lines[1][1]
        await client.aclose()


async def test_stopping_while_the_storage_refuses_tells_the_waiting_writers(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    with small_disk(tmp_path / "disk") as disk:
        async with trio.open_nursery() as nursery:
            client: JournalClient = await nursery.start(Journal(disk.root / "foreman.db").run)
            disk.fill()
            waiting = await client.enqueue(new_ulid(), [submitted()])
            await client.status.changed()
            nursery.cancel_scope.cancel()
        with pytest.raises(JournalFailed, match="not committed"):
            await waiting.wait()


async def test_a_failure_that_is_not_the_storage_stops_the_journal(db_path: Path) -> None:
    """Another process dropped a projection's table: no retry mends that."""
    client: JournalClient
    dropped = pytest.RaisesExc(sqlite3.OperationalError, match="no such table")
    with pytest.RaisesGroup(dropped):
        async with trio.open_nursery() as nursery:
            client = await nursery.start(Journal(db_path).run)
            with sqlite3.connect(db_path) as other:
                other.execute("DROP TABLE jobs")
            with pytest.raises(JournalFailed, match="no such table"):
                await client.append(new_ulid(), [submitted()])
    assert client.status.fault is None


def _committed(db_path: Path) -> list[str]:
    log = EventLog.open(db_path, read_only=True)
    try:
        return [event.stream for event in log.read()]
    finally:
        log.close()
