"""``foreman backup`` and ``foreman restore`` (ADR-0045): a copy taken from a live
Foreman under load is sound, serves every output it names, replays to the live log's
projections at its head, and comes back only where no running Foreman would lose its log."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from foreman import backups
from foreman.events.jobs import JobsProjection
from foreman.events.log import Durability
from foreman.events.replay import state_at
from foreman.events.store import open_log
from foreman.events.writer_lock import sole_writer
from tests.factories import submitted
from tests.processes import foreman_command
from tests.running import Foreman, counted, of_type, start_foreman, until

CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "back me up"}]}
JOBS = 60


def chat_job(n: int) -> dict[str, Any]:
    return {"kind": "chat", "request": CHAT, "metadata": {"n": n}}


def artifacts_named(db: Path) -> set[Path]:
    """The blobs the log's succeeded jobs name, relative to its artifacts directory."""
    log = open_log(db, read_only=True)
    try:
        named = set()
        for job_id, data in log.conn.execute(
            "SELECT e.stream, e.data FROM events e JOIN jobs j ON j.result_seq = e.seq"
        ):
            for ref in json.loads(data)["artifacts"]:
                named.add(Path(job_id) / ref["sha256"])
        return named
    finally:
        log.close()


def jobs_as_replayed(db: Path, until_seq: int) -> dict[str, Any]:
    log = open_log(db, read_only=True)
    try:
        return {k: v for k, v in state_at(log, JobsProjection(), until_seq).items() if v}
    finally:
        log.close()


def stored_jobs(db: Path) -> dict[str, Any]:
    log = open_log(db, read_only=True)
    try:
        return JobsProjection().load_all(log.conn)
    finally:
        log.close()


async def submit_many(url: str, count: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        for n in range(count):
            assert (await http.post("/jobs", json=chat_job(n))).status_code == 202


async def test_a_backup_under_load_is_sound_and_restores_to_the_same_jobs(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    db = tmp_path / "live" / "foreman.db"
    db.parent.mkdir()
    dest = tmp_path / "backup"
    async for foreman in start_foreman(nursery, db):
        committed = await foreman.running.journal.subscribe()
        await submit_many(foreman.url, JOBS // 2)
        await until(committed, counted(5, of_type("JobSucceeded")))
        async with trio.open_nursery() as load:
            load.start_soon(submit_many, foreman.url, JOBS // 2)  # writing while it copies
            manifest = await trio.to_thread.run_sync(
                backups.take, db, db.with_suffix(".artifacts"), dest
            )
        with pytest.raises(backups.BackupError, match="running Foreman"):
            backups.restore(dest, db, db.with_suffix(".artifacts"), force=True)
        await restored_foreman_serves(foreman, manifest, dest, tmp_path, nursery)

    copy = dest / backups.DB_NAME
    assert manifest.head_seq > 0
    assert backups.check(dest) == manifest
    assert backups.problems(copy) == []
    assert stored_jobs(copy) == jobs_as_replayed(db, manifest.head_seq)
    assert artifacts_named(copy)  # the copy holds succeeded jobs and their outputs


async def restored_foreman_serves(
    live: Foreman, manifest: backups.Manifest, dest: Path, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Restored elsewhere, the backup is a log a second Foreman serves, every output it
    names included (made from the log, ADR-0048)."""
    db = tmp_path / "restored" / "foreman.db"
    assert backups.restore(dest, db, db.with_suffix(".artifacts")) == manifest
    assert backups.problems(db) == []
    async for restored in start_foreman(nursery, db):
        async with httpx.AsyncClient(base_url=restored.url, timeout=10) as http:
            for job_id, sha256 in (named.parts for named in artifacts_named(db)):
                job = (await http.get(f"/jobs/{job_id}")).json()
                assert job["state"] == "succeeded"
                (artifact,) = [a for a in job["artifacts"] if a["sha256"] == sha256]
                output = await http.get(artifact["url"])
                assert hashlib.sha256(output.content).hexdigest() == sha256


def test_the_copy_is_one_snapshot_while_the_writer_commits_between_its_steps(
    tmp_path: Path,
) -> None:
    db = tmp_path / "source.db"
    log = open_log(db, durability=Durability.OFF)
    for n in range(300):
        log.append(f"01KB{n:022d}", [submitted()], expected_version=0)
    before = log.head()
    steps: list[float] = []

    def commit_between_steps(done: int, total: int) -> None:
        started = time.perf_counter()
        log.append(f"01KC{len(steps):022d}", [submitted()], expected_version=0)
        steps.append(time.perf_counter() - started)

    try:
        manifest = backups.take(
            db, tmp_path / "none", tmp_path / "backup", commit_between_steps, pages_per_step=4
        )
    finally:
        after = log.head()
        log.close()
    assert len(steps) > 3  # the copy took several steps, a commit after each
    assert max(steps) < 1.0  # none of them waited for the copy (busy_timeout is 10 s)
    assert after[0] == before[0] + len(steps)
    assert (manifest.head_seq, manifest.head_hash) == before  # the snapshot, not a mix
    assert backups.problems(tmp_path / "backup" / backups.DB_NAME) == []


def small_backup(tmp_path: Path) -> Path:
    """A backup of a log of one event, taken with no Foreman running."""
    db = tmp_path / "source.db"
    log = open_log(db)
    log.append("01KB0000000000000000000000", [submitted()], expected_version=0)
    log.close()
    backups.take(db, tmp_path / "no-artifacts", tmp_path / "backup")
    return tmp_path / "backup"


def test_restore_refuses_to_overwrite_unless_forced_and_drops_the_old_wal(tmp_path: Path) -> None:
    dest = small_backup(tmp_path)
    target = tmp_path / "target.db"
    target.write_bytes(b"an older log")
    stale_wal = tmp_path / "target.db-wal"
    stale_wal.write_bytes(b"frames of the older log")
    with pytest.raises(backups.BackupError, match="exists"):
        backups.restore(dest, target, tmp_path / "target.artifacts")
    assert target.read_bytes() == b"an older log"
    (tmp_path / "target.artifacts").mkdir()
    (tmp_path / "target.artifacts" / "old").write_text("old")
    backups.restore(dest, target, tmp_path / "target.artifacts", force=True)
    assert not stale_wal.exists()
    assert backups.problems(target) == []
    assert not any((tmp_path / "target.artifacts").iterdir())


def test_restore_refuses_a_log_another_process_writes(tmp_path: Path) -> None:
    dest = small_backup(tmp_path)
    target = tmp_path / "target.db"
    with sole_writer(target), pytest.raises(backups.BackupError, match="another process"):
        backups.restore(dest, target, tmp_path / "target.artifacts", force=True)


def test_an_unfinished_or_damaged_backup_is_refused(tmp_path: Path) -> None:
    dest = small_backup(tmp_path)
    target = tmp_path / "target.db"
    with sqlite3.connect(dest / backups.DB_NAME) as conn:
        conn.execute("CREATE TABLE tampered (x)")
    with pytest.raises(backups.BackupError, match="digest"):
        backups.restore(dest, target, tmp_path / "target.artifacts")
    (dest / backups.MANIFEST_NAME).unlink()
    with pytest.raises(backups.BackupError, match="not a finished backup"):
        backups.restore(dest, target, tmp_path / "target.artifacts")
    assert not target.exists()


def test_a_backup_never_lands_in_a_directory_holding_something(tmp_path: Path) -> None:
    dest = small_backup(tmp_path)
    with pytest.raises(backups.BackupError, match="not an empty directory"):
        backups.take(tmp_path / "source.db", tmp_path / "none", dest)


@pytest.mark.slow  # each command is a process of its own
def test_the_commands_as_an_operator_runs_them(tmp_path: Path) -> None:
    small_backup(tmp_path)
    source = tmp_path / "source.db"
    taken = foreman_command("backup", str(tmp_path / "again"), "--db", str(source))
    assert taken.returncode == 0, taken.stderr
    assert "events 1..1" in taken.stdout and "verified" in taken.stdout
    refused = foreman_command("restore", str(tmp_path / "again"), "--db", str(source))
    assert refused.returncode == 1
    assert "exists" in refused.stderr
    restored = foreman_command(
        "restore", str(tmp_path / "again"), "--db", str(tmp_path / "new.db"), "--json"
    )
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["head_seq"] == 1
    verified = foreman_command("events", "verify", "--db", str(tmp_path / "new.db"))
    assert verified.returncode == 0, verified.stdout
