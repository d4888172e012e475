from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from foreman.events.audit import verify
from foreman.events.chain import GENESIS, chain_hash
from foreman.events.jobs import Job, JobError, JobsProjection
from foreman.events.log import Append, ConcurrencyError, Durability, EventLog, LogError
from foreman.events.projection import IllegalTransition, insert_rows
from foreman.events.store import open_log
from foreman.events.types import (
    AnyEvent,
    BatchLine,
    EventDecodeError,
    JobSubmitted,
    UnknownEventType,
    UnsupportedSchemaVersion,
    decode,
    encode,
)
from foreman.ids import new_ulid
from tests.factories import (
    attempt_failed,
    cancelled,
    failed,
    pruned,
    requeued_retry,
    started,
    submitted,
    succeeded,
)


def jobs(log: EventLog) -> dict[str, Job]:
    return JobsProjection().load_all(log.conn)


def test_append_assigns_global_order_stream_versions_and_a_hash_chain(log: EventLog) -> None:
    a, b = new_ulid(), new_ulid()
    first = log.append(a, [submitted()], expected_version=0)
    second = log.append(b, [submitted(), started()], expected_version=0)
    third = log.append(a, [started(), succeeded()], expected_version=1)

    recorded = first + second + third
    assert [e.seq for e in recorded] == [1, 2, 3, 4, 5]
    assert [(e.stream, e.version) for e in recorded] == [(a, 1), (b, 1), (b, 2), (a, 2), (a, 3)]
    assert list(log.read()) == recorded
    assert log.read_stream(a) == [recorded[0], recorded[3], recorded[4]]
    # Recomputed from named columns as docs/design/architecture.md tells operators to.
    previous = GENESIS
    for seq, id_, stream, version, type_, schema_version, data, recorded_at, hash_ in log.rows():
        fields = [previous, seq, id_, stream, version, type_, schema_version, recorded_at, data]
        expected = hashlib.sha256("\x1f".join(map(str, fields)).encode()).hexdigest()
        assert hash_ == expected
        previous = hash_
    assert log.head() == (5, previous)


def test_events_cannot_be_updated_or_deleted(log: EventLog) -> None:
    log.append(new_ulid(), [submitted()])
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        log.conn.execute("UPDATE events SET data = '{}' WHERE seq = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        log.conn.execute("DELETE FROM events WHERE seq = 1")
    assert log.head()[0] == 1


def test_a_stale_writer_is_refused_and_nothing_is_appended(log: EventLog) -> None:
    job = new_ulid()
    log.append(job, [submitted()], expected_version=0)
    head = log.head()
    with pytest.raises(ConcurrencyError, match="is at version 1, but the writer expected 0"):
        log.append(job, [started()], expected_version=0)
    assert log.head() == head


@pytest.mark.parametrize(
    ("history", "refused", "message"),
    [
        ([], started(), "no such job"),
        ([submitted()], submitted(), "already submitted"),
        ([submitted(), started(), succeeded(), pruned()], submitted(), "already submitted"),
        ([submitted()], succeeded(), "must be running"),
        ([submitted()], started(attempt=2), "expected 1"),
        ([submitted(), started()], started(attempt=2), "must be queued"),
        ([submitted(), started()], attempt_failed(attempt=2), "not the running attempt"),
        ([submitted()], requeued_retry(), "must be running"),
        ([submitted(), started(), succeeded()], cancelled(), "must be queued or running"),
        ([submitted(), started(), failed()], started(attempt=2), "must be queued"),
        ([submitted()], pruned(), "cancelled or"),
    ],
)
def test_illegal_transitions_are_refused_before_anything_is_appended(
    log: EventLog, history: list, refused: object, message: str
) -> None:
    job = new_ulid()
    if history:
        log.append(job, history)
    head, before = log.head(), jobs(log)
    with pytest.raises(IllegalTransition, match=message):
        log.append(job, [refused])  # type: ignore[list-item]
    assert log.head() == head
    assert jobs(log) == before


def test_a_refused_append_does_not_hold_back_the_rest_of_its_batch(log: EventLog) -> None:
    a, b, c = new_ulid(), new_ulid(), new_ulid()
    results = log.append_many(
        [
            Append(a, [submitted()]),
            Append(b, [started()]),  # b was never submitted
            Append(c, [submitted(), started()]),
            Append(a, [submitted()], expected_version=0),  # stale: a is at version 1 now
            Append(a, [started()], expected_version=1),
        ]
    )
    assert isinstance(results[1], IllegalTransition)
    assert isinstance(results[3], ConcurrencyError)
    committed = [r for r in results if isinstance(r, list)]
    assert [e.seq for batch in committed for e in batch] == [1, 2, 3, 4]
    assert {job.id: job.state for job in jobs(log).values()} == {a: "running", c: "running"}
    assert verify(log) == []


def test_a_refused_append_leaves_its_stream_as_it_was_for_the_rest_of_the_batch(
    log: EventLog,
) -> None:
    # The batch is first folded in one pass (ADR-0047); a refusal anywhere makes it
    # again append by append, so what follows a refused append sees it refused.
    a, b = new_ulid(), new_ulid()
    log.append(a, [submitted()])
    results = log.append_many(
        [
            Append(a, [started()]),
            Append(b, [started()]),  # refused: b was never submitted
            Append(b, [submitted()], expected_version=0),  # so b is still new here
            Append(a, [succeeded()], expected_version=2),
            Append(b, [started()], expected_version=1),
        ]
    )
    assert isinstance(results[1], IllegalTransition)
    committed = [r for r in results if isinstance(r, list)]
    assert len(committed) == 4
    assert [(e.seq, e.stream, e.version) for batch in committed for e in batch] == [
        (2, a, 2),
        (3, b, 1),
        (4, a, 3),
        (5, b, 2),
    ]
    assert {job.id: job.state for job in jobs(log).values()} == {a: "succeeded", b: "running"}
    assert verify(log) == []
    # The log's cached versions and states are still right for the next commit.
    (refused,) = log.append_many([Append(a, [started()])])
    assert isinstance(refused, IllegalTransition)
    assert log.append(b, [succeeded()], expected_version=2)[0].seq == 6


def test_an_append_needs_a_stream_and_events() -> None:
    with pytest.raises(ValueError, match="needs a stream"):
        Append("", [submitted()])
    with pytest.raises(ValueError, match="has no events"):
        Append("x", [])


def test_the_jobs_projection_follows_the_state_machine(log: EventLog) -> None:
    job = new_ulid()
    log.append(job, [submitted(model="qwen", priority=3)])
    assert jobs(log)[job].state == "queued"
    log.append(job, [started(), attempt_failed(), requeued_retry()])
    retried = jobs(log)[job]
    assert (retried.state, retried.attempts) == ("queued", 1)
    assert retried.error == JobError("connection refused")
    log.append(job, [started(attempt=2)])
    (success,) = log.append(job, [succeeded()])
    done = jobs(log)[job]
    assert (done.state, done.attempts, done.error) == ("succeeded", 2, None)
    assert done.result_seq == success.seq
    assert done.finished_at == success.recorded_at
    assert (done.model, done.priority, done.version) == ("qwen", 3, 6)
    log.append(job, [pruned()])
    assert job not in jobs(log)


def test_failed_keeps_the_backend_status(log: EventLog) -> None:
    job = new_ulid()
    log.append(job, [submitted(), started(), failed(status=404)])
    assert jobs(log)[job].error == JobError("backend said no", 404)


def test_recorded_at_never_decreases_along_seq(log: EventLog) -> None:
    for _ in range(20):
        log.append(new_ulid(), [submitted()])
    times = [row[7] for row in log.rows()]
    assert times == sorted(times)


def test_a_projection_behind_its_checkpoint_catches_up_on_open(db_path: Path) -> None:
    log = open_log(db_path, durability=Durability.OFF)
    job = new_ulid()
    log.append(job, [submitted()])
    log.append(job, [started()])
    expected = jobs(log)
    # As if the last commit had reached the events but not the projection.
    log.conn.execute(
        "UPDATE projections SET seq = 1, head_hash = (SELECT hash FROM events WHERE seq = 1)"
    )
    log.conn.execute("UPDATE jobs SET state = 'queued', attempts = 0")
    log.close()

    reopened = open_log(db_path)
    assert jobs(reopened) == expected
    assert reopened.checkpoint(JobsProjection()) == (JobsProjection.version, 2, reopened.head()[1])


def test_a_projection_of_another_version_is_rebuilt_on_open(db_path: Path) -> None:
    log = open_log(db_path, durability=Durability.OFF)
    log.append(new_ulid(), [submitted()])
    expected = jobs(log)
    log.conn.execute("UPDATE projections SET version = 0")
    log.conn.execute("DELETE FROM jobs")
    log.close()
    assert jobs(open_log(db_path)) == expected


def test_read_only_open_needs_an_existing_log(tmp_path: Path) -> None:
    with pytest.raises(LogError, match="no such event log"):
        EventLog.open(tmp_path / "missing.db", read_only=True)
    assert not (tmp_path / "missing.db").exists()


@pytest.mark.parametrize("read_only", [True, False])
def test_a_file_that_is_not_a_foreman_log_is_refused_and_left_alone(
    tmp_path: Path, read_only: bool
) -> None:
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE notes (text TEXT)").connection.commit()
    before = other.read_bytes()
    with pytest.raises(LogError, match="not a Foreman event log"):
        EventLog.open(other, read_only=read_only)
    assert other.read_bytes() == before
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(LogError, match=r"garbage\.db"):
        EventLog.open(garbage, read_only=read_only)


def test_a_log_whose_tail_was_removed_is_not_written_to(db_path: Path) -> None:
    log = open_log(db_path, durability=Durability.OFF)
    for _ in range(3):
        log.append(new_ulid(), [submitted()])
    log.conn.execute("DROP TRIGGER events_are_append_only_delete")
    log.conn.execute("DELETE FROM events WHERE seq = 3")
    log.close()
    with pytest.raises(LogError, match="checkpointed at event 3"):
        open_log(db_path)
    with pytest.raises(LogError, match="checkpointed at event 3"):
        open_log(db_path)  # still refused: nothing was appended over the evidence


def test_a_log_of_another_format_is_refused(db_path: Path) -> None:
    open_log(db_path).conn.execute("UPDATE meta SET value = '99'")
    with pytest.raises(LogError, match="log format 99"):
        open_log(db_path)


def test_state_webhooks_belong_to_async_jobs_only() -> None:
    with pytest.raises(ValueError, match="ADR-0014"):
        JobSubmitted(
            kind="chat",
            model="m",
            request={},
            origin="sync",
            state_webhook_url="https://example.test/hook",
        )


def test_decoding_refuses_unknown_types_and_newer_schema_versions() -> None:
    with pytest.raises(EventDecodeError, match="JobStarted v1 data does not decode"):
        decode("JobStarted", 1, '{"attempt": "first"}')
    with pytest.raises(EventDecodeError):
        decode("JobStarted", 1, "not json")
    with pytest.raises(UnknownEventType, match="JobTeleported"):
        decode("JobTeleported", 1, "{}")
    with pytest.raises(UnsupportedSchemaVersion, match="newer Foreman"):
        decode("JobStarted", 2, '{"attempt": 1, "backend": "b"}')
    with pytest.raises(UnsupportedSchemaVersion, match="no upcaster from schema version 0"):
        decode("JobStarted", 0, '{"attempt": 1, "backend": "b"}')


def test_the_event_union_is_discriminated_by_type() -> None:
    adapter: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)
    for event in [
        submitted(),
        started(),
        attempt_failed(),
        requeued_retry(),
        succeeded(),
        failed(),
        cancelled(),
        pruned(),
    ]:
        assert adapter.validate_json(event.model_dump_json()) == event
    with pytest.raises(ValidationError, match="JobTeleported"):
        adapter.validate_python({"type": "JobTeleported"})


def test_events_at_reads_the_events_of_given_seqs_in_order(log: EventLog) -> None:
    job_id = new_ulid()
    log.append(job_id, [submitted(), started(), succeeded()])
    assert [(e.seq, e.type) for e in log.events_at([3, 1])] == [
        (1, "JobSubmitted"),
        (3, "JobSucceeded"),
    ]
    assert log.events_at([99]) == []


def test_a_submission_folds_into_the_job_its_fields_name(log: EventLog) -> None:
    # The jobs fold builds a new job by position, not by keyword (ADR-0047): each field
    # must land in its own column.
    job_id = new_ulid()
    event = JobSubmitted(
        kind="generate",
        model="qwen",
        request={"prompt": "hi"},
        priority=-3,
        origin="batch",
        idempotency_key="key-1",
        metadata={"note": "é"},
        batch=BatchLine(batch_id="batch_1", line=7, custom_id="line-7"),
        tenant="acme",
    )
    (recorded,) = log.append(job_id, [event])
    at = recorded.recorded_at
    expected = Job(
        id=job_id,
        kind="generate",
        model="qwen",
        state="queued",
        priority=-3,
        origin="batch",
        attempts=0,
        version=1,
        created_at=at,
        updated_at=at,
        idempotency_key="key-1",
        metadata='{"note": "\\u00e9"}',
        batch_id="batch_1",
        batch_line=7,
        tenant="acme",
    )
    assert jobs(log) == {job_id: expected}
    hooked = JobSubmitted(
        kind="chat", model="m", request={}, origin="async", state_webhook_url="http://h/"
    )
    hooked_id = new_ulid()
    log.append(hooked_id, [hooked])
    assert jobs(log)[hooked_id].state_webhook_url == "http://h/"


@pytest.mark.parametrize("count", [0, 1, 15, 16, 17, 128, 129, 300])
def test_insert_rows_writes_every_row_in_order_the_last_of_a_key_kept(count: int) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    rows = [(n % 100, f"v{n}") for n in range(count)]
    insert_rows(conn, "INSERT OR REPLACE INTO t (k, v)", rows)
    assert conn.execute("SELECT k, v FROM t ORDER BY k").fetchall() == sorted(dict(rows).items())


def test_insert_rows_keeps_within_sqlites_variables_per_statement() -> None:
    conn = sqlite3.connect(":memory:")
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 50)  # 25 rows of 2 at most
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    rows = [(n, f"v{n}") for n in range(300)]
    insert_rows(conn, "INSERT INTO t (k, v)", rows)
    assert conn.execute("SELECT k, v FROM t ORDER BY k").fetchall() == rows


def test_stored_data_is_what_model_dump_json_writes() -> None:
    # encode() calls pydantic's serializer directly (ADR-0047): the same text as
    # model_dump_json, which older logs were written with.
    events = [
        JobSubmitted(
            kind="chat",
            model="qwen ☃",
            request={"messages": [{"content": "naïve \u2028 ✓"}], "n": [1, 2.5, None]},
            origin="async",
            metadata={"note": "é"},
        ),
        started(),
        succeeded(),
        failed(),
    ]
    for event in events:
        assert encode(event) == event.model_dump_json(exclude={"type"})


def test_a_log_written_as_before_adr_0047_opens_verifies_and_takes_appends(
    db_path: Path,
) -> None:
    # ADR-0047 changed how rows are made, not what they hold (LOG_FORMAT 1): rows
    # made the old way (model_dump_json, chain.chain_hash, one append at a time)
    # open, verify and are appended to.
    bare = EventLog.open(db_path, durability=Durability.OFF)
    a, b = new_ulid(), new_ulid()
    head = GENESIS
    history = [(a, submitted()), (b, submitted()), (a, started()), (a, succeeded())]
    versions: dict[str, int] = {}
    with bare.transaction():
        for seq, (stream, event) in enumerate(history, start=1):
            versions[stream] = versions.get(stream, 0) + 1
            row = (
                seq,
                new_ulid(),
                stream,
                versions[stream],
                event.type,
                event.SCHEMA_VERSION,
                event.model_dump_json(exclude={"type"}),
                "2026-11-30T12:00:00.000000Z",
            )
            head = chain_hash(head, *row)
            bare.conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (*row, head))
    bare.close()

    log = open_log(db_path, durability=Durability.OFF)  # catches the projections up
    try:
        assert verify(log) == []
        assert {job.id: job.state for job in jobs(log).values()} == {a: "succeeded", b: "queued"}
        results = log.append_many([Append(b, [started()]), Append(a, [pruned()])])
        assert [e.seq for r in results if isinstance(r, list) for e in r] == [5, 6]
        assert verify(log) == []
        assert log.rows(after=4).__next__()[8] == chain_hash(
            head, *log.rows(after=4).__next__()[:8]
        )
    finally:
        log.close()


def test_a_jobs_row_keeps_no_value_a_later_state_dropped(log: EventLog) -> None:
    # projection.upsert names only a row's columns that are not None (ADR-0047): the
    # others must still end up NULL when the row replaces one that had them.
    job = new_ulid()
    log.append(job, [submitted(), started(), attempt_failed(), requeued_retry()])
    assert jobs(log)[job].error is not None
    log.append(job, [started(attempt=2), succeeded()])
    (error,) = log.conn.execute("SELECT error FROM jobs WHERE id = ?", (job,)).fetchone()
    assert error is None
    assert jobs(log)[job].error is None
    assert verify(log) == []
