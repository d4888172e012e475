"""A commit the storage refuses: the log is left as it was, and the failure is told
apart from a bug (ADR-0041). The faults are real: a full tmpfs, an immutable file,
another connection holding the lock."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from foreman.events.audit import verify
from foreman.events.faults import storage_fault
from foreman.events.jobs import JobsProjection
from foreman.events.log import Append, Durability, EventLog
from foreman.events.store import open_log
from foreman.events.types import JobSubmitted
from foreman.ids import new_ulid
from tests.disks import immutable, small_disk
from tests.factories import started, submitted, succeeded


def _states(log: EventLog) -> dict[str, str]:
    return {job_id: job.state for job_id, job in JobsProjection().load_all(log.conn).items()}


def _big(count: int) -> list[Append]:
    """Appends over SQLite's page cache (2 MB): pages spill to the WAL before COMMIT."""
    text = "x" * 10_000
    request = {"model": "llama3", "messages": [{"role": "user", "content": text}]}
    event = JobSubmitted(kind="chat", model="llama3", request=request, origin="async")
    return [Append(new_ulid(), [event], expected_version=0) for _ in range(count)]


@pytest.mark.parametrize(
    "appends",
    [
        pytest.param(
            lambda job: [Append(job, [succeeded()]), Append(new_ulid(), [submitted()])],
            id="at-commit",
        ),
        pytest.param(lambda _job: _big(300), id="spilling-before-commit"),
    ],
)
def test_a_full_disk_fails_the_commit_and_leaves_the_log_and_its_projections_as_they_were(
    tmp_path: Path, appends: Callable[[str], list[Append]]
) -> None:
    """Whether the disk fills at COMMIT or while a big transaction spills its pages,
    the error is SQLite's own SQLITE_FULL (SQLite rolled back already; a second
    ROLLBACK used to fail and hide it), nothing of the batch is in the file, and the
    log's in-memory view (head, stream versions, projection states) does not believe
    otherwise: the same appends go through once there is room, chained to the head."""
    with small_disk(tmp_path / "disk") as disk:
        path = disk.root / "foreman.db"
        log = open_log(path, durability=Durability.FULL)
        job = new_ulid()
        log.append(job, [submitted(), started()])
        head = log.head()
        batch = appends(job)
        disk.fill()
        with pytest.raises(sqlite3.OperationalError) as failed:
            log.append_many(batch)
        assert failed.value.sqlite_errorname == "SQLITE_FULL"
        assert not log.conn.in_transaction
        assert log.head() == head
        assert _states(log) == {job: "running"}
        reason = storage_fault(failed.value, path)
        assert reason is not None
        assert reason.startswith("foreman.db cannot be written: the disk is full")
        assert "bytes free on its file system" in reason

        disk.free()
        results = log.append_many(batch)
        first = results[0]
        assert isinstance(first, list)
        assert first[0].seq == head[0] + 1
        assert verify(log) == []
        assert _states(log)[job] == ("succeeded" if len(batch) == 2 else "running")
        log.close()


def test_a_log_made_immutable_fails_commits_until_it_is_writable_again(tmp_path: Path) -> None:
    """A file the kernel will not write (``chattr +i``: EPERM even for root) is an I/O
    error to SQLite, which names neither the file nor the cause: the reason does."""
    path = tmp_path / "foreman.db"
    log = open_log(path, durability=Durability.FULL)
    log.append(new_ulid(), [submitted()])
    wal = path.with_name("foreman.db-wal")
    with immutable(path, wal):
        with pytest.raises(sqlite3.OperationalError) as failed:
            log.append(new_ulid(), [submitted()])
        reason = storage_fault(failed.value, path)
    assert reason is not None
    assert reason.startswith("foreman.db cannot be written: the disk failed to write it")
    assert "foreman.db-wal is not writable" in reason
    log.append(new_ulid(), [submitted()])
    assert log.head()[0] == 2
    assert verify(log) == []
    log.close()


def test_another_writer_holding_the_lock_is_the_storage_and_a_bug_is_not(tmp_path: Path) -> None:
    path = tmp_path / "foreman.db"
    open_log(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    waiter = sqlite3.connect(path, isolation_level=None, timeout=0)
    with pytest.raises(sqlite3.OperationalError) as locked:
        waiter.execute("BEGIN IMMEDIATE")
    assert "another process holds its write lock" in (storage_fault(locked.value, path) or "")
    holder.execute("ROLLBACK")

    reader = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as read_only:
        reader.execute("INSERT INTO meta VALUES ('x', 'y')")
    assert "it is read-only" in (storage_fault(read_only.value, path) or "")

    with pytest.raises(sqlite3.IntegrityError) as duplicate:
        waiter.execute("INSERT INTO meta VALUES ('log_format', 2)")
    with pytest.raises(sqlite3.OperationalError) as typo:
        waiter.execute("SELECT * FROM no_such_table")
    waiter.close()
    with pytest.raises(sqlite3.ProgrammingError) as closed:
        waiter.execute("SELECT 1")
    for bug in (duplicate.value, typo.value, closed.value, ValueError("a bug")):
        assert storage_fault(bug, path) is None
