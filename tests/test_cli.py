"""``foreman events …`` run as the operator runs it: a subprocess on a real log file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pty
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

import pytest

from foreman.events.jobs import JobsProjection
from foreman.events.log import Durability, EventLog
from foreman.events.replay import state_at
from foreman.events.store import open_log
from foreman.events.types import JobPruned, WebhookDelivered, delivery_stream
from foreman.ids import new_ulid
from tests.factories import (
    attempt_failed,
    cancelled,
    failed,
    requeued_retry,
    started,
    submitted,
    succeeded,
)

pytestmark = pytest.mark.slow  # every command runs as a process of its own (python -m foreman.cli)

EXPORT_KEYS = [
    "seq",
    "id",
    "stream",
    "version",
    "type",
    "schema_version",
    "recorded_at",
    "hash",
    "data",
]
READ_TIMEOUT = 10.0


@dataclass(frozen=True)
class History:
    """Four jobs, twelve events: seqs 1-3 ``done``, 4-9 ``flaky``, 10-11 ``dropped``, 12
    ``waiting``."""

    path: Path
    done: str
    flaky: str
    dropped: str
    waiting: str


@pytest.fixture
def history(db_path: Path) -> History:
    done, flaky, dropped, waiting = (new_ulid() for _ in range(4))
    log = open_log(db_path, durability=Durability.OFF)
    try:
        for stream, event in [
            (done, submitted()),
            (done, started()),
            (done, succeeded("the answer")),
            (flaky, submitted(model="mistral", priority=5)),
            (flaky, started()),
            (flaky, attempt_failed()),
            (flaky, requeued_retry()),
            (flaky, started(attempt=2)),
            (flaky, failed(status=500)),
            (dropped, submitted()),
            (dropped, cancelled()),
            (waiting, submitted()),
        ]:
            log.append(stream, [event])
    finally:
        log.close()
    return History(db_path, done, flaky, dropped, waiting)


def environment(foreman_db: Path | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "FOREMAN_DB"}
    if foreman_db is not None:
        env["FOREMAN_DB"] = str(foreman_db)
    return env


def command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "foreman.cli", "events", *map(str, args)]


def cli(
    *args: str | Path, foreman_db: Path | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        timeout=30,
        env=environment(foreman_db),
        cwd=cwd,
        check=False,
    )


def ok(*args: str | Path) -> str:
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def ok_json(*args: str | Path) -> Any:
    return json.loads(ok(*args, "--json"))


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def table_rows(text: str) -> list[list[str]]:
    """The rows of a table whose first column is a number, split on whitespace."""
    rows = [line.split() for line in text.splitlines()]
    return [row for row in rows if row and row[0].isdecimal()]


def append(path: Path, stream: str, *events: Any) -> None:
    log = open_log(path, durability=Durability.OFF)
    try:
        log.append(stream, list(events))
    finally:
        log.close()


def sql(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


def stored(path: Path, query: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- tail ----------------------------------------------------------------------


def test_tail_prints_the_last_events_as_a_table(history: History) -> None:
    out = ok("tail", "--db", history.path, "-n", "3")
    rows = table_rows(out)
    assert [row[0] for row in rows] == ["10", "11", "12"]
    assert [row[4] for row in rows] == ["JobSubmitted", "JobCancelled", "JobSubmitted"]
    assert "cancelled: client_disconnected" in out
    assert "seq" in out.splitlines()[0]


def test_tail_shows_twenty_events_by_default(history: History) -> None:
    for _ in range(10):
        append(history.path, new_ulid(), submitted())
    rows = table_rows(ok("tail", "--db", history.path))
    assert [row[0] for row in rows] == [str(seq) for seq in range(3, 23)]


def test_tail_json_prints_one_event_per_line(history: History) -> None:
    events = jsonl(ok("tail", "--db", history.path, "--lines", "4", "--json"))
    assert [event["seq"] for event in events] == [9, 10, 11, 12]
    assert all(list(event) == EXPORT_KEYS for event in events)
    assert events[0]["data"] == {"error": "backend said no", "status": 500}


class Follower:
    """A running ``tail --follow``, its stdout read line by line on a thread."""

    def __init__(self, *args: str | Path) -> None:
        self.process = subprocess.Popen(
            command("tail", "--follow", *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            self.lines.put(line)

    def next_line(self) -> str:
        return self.lines.get(timeout=READ_TIMEOUT)

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C, then the exit code and stderr."""
        self.process.send_signal(signal.SIGINT)
        _, stderr = self.process.communicate(timeout=READ_TIMEOUT)
        return self.process.returncode, stderr


@pytest.fixture
def follow() -> Iterator[Callable[..., Follower]]:
    followers: list[Follower] = []

    def start(*args: str | Path) -> Follower:
        followers.append(Follower(*args))
        return followers[-1]

    yield start
    for follower in followers:
        if follower.process.poll() is None:
            follower.process.kill()
        follower.process.communicate()


def test_tail_follow_prints_events_as_they_are_committed(
    history: History, follow: Callable[..., Follower]
) -> None:
    follower = follow("--db", history.path, "-n", "1", "--json")
    assert json.loads(follower.next_line())["seq"] == 12

    append(history.path, history.waiting, started())
    new = json.loads(follower.next_line())
    assert (new["seq"], new["stream"], new["type"]) == (13, history.waiting, "JobStarted")

    append(history.path, history.waiting, succeeded())
    assert json.loads(follower.next_line())["seq"] == 14
    assert follower.interrupt() == (0, "")


def test_tail_follow_prints_table_rows(history: History, follow: Callable[..., Follower]) -> None:
    follower = follow("--db", history.path, "-n", "0")
    assert follower.next_line().split()[0] == "seq"
    follower.next_line()  # the rule under the header

    append(history.path, history.waiting, started())
    row = follower.next_line().split()
    assert (row[0], row[4]) == ("13", "JobStarted")
    assert follower.interrupt() == (0, "")


# -- show ----------------------------------------------------------------------


def test_show_prints_the_timeline_and_the_state(history: History) -> None:
    out = ok("show", "--db", history.path, history.flaky)
    assert history.flaky in out
    assert "failed" in out.split()
    assert "mistral" in out
    assert "backend said no (status 500)" in out
    timeline = table_rows(out)
    assert [row[0] for row in timeline] == ["4", "5", "6", "7", "8", "9"]
    for summary in [
        "attempt 1 on gpu-0",
        "attempt 1 failed: connection refused (retryable)",
        "requeued: retry",
        "attempt 2 on gpu-0",
        "failed: backend said no (status 500)",
    ]:
        assert summary in out


def test_show_json_gives_the_job_and_its_events(history: History) -> None:
    shown = ok_json("show", "--db", history.path, history.flaky)
    job = shown["job"]
    assert (job["id"], job["state"], job["attempts"], job["model"]) == (
        history.flaky,
        "failed",
        2,
        "mistral",
    )
    assert job["error"] == {"message": "backend said no", "status": 500}
    assert [event["version"] for event in shown["events"]] == [1, 2, 3, 4, 5, 6]
    assert all(list(event) == EXPORT_KEYS for event in shown["events"])


def test_show_includes_the_jobs_webhook_deliveries_in_order(db_path: Path) -> None:
    job = new_ulid()
    log = open_log(db_path, durability=Durability.OFF)
    try:
        (queued,) = log.append(
            job, [submitted().model_copy(update={"state_webhook_url": "http://h.example/"})]
        )
        log.append(
            delivery_stream(job), [WebhookDelivered(delivery=queued.id, attempt=1, status=204)]
        )
        log.append(job, [started()])
    finally:
        log.close()
    shown = ok_json("show", "--db", db_path, job)
    assert [(e["stream"], e["type"]) for e in shown["events"]] == [
        (job, "JobSubmitted"),
        (f"webhooks/{job}", "WebhookDelivered"),
        (job, "JobStarted"),
    ]


def test_show_points_at_the_result_of_a_succeeded_job(history: History) -> None:
    shown = ok_json("show", "--db", history.path, history.done)
    assert shown["job"]["result_seq"] == 3
    result = next(event for event in shown["events"] if event["seq"] == 3)
    assert result["type"] == "JobSucceeded"
    assert result["data"]["result"]["message"]["content"] == "the answer"
    assert "event 3 (JobSucceeded)" in ok("show", "--db", history.path, history.done)


def test_show_a_pruned_job_gives_its_history(history: History) -> None:
    append(history.path, history.dropped, JobPruned())
    shown = ok_json("show", "--db", history.path, history.dropped)
    assert shown["job"] is None
    assert [event["type"] for event in shown["events"]] == [
        "JobSubmitted",
        "JobCancelled",
        "JobPruned",
    ]


def test_show_unknown_job_fails(history: History) -> None:
    done = cli("show", "--db", history.path, "01NOSUCHJOB0000000000000000")
    assert done.returncode == 1
    assert "no such job: 01NOSUCHJOB0000000000000000" in done.stderr
    assert done.stdout == ""


# -- export --------------------------------------------------------------------


def check_export(text: str, path: Path) -> None:
    events = jsonl(text)
    assert len(events) == event_count(path)
    assert all(list(event) == EXPORT_KEYS for event in events)
    assert all(isinstance(event["data"], dict) for event in events)
    assert [(event["seq"], event["hash"]) for event in events] == stored(
        path, "SELECT seq, hash FROM events ORDER BY seq"
    )
    # data is the stored text verbatim, so the chain can be recomputed from the export.
    previous = "0" * 64
    for line, event in zip(text.splitlines(), events, strict=True):
        raw_data = line[line.index(', "data": ') + len(', "data": ') : -1]
        fields = [event[key] for key in EXPORT_KEYS[:6]] + [event["recorded_at"], raw_data]
        content = "\x1f".join(map(str, [previous, *fields]))
        assert hashlib.sha256(content.encode()).hexdigest() == event["hash"]
        previous = event["hash"]


def event_count(path: Path) -> int:
    return int(stored(path, "SELECT count(*) FROM events")[0][0])


def test_export_writes_jsonl_to_stdout(history: History) -> None:
    check_export(ok("export", "--db", history.path, "--format", "jsonl"), history.path)


def test_export_writes_jsonl_to_a_file(history: History, tmp_path: Path) -> None:
    output = tmp_path / "events.jsonl"
    assert ok("export", "--db", history.path, "--output", output) == ""
    check_export(output.read_text(), history.path)


def test_export_knows_only_jsonl(history: History) -> None:
    assert cli("export", "--db", history.path, "--format", "csv").returncode == 2


# -- verify --------------------------------------------------------------------


def test_verify_a_sound_log(history: History) -> None:
    out = ok("verify", "--db", history.path)
    assert out.strip() == "sound: 12 events, hash chain verified, 4 jobs match replay"
    report = ok_json("verify", "--db", history.path)
    assert report == {"ok": True, "events": 12, "first_bad_seq": None, "problems": []}


UNLOCK = (
    "DROP TRIGGER events_are_append_only_update",
    "DROP TRIGGER events_are_append_only_delete",
)


@pytest.mark.parametrize(
    ("tampering", "first_bad"),
    [
        pytest.param(
            "UPDATE events SET data = replace(data, 'gpu-0', 'gpu-1') WHERE seq = 5",
            5,
            id="altered",
        ),
        pytest.param("DELETE FROM events WHERE seq = 6", 6, id="middle-removed"),
        pytest.param("DELETE FROM events WHERE seq = 12", 12, id="last-removed"),
    ],
)
def test_verify_names_the_first_bad_seq(history: History, tampering: str, first_bad: int) -> None:
    sql(history.path, *UNLOCK, tampering)

    done = cli("verify", "--db", history.path, "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert (report["ok"], report["first_bad_seq"]) == (False, first_bad)
    assert report["problems"][0]["seq"] == first_bad

    done = cli("verify", "--db", history.path)
    assert done.returncode == 1
    assert f"first bad seq: {first_bad}: " in done.stdout


def test_verify_finds_a_tampered_projection(history: History) -> None:
    sql(history.path, f"UPDATE jobs SET state = 'succeeded' WHERE id = '{history.flaky}'")

    done = cli("verify", "--db", history.path, "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert (report["ok"], report["events"], report["first_bad_seq"]) == (False, 12, None)
    [problem] = report["problems"]
    assert problem["seq"] is None
    assert "projection jobs" in problem["message"]
    assert history.flaky in problem["message"]

    done = cli("verify", "--db", history.path)
    assert done.returncode == 1
    assert history.flaky in done.stdout


def test_progress_goes_to_a_terminal_stderr_not_to_stdout(history: History) -> None:
    primary, secondary = pty.openpty()
    try:
        process = subprocess.Popen(
            command("verify", "--db", history.path, "--json"),
            stdout=subprocess.PIPE,
            stderr=secondary,
            text=True,
            env={**environment(), "TERM": "xterm"},
        )
        os.close(secondary)
        terminal = read_until_closed(primary)
        stdout, _ = process.communicate(timeout=READ_TIMEOUT)
    finally:
        os.close(primary)
    assert process.returncode == 0
    assert json.loads(stdout)["ok"] is True
    assert b"verifying" in terminal


def read_until_closed(fd: int) -> bytes:
    """All a pty's other end wrote, until every process closed it (Linux: EIO then)."""
    data = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(fd, 4096):
            data += chunk
    return data


# -- replay --------------------------------------------------------------------


def test_replay_rebuilds_the_projection(history: History) -> None:
    sql(history.path, f"UPDATE jobs SET state = 'succeeded' WHERE id = '{history.flaky}'")

    out = ok("replay", "--db", history.path)
    assert "12 events" in out
    assert "events/s" in out
    assert ok_json("verify", "--db", history.path)["ok"] is True
    log = EventLog.open(history.path, read_only=True)
    try:
        projection = JobsProjection()
        assert projection.load_all(log.conn) == state_at(log, projection)
    finally:
        log.close()


def test_replay_json_reports_the_rate(history: History) -> None:
    report = ok_json("replay", "--db", history.path)
    assert set(report) == {"events", "seconds", "events_per_second", "unreadable_events"}
    assert report["unreadable_events"] == []
    assert report["events"] == 12
    assert report["seconds"] > 0
    assert report["events_per_second"] == pytest.approx(12 / report["seconds"])


def jobs_until(path: Path, until: str) -> tuple[int, dict[str, dict[str, Any]]]:
    report = ok_json("replay", "--db", path, "--until", until)
    return report["until_seq"], {job["id"]: job for job in report["jobs"]}


def test_replay_until_seq_shows_the_jobs_as_they_stood(history: History) -> None:
    seq, jobs = jobs_until(history.path, "1")
    assert seq == 1
    assert list(jobs) == [history.done]
    assert (jobs[history.done]["state"], jobs[history.done]["attempts"]) == ("queued", 0)

    _, jobs = jobs_until(history.path, "2")
    assert (jobs[history.done]["state"], jobs[history.done]["attempts"]) == ("running", 1)

    _, jobs = jobs_until(history.path, "7")
    assert {job: jobs[job]["state"] for job in jobs} == {
        history.done: "succeeded",
        history.flaky: "queued",
    }


def test_replay_until_prints_a_table_and_stops_at_the_head(history: History) -> None:
    out = ok("replay", "--db", history.path, "--until", "999")
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(" 01")}
    assert rows[history.flaky][1:7] == ["chat", "mistral", "failed", "gpu-0", "2", "5"]
    assert "4 jobs as they stood after seq 12" in out


def recorded_at(path: Path, seq: int) -> datetime:
    [(text,)] = stored(path, f"SELECT recorded_at FROM events WHERE seq = {seq}")
    return datetime.fromisoformat(text)


def test_replay_until_timestamp(history: History) -> None:
    first = recorded_at(history.path, 1)
    assert first < recorded_at(history.path, 2)
    in_utc = first.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with_offset = first.astimezone(timezone(timedelta(hours=2))).isoformat()
    for until in (in_utc, with_offset):
        seq, jobs = jobs_until(history.path, until)
        assert seq == 1
        assert jobs[history.done]["state"] == "queued"

    assert jobs_until(history.path, "2000-01-01T00:00:00Z") == (0, {})


def test_replay_until_rejects_what_is_neither_seq_nor_time(history: History) -> None:
    for until in ("yesterday", "-3"):
        done = cli("replay", "--db", history.path, "--until", until)
        assert done.returncode == 2
        assert "--until" in done.stderr
        assert "ISO-8601" in done.stderr


# -- every command -------------------------------------------------------------


def test_read_only_commands_leave_the_file_unchanged(history: History) -> None:
    before = digest(history.path)
    for args in [
        ("tail", "--json"),
        ("show", history.flaky),
        ("export",),
        ("verify",),
        ("replay", "--until", "5"),
    ]:
        ok(*args, "--db", history.path)
        assert digest(history.path) == before, args


@pytest.mark.parametrize(
    "args",
    [("tail",), ("show", "01X"), ("export",), ("verify",), ("replay",), ("replay", "--until", "3")],
)
def test_a_missing_log_is_an_error(tmp_path: Path, args: tuple[str, ...]) -> None:
    missing = tmp_path / "nope.db"
    done = cli(*args, "--db", missing)
    assert done.returncode == 1
    assert f"no such event log: {missing}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not missing.exists()


def test_a_file_that_is_not_a_log_is_an_error(tmp_path: Path) -> None:
    other = tmp_path / "notes.db"
    sql(other, "CREATE TABLE notes (text TEXT)")
    before = digest(other)
    for args in [("verify",), ("replay",)]:
        done = cli(*args, "--db", other)
        assert done.returncode == 1
        assert "not a Foreman event log" in done.stderr
        assert "Traceback" not in done.stderr
    assert digest(other) == before


def test_the_log_defaults_to_foreman_db_then_to_the_working_directory(
    history: History, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    from_env = cli("verify", foreman_db=history.path, cwd=elsewhere)
    assert from_env.returncode == 0, from_env.stderr

    assert history.path.name == "foreman.db"
    from_cwd = cli("verify", cwd=history.path.parent)
    assert from_cwd.returncode == 0, from_cwd.stderr

    done = cli("verify", cwd=elsewhere)
    assert done.returncode == 1
    assert "no such event log: foreman.db" in done.stderr
