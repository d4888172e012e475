"""Continuous replication with Litestream (ADR-0045, docs/backups.md): Foreman's log,
as Foreman writes it, is one Litestream can follow. Under load, the machine "dies"
(Litestream and Foreman killed with ``SIGKILL``, the database deleted); the log
restored from the replica is a prefix of the lost one, its hash chain and projections
verify, it holds every acknowledged job up to its head, what it lacks was acknowledged
within the replication lag of the end, and Foreman starts on it."""

from __future__ import annotations

import itertools
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from foreman import backups
from foreman.events.store import open_log
from tests.processes import POLL_SECONDS, running, start_foreman_process

pytestmark = pytest.mark.slow  # three processes, a kill -9 and a restore

LITESTREAM = Path(sys.executable).with_name("litestream")
CLIENTS = 4
ACKS_BEFORE_THE_END = 400
"""Jobs acknowledged under load before the machine dies."""
SYNC_INTERVAL = "200ms"
LAG_BOUND = 5.0
"""Seconds before the end within which every lost acknowledgement must fall: the
sync interval and Litestream's own pace, with room for a busy 2-core machine."""
PROMPT = "x" * 8000  # the WAL passes SQLite's 1000-page autocheckpoint during the test


def litestream_runs() -> bool:
    try:
        done = subprocess.run([LITESTREAM, "version"], capture_output=True, timeout=30, check=False)
    except OSError:
        return False
    return done.returncode == 0


@contextmanager
def replicating(db: Path, replica: Path, output: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``litestream replicate`` of ``db`` to the directory ``replica``, once its first
    snapshot is there; killed when the block ends."""
    config = output.with_suffix(".yml")
    config.write_text(
        f"dbs:\n  - path: {db}\n    replicas:\n      - type: file\n"
        f"        path: {replica}\n        sync-interval: {SYNC_INTERVAL}\n"
    )
    with output.open("ab") as sink:
        process = subprocess.Popen(
            [LITESTREAM, "replicate", "-config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while not any(replica.rglob("*.ltx")):
            assert process.poll() is None, output.read_text()
            assert time.monotonic() < deadline, f"no snapshot after 20 s:\n{output.read_text()}"
            time.sleep(POLL_SECONDS)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def until_replica_holds_jobs(replica: Path, scratch: Path, jobs: int) -> None:
    """Until Litestream has shipped at least ``jobs`` submissions: a restore of the
    replica as it stands holds them. (New LTX files alone are no proof: a replica's first
    files can hold only the empty database's snapshot, and a restore would then be
    empty. The load may run far ahead of the replica, so waiting for "some events" would
    leave the restored log a sliver of what was acknowledged.)"""
    deadline = time.monotonic() + 60
    while True:
        scratch.unlink(missing_ok=True)
        done = subprocess.run(
            [LITESTREAM, "restore", "-o", str(scratch), replica.as_uri()],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if done.returncode == 0 and scratch.is_file() and len(submissions(scratch)[0]) >= jobs:
            return
        assert time.monotonic() < deadline, f"Litestream shipped fewer than {jobs} jobs in 60 s"
        time.sleep(POLL_SECONDS)


class Load:
    """Clients submitting jobs until stopped; each acknowledged job with its time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.acked: dict[str, float] = {}
        self.enough = threading.Event()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._numbers = itertools.count()
        self.threads = [threading.Thread(target=self._client) for _ in range(CLIENTS)]

    def _client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as http:
            while not self.stop.is_set():
                body = {
                    "kind": "chat",
                    "request": {
                        "model": "llama3",
                        "messages": [{"role": "user", "content": PROMPT}],
                    },
                    "metadata": {"n": next(self._numbers)},
                }
                try:
                    answer = http.post("/jobs", json=body)
                except httpx.TransportError:
                    return  # Foreman is gone
                if answer.status_code == 202:
                    with self._lock:
                        self.acked[answer.json()["job_id"]] = time.time()
                        if len(self.acked) >= ACKS_BEFORE_THE_END:
                            self.enough.set()

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def submissions(db: Path) -> tuple[dict[str, int], dict[int, str]]:
    """Each job's ``JobSubmitted`` seq, and every event's hash by seq."""
    log = open_log(db, read_only=True)
    try:
        submitted = dict(
            log.conn.execute("SELECT stream, seq FROM events WHERE type = 'JobSubmitted'")
        )
        hashes = dict(log.conn.execute("SELECT seq, hash FROM events"))
        return submitted, hashes
    finally:
        log.close()


def head(db: Path) -> tuple[int, str]:
    log = open_log(db, read_only=True)
    try:
        return log.head()
    finally:
        log.close()


@pytest.mark.skipif(not litestream_runs(), reason=f"no Litestream that runs here ({LITESTREAM})")
def test_a_log_restored_from_litestreams_replica_after_the_machine_died(tmp_path: Path) -> None:
    db = tmp_path / "live" / "foreman.db"
    db.parent.mkdir()
    replica = tmp_path / "replica"
    foreman = start_foreman_process(tmp_path / "foreman.out", "sim", db)
    with running(foreman), replicating(db, replica, tmp_path / "litestream.out") as litestream:
        with Load(foreman.url) as load:
            assert load.enough.wait(120), "the load did not get its acknowledgements"
            until_replica_holds_jobs(replica, tmp_path / "probe.db", ACKS_BEFORE_THE_END)
            litestream.send_signal(signal.SIGKILL)  # the machine dies: both at once
            foreman.kill()
            died = time.time()
        litestream.wait()
    acked = load.acked
    submitted, live_hashes = submissions(db)
    assert set(acked) <= set(submitted)  # acknowledged means committed

    for lost in (db, *(db.with_name(db.name + suffix) for suffix in ("-wal", "-shm"))):
        lost.unlink(missing_ok=True)
    shutil.rmtree(db.with_name(f".{db.name}-litestream"), ignore_errors=True)
    restored = subprocess.run(
        [LITESTREAM, "restore", "-o", str(db), replica.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert restored.returncode == 0, restored.stderr

    assert backups.problems(db) == []  # hash chain, versions, projections == replay
    head_seq, head_hash = head(db)
    assert head_seq > 0
    assert live_hashes[head_seq] == head_hash  # a prefix of the lost log
    restored_jobs, _ = submissions(db)
    kept = {job for job in acked if submitted[job] <= head_seq}
    assert kept <= set(restored_jobs)
    lost = set(acked) - kept
    # The replica only grows, so the restore holds at least what the probe saw; of
    # those, only the answers in flight at the kill (one a client) may be unacknowledged.
    assert len(kept) >= ACKS_BEFORE_THE_END - CLIENTS
    assert all(died - acked[job] <= LAG_BOUND for job in lost), sorted(
        died - acked[job] for job in lost
    )

    again = start_foreman_process(tmp_path / "restored.out", "sim", db)
    with running(again), httpx.Client(base_url=again.url, timeout=5) as http:
        job = min(kept, key=acked.__getitem__)
        assert http.get(f"/jobs/{job}").json()["state"] in ("queued", "running", "succeeded")
