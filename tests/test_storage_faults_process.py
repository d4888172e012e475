"""``foreman serve`` as a process whose event log becomes read-only under it (ADR-0041).

``chattr +i`` on the log's files: the kernel refuses every write, even root's (EPERM,
an I/O error to SQLite). The process must not exit: it refuses new work with the
reason, answers reads and ``/healthz``, logs one warning and one info line, and
takes the work caught by the fault and new work once the files are writable again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.disks import immutable
from tests.processes import (
    Process,
    foreman_command,
    running,
    start_foreman_process,
    start_simulator,
)

pytestmark = pytest.mark.slow  # Foreman and the simulator as processes

CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "why is the sky blue?"}]}
JOB = {"kind": "chat", "request": CHAT}
WAIT_SECONDS = 15.0
"""The longest the process may take to notice a fault, or its end (retries: 1 s, 2 s...)."""


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[Process]:
    with running(start_simulator(tmp_path / "simulator.log")) as process:
        yield process


def eventually(check: Callable[[], bool], what: str, foreman: Process) -> None:
    """Until ``check()`` (another process's state: polled)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not check():
        assert foreman.popen.poll() is None, f"Foreman exited:\n{foreman.text()}"
        assert time.monotonic() < deadline, f"not {what} after {WAIT_SECONDS} s:\n{foreman.text()}"
        time.sleep(0.05)


def test_a_log_made_read_only_under_a_running_foreman(tmp_path: Path, simulator: Process) -> None:
    db = tmp_path / "foreman.db"
    with (
        running(start_foreman_process(tmp_path / "foreman.log", simulator.url, db)) as foreman,
        httpx.Client(base_url=foreman.url, timeout=30) as http,
        ThreadPoolExecutor(1) as pool,
    ):

        def state(job_id: str) -> str:
            return str(http.get(f"/jobs/{job_id}").json()["state"])

        first = http.post("/jobs", json=JOB).json()["job_id"]
        eventually(lambda: state(first) == "succeeded", "succeeded", foreman)

        with immutable(db, db.with_name("foreman.db-wal")):
            # It passed the door before the fault: it waits for the log, and is kept.
            caught = pool.submit(lambda: httpx.post(f"{foreman.url}/jobs", json=JOB, timeout=60))
            eventually(lambda: http.get("/healthz").status_code == 503, "faulted", foreman)
            health = http.get("/healthz").json()["log"]
            assert health["reason"].startswith(
                "foreman.db cannot be written: the disk failed to write it (SQLite: disk I/O "
                "error, SQLITE_IOERR_WRITE); foreman.db is not writable; "
                "foreman.db-wal is not writable"
            )
            refused = http.post("/jobs", json=JOB)
            assert refused.status_code == 503
            assert health["reason"] in refused.json()["error"]
            ollama_refused = http.post("/api/chat", json=CHAT)
            assert ollama_refused.status_code == 503
            assert int(ollama_refused.headers["retry-after"]) >= 1
            assert state(first) == "succeeded"
            assert http.get("/api/tags").status_code == 200
            assert not caught.done()

        eventually(lambda: http.get("/healthz").status_code == 200, "writable", foreman)
        accepted = caught.result(timeout=WAIT_SECONDS)
        assert accepted.status_code == 202
        after = http.post("/jobs", json=JOB)
        assert after.status_code == 202
        for job in (accepted.json()["job_id"], after.json()["job_id"]):
            eventually(lambda job=job: state(job) == "succeeded", "succeeded", foreman)
        assert foreman.popen.poll() is None  # it never exited
        output = foreman.text()
        assert output.count("journal: the event log cannot be written") == 1
        assert output.count("journal: the event log can be written again") == 1
        assert foreman.terminate(10) == 0
    verified = foreman_command("events", "verify", "--db", str(db))
    assert verified.returncode == 0, verified.stdout + verified.stderr
