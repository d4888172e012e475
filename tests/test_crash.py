"""kill -9 a process appending to the log, again and again: nothing acknowledged is lost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foreman.events.audit import verify
from foreman.events.jobs import JobsProjection
from foreman.events.replay import state_at
from foreman.events.store import open_log

pytestmark = pytest.mark.slow  # a writer killed with kill -9 at random moments

KILLS = 24
ROOT = Path(__file__).resolve().parent.parent


def run_and_kill(db: Path, seed: int, rng: random.Random) -> list[tuple[int, str]]:
    """Start the child, kill it at a random moment, return what it acknowledged."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.crash_child", str(db), str(seed)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None
    if rng.random() < 0.75:
        # Most kills land mid-append: wait for the first acknowledgement, then a bit.
        first = child.stdout.readline()
        assert first.startswith(b"ACK"), child.stderr.read() if child.stderr else first
        time.sleep(rng.uniform(0, 0.2))
        lines = [first]
    else:
        # The rest land anywhere, opening and catching up included.
        time.sleep(rng.uniform(0, 0.8))
        lines = []
    os.kill(child.pid, signal.SIGKILL)
    out, err = child.communicate()
    assert child.returncode == -signal.SIGKILL, err.decode()
    acknowledged = []
    for line in lines + out.splitlines(keepends=True):
        if line.endswith(b"\n"):
            fields = line.split()[1:]
            acknowledged += [
                (int(seq), id_.decode()) for seq, id_ in zip(fields[::2], fields[1::2], strict=True)
            ]
    return acknowledged


def test_kill_9_at_random_moments_loses_no_acknowledged_append(tmp_path: Path) -> None:
    rng = random.Random(20261128)
    db = tmp_path / "crash.db"
    acknowledged: list[tuple[int, str]] = []
    for attempt in range(KILLS):
        acknowledged += run_and_kill(db, seed=attempt, rng=rng)

        log = open_log(db)
        try:
            assert verify(log) == [], f"after kill {attempt + 1}"
            projection = JobsProjection()
            assert state_at(log, projection) == projection.load_all(log.conn)
            stored = dict(log.conn.execute("SELECT seq, id FROM events"))
            missing = [(seq, id_) for seq, id_ in acknowledged if stored.get(seq) != id_]
            assert missing == [], f"after kill {attempt + 1}: acknowledged but lost"
        finally:
            log.close()
    assert len(acknowledged) > KILLS
